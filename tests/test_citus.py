"""The service on a real Citus cluster (a coordinator and two workers, built from CITUS_SRC):
the schema distributed by customer, ingest and dedup through the group commit, exact answers
before and after the rollup job folds, cache invalidation by the coordinator's NOTIFY, and
the shared rate buckets.

Run by `just test-citus` (CITUS_TESTS=1); skipped otherwise: building Citus takes about a
minute the first time, and the cluster a few seconds per run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import httpx2 as httpx
import pytest
from tests.dbutil import fetch, fetchval, settle
from tests.serverproc import running_server

from analytics.settings import Settings
from analytics.store import citus_cluster
from analytics.store.citus import (
    DISTRIBUTED_TABLES,
    REFERENCE_TABLES,
    create_extension,
    join_cluster,
)
from analytics.store.pool import connect

pytestmark = pytest.mark.skipif(
    os.environ.get("CITUS_TESTS") != "1", reason="a Citus cluster: `just test-citus`"
)

ROOT = Path(__file__).resolve().parents[1]


async def _join(settings: Settings, coordinator: int, workers: list[int]) -> None:
    for port in workers:
        node = await connect(citus_cluster.dsn(port), settings)
        await create_extension(node)
        await node.close()
    conn = await connect(citus_cluster.dsn(coordinator), settings)
    await join_cluster(conn, coordinator, workers)
    await conn.close()


@pytest.fixture(scope="module")
def citus_root(tmp_path_factory) -> Iterator[Path]:
    """A coordinator and two workers under the returned directory (`citus/` in it)."""
    src = Path(os.environ.get("CITUS_SRC") or ROOT / "../shared/vendor/citus-13.2.2.tar.gz")
    citus_cluster.ensure_citus_built(src)
    data_dir = tmp_path_factory.mktemp("citus")
    coordinator, workers = citus_cluster.start_cluster(data_dir, 2)
    try:
        anyio.run(_join, Settings(), coordinator, workers)
        yield data_dir
    finally:
        citus_cluster.stop_cluster(data_dir / "citus")


@pytest.fixture(scope="module")
def citus_dsn(citus_root: Path) -> str:
    return citus_cluster.dsn(int((citus_root / "citus" / "coordinator" / "port").read_text()))


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "analytics.cli", *args],
        env={**os.environ, "DATABASE_URL": dsn},
        capture_output=True,
        text=True,
        check=True,
    )


def create_key(dsn: str, customer: str) -> dict:
    out = cli(dsn, "keys", "create", "--customer", customer, "--scopes", "write,read", "--json")
    return json.loads(out.stdout)


def test_migrate_distributes_customer_tables_colocated_and_replicates_the_small_ones(citus_dsn):
    cli(citus_dsn, "migrate")
    rows = fetch(
        citus_dsn,
        "SELECT logicalrelid::regclass::text AS t, partmethod::text AS m, colocationid AS c"
        " FROM pg_dist_partition",
    )
    kinds = {r["t"]: (r["m"], r["c"]) for r in rows}
    assert {t for t, (m, _) in kinds.items() if m == "n"} == set(REFERENCE_TABLES)
    colocations = {kinds[t][1] for t in DISTRIBUTED_TABLES}
    assert all(kinds[t][0] == "h" for t in DISTRIBUTED_TABLES) and len(colocations) == 1
    # Every monthly partition of events is distributed with it.
    parts = fetch(citus_dsn, "SELECT inhrelid::regclass::text AS p FROM pg_inherits"
                  " WHERE inhparent = 'events'::regclass")  # fmt: skip
    assert parts and all(kinds[p["p"]] == kinds["events"] for p in parts)
    assert cli(citus_dsn, "migrate").stdout.strip() == "schema up to date"  # harmless again


def _burn_coordinator_xids(dsn: str, n: int) -> None:
    """Move the coordinator's transaction ids far from the workers' (a written subtransaction
    takes one each), so an xid from the wrong node could not pass for the right one."""
    fetch(
        dsn,
        "DO $$ BEGIN CREATE TEMP TABLE burn (x int); FOR i IN 1.." + str(n) + " LOOP"
        " BEGIN INSERT INTO burn VALUES (1); EXCEPTION WHEN others THEN NULL; END;"
        " END LOOP; END $$",
    )


def test_ingest_dedup_exact_answers_and_invalidation_on_citus(citus_dsn, tmp_path):
    cli(citus_dsn, "migrate")
    keys = [create_key(citus_dsn, f"citus-{uuid.uuid4().hex[:8]}") for _ in range(4)]
    _burn_coordinator_xids(citus_dsn, 20_000)
    before = int(fetchval(citus_dsn, "SELECT pg_current_xact_id()::text"))
    hour_ago = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    env = {"ANALYTICS_DATA_DIR": str(tmp_path), "ANALYTICS_ROLLUP_INTERVAL_S": "0.2"}
    with (
        running_server(citus_dsn, "--workers", "2", **env) as server,
        httpx.Client(base_url=server.base, timeout=30) as http,
    ):
        sent: dict[int, int] = {}
        for round_ in range(5):  # each batch of a customer lands in a commit of many
            for k in keys:
                events = [
                    {"name": "Citus", "event_id": f"r{round_}-{i}", "ts": int(hour_ago.timestamp()
                     * 1000) + i, "properties": {"path": f"/p{i % 3}"}}
                    for i in range(20)
                ]  # fmt: skip
                events.append(events[0])  # a duplicate within the batch
                r = http.post("/v1/batch", json={"events": events},
                              headers={"Authorization": f"Bearer {k['key']}"})  # fmt: skip
                assert r.status_code == 200, r.text
                assert r.json()["accepted"] == 20 and r.json()["duplicates"] == 1
                sent[k["customer_id"]] = sent.get(k["customer_id"], 0) + 20
        # A retry of a whole batch is all duplicates.
        r = http.post("/v1/batch", json={"events": events},
                      headers={"Authorization": f"Bearer {keys[-1]['key']}"})  # fmt: skip
        assert (r.json()["accepted"], r.json()["duplicates"]) == (0, 21)

        def answer(k, **params) -> list[int]:
            q = {"event": "citus", "interval": "hour", "from": hour_ago.isoformat(),
                 "to": (hour_ago + timedelta(hours=1)).isoformat(), **params}  # fmt: skip
            r = http.get("/v1/metrics", params=q, headers={"Authorization": f"Bearer {k['key']}"})
            assert r.status_code == 200, r.text
            return [p["value"] for s in r.json()["series"] for p in s["points"]]

        for k in keys:  # exact whether folded yet or not
            assert answer(k) == [sent[k["customer_id"]]]
        settle(citus_dsn)
        for k in keys:
            assert answer(k) == [sent[k["customer_id"]]]
            assert sorted(answer(k, group_by="path")) == [30, 35, 35]
        # The events carry the coordinator's transaction ids (what the watermark is made of).
        low = int(fetchval(citus_dsn, "SELECT min(xid)::text FROM events WHERE name = 'citus'"))
        assert low > before
        total = fetchval(citus_dsn, "SELECT sum(count) FROM rollup_hour WHERE name = 'citus'"
                         " AND dim = ''")  # fmt: skip
        assert total == sum(sent.values())

        # A closed range answered once is cached; a backfill into it invalidates it (NOTIFY
        # from the commit on the coordinator, LISTEN on a direct connection to it).
        k = keys[0]
        assert answer(k) == [100]
        late = {"name": "Citus", "event_id": "late", "ts": int(hour_ago.timestamp() * 1000)}
        r = http.post("/v1/events", json=late, headers={"Authorization": f"Bearer {k['key']}"})
        assert r.json()["accepted"] == 1
        deadline = time.monotonic() + 10
        while answer(k) != [101]:
            assert time.monotonic() < deadline, "the cached answer was never invalidated"
            time.sleep(0.05)
        # The rate limit's leases went through the shared buckets.
        assert fetchval(citus_dsn, "SELECT count(*) FROM rate_buckets WHERE customer_id = $1",
                        k["customer_id"]) >= 1  # fmt: skip


class Producer(threading.Thread):
    """Streams batches of one customer until stopped; a batch not acknowledged is retried as
    it was (a retry can only be a duplicate). `acked` holds the acknowledged event ids."""

    def __init__(self, base: str, key: str) -> None:
        super().__init__(daemon=True)
        self.base, self.key = base, key
        self.acked: list[str] = []
        self.failures: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.base, timeout=30) as client:
            seq = 0
            while not self.stopping.is_set():
                seq += 1
                events = [{"name": "Moving", "event_id": f"m{seq}-{i}"} for i in range(10)]
                while True:
                    try:
                        r = client.post("/v1/batch", json={"events": events}, headers=headers)
                    except httpx.TransportError as error:
                        self.failures.append(repr(error))
                        continue
                    if r.status_code == 200:
                        self.acked.extend(e["event_id"] for e in events)
                        break
                    self.failures.append(f"{r.status_code} {r.text[:200]}")
                    time.sleep(0.05)


def _placements(dsn: str, customer_id: int) -> int:
    """The node port holding the customer's events shard."""
    return fetchval(
        dsn,
        "SELECT nodeport FROM pg_dist_shard_placement p JOIN pg_dist_shard s USING (shardid)"
        " WHERE s.logicalrelid = 'events_default'::regclass"
        " AND s.shardid = get_shard_id_for_distribution_column('events_default', $1::bigint)",
        customer_id,
    )


