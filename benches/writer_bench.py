"""Writer-only benchmark: what one group commit costs PostgreSQL, by rows per commit.

`python -m benches.writer_bench` (or `just bench-writer`) starts an embedded PostgreSQL in a
temporary directory, then commits batches of fresh ~1.5 KB events through the writer's own
database call (`store.group_commit.write_group`: COPY into staging, the one statement, commit)
at 1, 10, 100, 1,000 and 10,000 rows per commit, and prints per size: latency per commit
(median, p95), PostgreSQL CPU per commit (the writer's backend alone, and every PostgreSQL
process, which adds the WAL writer and the checkpointer), and both per row; then what the
rollup job's fold of those events costs PostgreSQL per event (off the ack path).

CPU is read from /proc/<pid>/schedstat (nanoseconds on CPU, exact, unlike the 10 ms ticks of
/proc/<pid>/stat), so it is steady even on a busy machine; latencies are not. No HTTP, no
request Python: this is the floor the service's commit path stands on. Figures go to stdout
and, with --json, to a file.

`--citus-workers N` runs the same on a local Citus cluster (a coordinator and N workers,
Citus built from CITUS_SRC; the tables distributed in `--shards` shards): CPU is then every
node's. `--customers K` spreads each commit's requests over K customers (a commit of many
customers touches many shards on Citus; one customer's commit touches one).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

if not __package__:  # run as a script: make `benches` importable
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import anyio

from analytics.normalize import Limits, normalize_batch
from analytics.settings import DEFAULT_DIMENSIONS, Settings
from analytics.store import citus_cluster, group_commit
from analytics.store.bootstrap import customer_with_keys, prepare
from analytics.store.citus import distribute
from analytics.store.embedded import start_embedded, stop_embedded
from analytics.store.migrations import migrate
from analytics.store.pool import connect
from analytics.store.rollups import Folder
from benches.conftest import make_event

SIZES = (1, 10, 100, 1_000, 10_000)


@dataclass
class Figures:
    rows_per_commit: int
    requests_per_commit: int
    commits: int
    latency_ms_p50: float
    latency_ms_p95: float
    backend_cpu_ms_per_commit: float
    postgres_cpu_ms_per_commit: float
    backend_cpu_us_per_row: float
    postgres_cpu_us_per_row: float
    #: The rollup job's fold of this size's committed events: all PostgreSQL CPU per event.
    fold_cpu_us_per_row: float


def _cpu_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def _postgres_pids(postmaster: int) -> list[int]:
    pids = [postmaster]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == postmaster:
                        pids.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return pids


def _tree_cpu_ns(postmaster: int) -> int:
    total = 0
    for pid in _postgres_pids(postmaster):
        try:
            total += _cpu_ns(pid)
        except OSError:
            continue  # a process that just ended
    return total


def _nodes_cpu_ns(postmasters: list[int]) -> int:
    return sum(_tree_cpu_ns(p) for p in postmasters)


def _payloads(
    customer_ids: list[int], rows: int, requests: int, seq: int
) -> tuple[list[bytes], list[int]]:
    """`requests` request payloads holding `rows` fresh events in all, and their offsets;
    request i is from customer i (round robin over `customer_ids`)."""
    rng = random.Random(seq)
    now_ms = int(time.time() * 1000)
    payloads, offsets, done = [], [], 0
    per_request = -(-rows // requests)
    while done < rows:
        n = min(per_request, rows - done)
        events = []
        for i in range(n):
            event = make_event(seq * 100_000 + done + i, rng)
            event["event_id"] = f"bench-{seq}-{done + i}"
            event["ts"] = now_ms - rng.randrange(60_000)
            events.append(event)
        body = json.dumps({"events": events}).encode()
        batch = normalize_batch(
            body,
            time.time_ns() // 1000,
            customer_id=str(customer_ids[len(payloads) % len(customer_ids)]),
            limits=Limits(max_events=10_000, max_body_bytes=64 << 20),
        )
        assert batch.accepted == n, batch.rejected[:3]
        offsets.append(done)
        payloads.append(batch.copy_data)
        done += n
    return payloads, offsets


async def _fold_all(folder: Folder, conn: object) -> int:
    """Fold everything committed (in the job's bounded folds); how many events."""
    total = 0
    while True:
        folded = await folder.fold(conn, 600.0)
        total += folded.events
        if not folded.more:
            return total


async def measure(
    dsn: str,
    postmasters: list[int],
    sizes: tuple[int, ...],
    budget_s: float,
    customers: int = 1,
    shards: int = 16,
) -> list[Figures]:
    settings = Settings(database_url=dsn)
    conn = await connect(dsn, settings)
    out: list[Figures] = []
    try:
        await migrate(conn)
        await distribute(conn, shards)
        await prepare(conn, datetime.now(UTC))
        ids = [
            (await customer_with_keys(conn, f"bench-{i}", datetime.now(UTC))).customer_id
            for i in range(customers)
        ]
        await group_commit.prepare_connection(conn)
        statements = group_commit.CommitStatements.build()
        folder = Folder(DEFAULT_DIMENSIONS)
        backend = conn.get_server_pid()
        window = timedelta(seconds=60)
        seq = 0
        for rows in sizes:
            requests = min(rows, 10)
            commits = max(10, min(300, 30_000 // rows))
            batches = []
            for _ in range(commits + 3):
                seq += 1
                batches.append(_payloads(ids, rows, requests, seq))
            for payloads, offsets in batches[:3]:  # warm up: plans, caches
                await group_commit.write_group(
                    conn, payloads, offsets, rows, datetime.now(UTC), window, statements
                )
            await _fold_all(folder, conn)  # what came before is not this size's fold
            latencies = []
            cpu0, tree0 = _cpu_ns(backend), _nodes_cpu_ns(postmasters)
            started = time.perf_counter()
            for payloads, offsets in batches[3:]:
                t0 = time.perf_counter()
                await group_commit.write_group(
                    conn, payloads, offsets, rows, datetime.now(UTC), window, statements
                )
                latencies.append(time.perf_counter() - t0)
                if time.perf_counter() - started > budget_s:
                    break
            n = len(latencies)
            cpu = (_cpu_ns(backend) - cpu0) / n / 1e6
            tree = (_nodes_cpu_ns(postmasters) - tree0) / n / 1e6
            fold0 = _nodes_cpu_ns(postmasters)
            folded = await _fold_all(folder, conn)
            fold_us = (_nodes_cpu_ns(postmasters) - fold0) / 1e3 / max(1, folded)
            out.append(
                Figures(
                    rows_per_commit=rows,
                    requests_per_commit=requests,
                    commits=n,
                    latency_ms_p50=round(statistics.median(latencies) * 1e3, 3),
                    latency_ms_p95=round(sorted(latencies)[int(0.95 * (n - 1))] * 1e3, 3),
                    backend_cpu_ms_per_commit=round(cpu, 3),
                    postgres_cpu_ms_per_commit=round(tree, 3),
                    backend_cpu_us_per_row=round(cpu * 1e3 / rows, 2),
                    postgres_cpu_us_per_row=round(tree * 1e3 / rows, 2),
                    fold_cpu_us_per_row=round(fold_us, 2),
                )
            )
            print(_row(out[-1]), flush=True)
    finally:
        await conn.close()
    return out


HEADER = (
    "| rows/commit | commits | latency p50 ms | p95 ms | backend CPU ms/commit "
    "| all PG CPU ms/commit | backend µs/row | all PG µs/row | fold: all PG µs/row |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def _row(f: Figures) -> str:
    return (
        f"| {f.rows_per_commit:,} | {f.commits} | {f.latency_ms_p50} | {f.latency_ms_p95} "
        f"| {f.backend_cpu_ms_per_commit} | {f.postgres_cpu_ms_per_commit} "
        f"| {f.backend_cpu_us_per_row} | {f.postgres_cpu_us_per_row} "
        f"| {f.fold_cpu_us_per_row} |"
    )


def _citus(root: Path, workers: int) -> tuple[str, list[Path]]:
    """A local Citus cluster under `root`: the coordinator's DSN, every node's data dir."""
    citus_cluster.ensure_citus_built(Path(os.environ.get("CITUS_SRC") or Settings().citus_src))
    coordinator, ports = citus_cluster.start_cluster(root, workers)
    citus_cluster.join_nodes(coordinator, ports)
    names = citus_cluster.node_names(workers)
    return citus_cluster.dsn(coordinator), [root / "citus" / n / "pg" for n in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benches.writer_bench", description=__doc__)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="rows per commit")
    parser.add_argument("--budget-s", type=float, default=10.0, help="time per size, at most")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--customers", type=int, default=1, help="customers per commit")
    parser.add_argument("--citus-workers", type=int, default=0, help="on a Citus cluster")
    parser.add_argument("--shards", type=int, default=16, help="shards per table (Citus)")
    opts = parser.parse_args(argv)
    sizes = tuple(int(s) for s in opts.sizes.split(","))
    root = Path(tempfile.mkdtemp(prefix="writer-bench-"))
    try:
        if opts.citus_workers:
            dsn, pgdatas = _citus(root, opts.citus_workers)
        else:
            dsn, pgdatas = start_embedded(root), [root / "pg"]
        postmasters = [int((d / "postmaster.pid").read_text().split()[0]) for d in pgdatas]
        print(HEADER, flush=True)
        figures = anyio.run(
            measure, dsn, postmasters, sizes, opts.budget_s, opts.customers, opts.shards
        )
    finally:
        if opts.citus_workers:
            citus_cluster.stop_cluster(root / "citus")
        else:
            stop_embedded(root)
        shutil.rmtree(root, ignore_errors=True)
    if opts.json:
        opts.json.write_text(json.dumps([asdict(f) for f in figures], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
