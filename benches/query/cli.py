"""`python -m benches.query`: load the dataset through `analytics serve`, then time the queries.

One run: start the stack (the load harness's `Stack`: embedded PostgreSQL under the data
dir, the billing stub, `analytics serve` pinned to core 0; this process pins itself to the
last core, like k6), load the dataset unless `--reuse` finds it already loaded there, with
`--compare-current N` also load N current events (to a second customer, so the queries do
not see them) for the backfill/current ratio, after each load wait until the rollup job has
folded every event (the queries are timed on caught-up rollups), count what was stored,
time every query shape cold and warm, check the answers against the oracle, and write
`<out>/query-<UTC timestamp>/results.md` and `results.json`. Exit 1 when an answer is wrong
or an event is missing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import anyio
import asyncpg
import orjson

from analytics.store.bootstrap import customer_with_keys
from analytics.store.deferred import marked_hours
from analytics.store.rollups import pending_events
from benches.harness.cpu import cpu_plan
from benches.harness.stack import ROOT, Stack
from benches.query import bench, oracle, report
from benches.query.bulk import bulk_load
from benches.query.dataset import DAY_MS, Dataset
from benches.query.load import LoadResult, load

MANIFEST = "querybench.json"
#: Answers are checked against the oracle by default up to this many events (~10 s/M).
AUTO_CHECK_MAX = 1_000_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benches.query", description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=10_000_000, help="events to load (10,000,000)")
    p.add_argument("--days", type=float, default=30, help="the events' spread back from now (30)")
    p.add_argument("--seed", type=int, default=1, help="the dataset's seed (1)")
    p.add_argument("--anchor-ms", type=int, help="the latest timestamp (epoch ms; default now)")
    p.add_argument("--connections", type=int, default=4, help="concurrent batch posts (4)")
    p.add_argument("--batch-size", type=int, default=500, help="events per batch (500)")
    p.add_argument("--data-dir", type=Path, help="keep the database here (default: a temp dir)")
    p.add_argument(
        "--reuse", action="store_true", help="skip the load if --data-dir holds this dataset"
    )
    p.add_argument(
        "--compare-current",
        type=int,
        default=0,
        metavar="N",
        help="also load N current events (the last minute) for the backfill/current ratio",
    )
    p.add_argument(
        "--current-first",
        action="store_true",
        help="load the current events first, on the fresh database (else after the"
        " backfill, while the server may still vacuum and checkpoint what it wrote)",
    )
    p.add_argument(
        "--bulk",
        action="store_true",
        help="load a time-ordered dataset through the write path's bulk form in-process "
        "(benches/query/bulk.py: minutes for 10M events) instead of over HTTP",
    )
    p.add_argument("--repeats", type=int, default=10, help="requests per shape and mode (10)")
    p.add_argument("--no-queries", action="store_true", help="load only")
    p.add_argument(
        "--citus-workers",
        type=int,
        default=0,
        metavar="N",
        help="on a local Citus cluster of a coordinator and N workers (CITUS_SRC) instead of"
        " the single node; the manifest records it, so --reuse needs the same N",
    )
    check = p.add_mutually_exclusive_group()
    check.add_argument("--check", action="store_true", default=None, help="check every answer")
    check.add_argument("--no-check", dest="check", action="store_false")
    p.add_argument("--out", type=Path, default=ROOT / "benches" / "results")
    args = p.parse_args(argv)
    if args.reuse and args.data_dir is None:
        p.error("--reuse needs --data-dir")
    if args.check is None:
        args.check = args.events <= AUTO_CHECK_MAX
    # What the harness's Stack reads.
    args.sign, args.stub_latency_ms, args.workers, args.worker_class = False, 20, 1, "uvloop"
    return args


async def _customer(dsn: str, name: str):
    conn = await asyncpg.connect(dsn)
    try:
        return await customer_with_keys(conn, name, datetime.now(UTC))
    finally:
        await conn.close()


async def _stored(dsn: str, customer_id: int) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM events WHERE customer_id = $1", customer_id
        )
    finally:
        await conn.close()


async def _wait_folded(dsn: str, timeout_s: float = 3600) -> float:
    """Seconds until the rollup job has folded every committed event, and rebuilt every
    hour its folds of a backlog deferred (store/deferred.py)."""
    started = time.monotonic()
    conn = await asyncpg.connect(dsn)
    try:
        while await pending_events(conn) or await marked_hours(conn):
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"the rollups did not catch up in {timeout_s} s")
            await anyio.sleep(0.25)
    finally:
        await conn.close()
    return time.monotonic() - started


async def _settle(dsn: str) -> float:
    """VACUUM (ANALYZE) the database; the seconds it took."""
    started = time.monotonic()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("VACUUM (ANALYZE)", timeout=3600)
    finally:
        await conn.close()
    return time.monotonic() - started


def _load_current(args: argparse.Namespace, stack: Stack) -> LoadResult:
    """`--compare-current`'s events (the last minute, another customer), loaded and folded."""
    now_ms = time.time_ns() // 10**6
    keys = anyio.run(_customer, stack.dsn, "loadtest-current")
    current = Dataset(
        args.compare_current, args.seed, now_ms, 60_000, args.batch_size, f"c{now_ms}"
    )
    print(f"loading {args.compare_current:,} current events", flush=True)
    result = load(
        stack.port, keys.write.key, current, label="current", connections=args.connections
    )
    result.folded_s = result.seconds + anyio.run(_wait_folded, stack.dsn)
    return result


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True)
        return out.stdout.decode().strip() or "unknown"
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    args.run_dir = args.out / f"query-{started.strftime('%Y%m%dT%H%M%SZ')}"
    args.run_dir.mkdir(parents=True, exist_ok=True)
    server_cpus, client_cpus = cpu_plan(1)
    if client_cpus is not None:
        os.sched_setaffinity(0, {int(client_cpus)})
    meta: dict = {
        "started": started.isoformat(timespec="seconds"),
        "commit": _commit(),
        "repeats": args.repeats,
        "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start; "
        "shared with other work (figures vary between runs)",
        "database": f"Citus, a coordinator and {args.citus_workers} workers"
        if args.citus_workers
        else "PostgreSQL, one node",
        "loads": [],
    }
    manifest_path = args.data_dir / MANIFEST if args.data_dir else None
    wanted = {"events": args.events, "seed": args.seed, "days": args.days, "ordered": args.bulk}
    wanted["citus_workers"] = args.citus_workers  # absent from older manifests: 0
    manifest = None
    if manifest_path is not None and manifest_path.exists():
        # Loading again into a loaded database would mix two datasets (or, with the same
        # seed, store nothing new: the event ids are the same).
        manifest = orjson.loads(manifest_path.read_bytes())
        if manifest.get("load") is None:
            raise SystemExit(f"{args.data_dir} holds an interrupted load: remove it first")
        absent = {"citus_workers": 0, "ordered": False}  # what older manifests meant
        held = {k: manifest.get(k, absent.get(k)) for k in wanted}
        if not args.reuse or held != wanted:
            raise SystemExit(
                f"{args.data_dir} holds the dataset {held}: pass --reuse with the same "
                "--events, --seed, --days and --citus-workers, or use another --data-dir"
            )
    stack = Stack(
        "service", args, ROOT, server_cpus, data_dir=args.data_dir, citus_workers=args.citus_workers
    )
    with stack:
        assert stack.keys is not None
        anchor = manifest["anchor_ms"] if manifest else args.anchor_ms or time.time_ns() // 10**6
        dataset = Dataset(
            args.events, args.seed, anchor, int(args.days * DAY_MS), args.batch_size,
            ordered=args.bulk,
        )  # fmt: skip
        if args.compare_current and args.current_first:
            current = _load_current(args, stack)
        if manifest:
            print(f"reusing the dataset loaded in {args.data_dir}", flush=True)
            meta["loads"] = [manifest["load"]]
        else:
            print(f"loading {args.events:,} events spread over {args.days:g} days", flush=True)
            if manifest_path is not None:
                manifest_path.write_bytes(
                    orjson.dumps({**wanted, "anchor_ms": anchor, "load": None})
                )
            if args.bulk:
                backfill = bulk_load(stack.dsn, stack.keys.customer_id, dataset)
                backfill.folded_s = (backfill.folded_s or 0) + anyio.run(_wait_folded, stack.dsn)
            else:
                backfill = load(
                    stack.port, stack.keys.write.key, dataset, label="backfill",
                    connections=args.connections,
                )  # fmt: skip
                backfill.folded_s = backfill.seconds + anyio.run(_wait_folded, stack.dsn)
            meta["loads"] = [backfill.as_dict()]
            if manifest_path is not None:
                manifest_path.write_bytes(
                    orjson.dumps({**wanted, "anchor_ms": anchor, "load": backfill.as_dict()})
                )
        if args.compare_current and not args.current_first:
            current = _load_current(args, stack)
        if args.compare_current:
            meta["loads"].append(current.as_dict())
            first = meta["loads"][0]
            meta["backfill_share"] = first["events_per_s"] / current.events_per_s
            if first.get("folded_events_per_s") and current.folded_s:
                meta["backfill_folded_share"] = first["folded_events_per_s"] / (
                    current.events / current.folded_s
                )
        meta["stored"] = anyio.run(_stored, stack.dsn, stack.keys.customer_id)
        meta["dataset"] = {
            "events": args.events,
            "seed": args.seed,
            "spread_days": args.days,
            "anchor": datetime.fromtimestamp(anchor / 1000, UTC).isoformat(timespec="seconds"),
            "anchor_ms": anchor,
            "batch_size": args.batch_size,
        }
        if not args.no_queries:
            # Queries on a settled database: the vacuum and analyze autovacuum would run after
            # a load this size, done first (they overlapped the first queries, 30 d one event
            # 76 ms instead of 2 ms at 10M), so a run times queries, not maintenance.
            meta["settle_s"] = anyio.run(_settle, stack.dsn)
            print(f"settled (VACUUM ANALYZE) in {meta['settle_s']:.1f} s", flush=True)
        runs = [] if args.no_queries else bench.run(stack.port, stack.keys.read.key, args.repeats)
    checks = None
    if args.check and runs:
        print("checking the answers against the oracle", flush=True)
        checks = oracle.check(dataset, [(r.shape, r.answer) for r in runs if r.answer])
    # The answers checked, so a reader (or tests/test_querybench.py) can check them again.
    answers = {r.shape.key: r.answer for r in runs if r.answer}
    (args.run_dir / "answers.json").write_bytes(orjson.dumps(answers))
    text = report.markdown(meta, runs, checks)
    (args.run_dir / "results.md").write_text(text)
    data = report.as_json(meta, runs, checks)
    (args.run_dir / "results.json").write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    print(text)
    print(f"written to {args.run_dir}")
    wrong = checks is not None and any(v is not None for v in checks.values())
    return 1 if wrong or meta["stored"] != args.events else 0