def test_a_worker_added_and_shards_rebalanced_under_load_lose_and_double_nothing(
    citus_dsn, citus_root, tmp_path
):
    cli(citus_dsn, "migrate")
    keys = [create_key(citus_dsn, f"moving-{uuid.uuid4().hex[:8]}") for _ in range(6)]
    before = {k["customer_id"]: _placements(citus_dsn, k["customer_id"]) for k in keys}
    env = {"ANALYTICS_DATA_DIR": str(tmp_path), "ANALYTICS_ROLLUP_INTERVAL_S": "0.2"}
    with running_server(citus_dsn, **env) as server:
        producers = [Producer(server.base, k["key"]) for k in keys]
        for p in producers:
            p.start()
        while min(len(p.acked) for p in producers) < 50:
            time.sleep(0.05)
        port = citus_cluster.start_node(citus_root / "citus", "worker3")
        coordinator = int((citus_root / "citus" / "coordinator" / "port").read_text())
        anyio.run(_join, Settings(), coordinator, [port])
        # events has no primary key (it is partitioned by time): logical replication of its
        # inserts needs `force_logical` (UPDATE and DELETE would wait for the move to end).
        fetch(citus_dsn, "SELECT citus_rebalance_start(shard_transfer_mode => 'force_logical')")
        fetch(citus_dsn, "SELECT citus_rebalance_wait()")
        acked_at_end = [len(p.acked) for p in producers]
        while any(len(p.acked) < n + 50 for p, n in zip(producers, acked_at_end, strict=True)):
            time.sleep(0.05)  # still taking events after the move
        for p in producers:
            p.stopping.set()
        for p in producers:
            p.join(30)
        after = {k["customer_id"]: _placements(citus_dsn, k["customer_id"]) for k in keys}
        assert port in set(after.values()) and after != before  # shards of ours moved
        settle(citus_dsn)
        with httpx.Client(base_url=server.base, timeout=30) as http:
            for k, p in zip(keys, producers, strict=True):
                stored = fetch(
                    citus_dsn,
                    "SELECT event_id, count(*) AS n FROM events WHERE customer_id = $1"
                    " AND name = 'moving' GROUP BY event_id",
                    k["customer_id"],
                )
                counts = {r["event_id"]: r["n"] for r in stored}
                assert set(p.acked) <= set(counts)  # nothing acknowledged is lost
                assert all(n == 1 for n in counts.values())  # nothing counted twice
                r = http.get(
                    "/v1/metrics",
                    params={"event": "moving", "interval": "day"},
                    headers={"Authorization": f"Bearer {k['key']}"},
                )
                total = sum(pt["value"] for s in r.json()["series"] for pt in s["points"])
                assert total == len(counts)


def test_erasure_subtracts_a_users_events_on_citus(citus_dsn, tmp_path):
    cli(citus_dsn, "migrate")
    name = f"erase-{uuid.uuid4().hex[:8]}"
    k = create_key(citus_dsn, name)
    env = {"ANALYTICS_DATA_DIR": str(tmp_path), "ANALYTICS_ROLLUP_INTERVAL_S": "0.2"}
    headers = {"Authorization": f"Bearer {k['key']}"}
    with (
        running_server(citus_dsn, **env) as server,
        httpx.Client(base_url=server.base, timeout=30) as http,
    ):
        events = [{"name": "Gone", "event_id": f"g{i}", "user_id": f"u{i % 2}"} for i in range(10)]
        assert http.post("/v1/batch", json={"events": events}, headers=headers).status_code == 200
        settle(citus_dsn)
        cli(citus_dsn, "erase", "--customer", name, "--user-id", "u0")

        def total() -> int:
            r = http.get(
                "/v1/metrics", params={"event": "gone", "interval": "day"}, headers=headers
            )
            return sum(p["value"] for s in r.json()["series"] for p in s["points"])

        assert total() == 5
        rollup = fetchval(citus_dsn, "SELECT sum(count) FROM rollup_hour WHERE customer_id = $1"
                          " AND name = 'gone' AND dim = ''", k["customer_id"])  # fmt: skip
        assert rollup == 5


def test_retention_drops_a_distributed_partition_and_its_shards_on_every_worker(
    citus_dsn, citus_root
):
    """DETACH PARTITION and DROP of a monthly partition of the distributed `events`: the
    coordinator's table and every shard of it on the workers go; the other months stay."""
    from analytics.pipeline.maintenance import apply_retention
    from analytics.store.partitions import ensure_partitions
    from analytics.store.pool import create_pool

    cli(citus_dsn, "migrate")
    jan, feb = datetime(2021, 1, 1, tzinfo=UTC), datetime(2021, 2, 1, tzinfo=UTC)
    customers = [10_001, 10_002, 10_003, 10_004]

    def on_workers(shards: list[str]) -> list[str]:
        found = []
        for worker in sorted((citus_root / "citus").glob("worker*/port")):
            dsn = citus_cluster.dsn(int(worker.read_text()))
            sql = "SELECT s FROM unnest($1::text[]) AS s WHERE to_regclass(s) IS NOT NULL"
            found += [r["s"] for r in fetch(dsn, sql, shards)]
        return found

    async def seed() -> list[str]:
        conn = await connect(citus_dsn, Settings())
        try:
            await ensure_partitions(conn, feb, months_back=1, months_ahead=0)
            for c in customers:
                for ts in (jan + timedelta(days=3), feb + timedelta(days=3)):
                    await conn.execute(
                        "INSERT INTO events (customer_id, ts, name, dedup_key, received_at,"
                        " properties, flags) VALUES ($1, $2, 'old', $3, $2, '{}', 0)",
                        c, ts, f"k{ts.timestamp()}",
                    )  # fmt: skip
            return [r["s"] for r in await conn.fetch(
                "SELECT shard_name('events_y2021m01'::regclass, shardid) AS s FROM pg_dist_shard"
                " WHERE logicalrelid = 'events_y2021m01'::regclass")]  # fmt: skip
        finally:
            await conn.close()

    async def retain() -> tuple[list[str], int]:
        pool = await create_pool(Settings(database_url=citus_dsn, pool_min_size=1))
        try:
            # Cutoff 2021-02-15: January lies before it, February does not.
            dropped = await apply_retention(pool, datetime(2021, 3, 17, tzinfo=UTC),
                                            timedelta(days=30))  # fmt: skip
            sql = "SELECT count(*) FROM events WHERE name = 'old' AND customer_id = ANY($1)"
            left = await pool.fetchval(sql, customers)
            return dropped, left
        finally:
            await pool.close()

    shards = anyio.run(seed)
    assert len(shards) == 16 and sorted(on_workers(shards)) == sorted(shards)  # one place each
    dropped, left = anyio.run(retain)
    assert dropped == ["events_y2021m01"]
    assert left == len(customers)  # February's, on their shards
    assert fetchval(citus_dsn, "SELECT to_regclass('events_y2021m01')") is None
    assert not fetchval(citus_dsn, "SELECT count(*) FROM pg_dist_shard s JOIN unnest($1::text[])"
                        " AS n ON shard_name(s.logicalrelid, s.shardid) = n", shards)  # fmt: skip
    assert on_workers(shards) == []


def test_a_transaction_in_doubt_in_another_database_does_not_hold_the_fold_back(
    citus_dsn, citus_root
):
    """A worker shared with another database (a staging copy, another service) may hold a
    prepared transaction of that database for long: the fold waits only for ours."""
    from analytics.settings import DEFAULT_DIMENSIONS
    from analytics.store.rollups import Folder

    cli(citus_dsn, "migrate")
    worker = citus_cluster.dsn(int((citus_root / "citus" / "worker1" / "port").read_text()))
    other = worker.replace("/postgres?", "/elsewhere?")

    async def execute(dsn: str, sql: str) -> None:
        conn = await connect(dsn, Settings())
        try:
            await conn.execute(sql)  # several statements: the simple protocol
        finally:
            await conn.close()

    anyio.run(execute, worker, "CREATE DATABASE elsewhere")
    gid = f"elsewhere-{uuid.uuid4().hex[:8]}"

    anyio.run(execute, other, f"BEGIN; CREATE TABLE t (x int); PREPARE TRANSACTION '{gid}'")
    try:
        fetch(citus_dsn, "INSERT INTO events (customer_id, ts, name, dedup_key, received_at,"
              " properties, flags) SELECT g, now(), 'doubt', 'k' || g::text, now(), '{}', 0"
              " FROM generate_series(20001, 20010) g")  # fmt: skip

        async def fold() -> int:
            conn = await connect(citus_dsn, Settings())
            try:
                folded = await Folder(DEFAULT_DIMENSIONS).fold(conn, 30.0)
                return folded.events if folded else -1
            finally:
                await conn.close()

        assert anyio.run(fold) >= 10
        assert not fetchval(citus_dsn, "SELECT count(*) FROM events WHERE name = 'doubt'"
                            " AND xid >= (SELECT watermark FROM rollup_state)")  # fmt: skip
    finally:
        anyio.run(execute, other, f"ROLLBACK PREPARED '{gid}'")
        anyio.run(execute, worker, "DROP DATABASE elsewhere")
