"""The schema on Citus: which tables are distributed by customer and which are replicated.

`analytics migrate` calls `distribute` after the migrations: on a database without the citus
extension it does nothing; on a Citus coordinator it turns every customer table into a
distributed table on `customer_id`, all colocated with `events` (a customer's events, dedup
records, rollups, usage, keys and rate buckets live in the same shard group, so every
statement of one customer routes to one worker and joins between them stay local), and the
small global tables into reference tables (a copy on every node). Tables already
distributed are left as they are, so it runs again harmlessly. Rules and reasons:
deploy/citus.md.
"""

from __future__ import annotations

import time

import anyio
import asyncpg

from analytics.store.customers import CUSTOMER_TABLES

#: Replicated to every node: small, global, read by every worker's statements.
REFERENCE_TABLES = ("customers", "feature_flags", "rollup_state")

#: Distributed by customer_id, colocated with `events` (the first one): every table holding a
#: customer's rows (`customers.CUSTOMER_TABLES`, whose test checks it against the catalog) but
#: the replicated ones. `api_keys` refers to `customers`, a reference table (allowed).
DISTRIBUTED_TABLES = tuple(t for t in CUSTOMER_TABLES if t not in REFERENCE_TABLES)

#: Shards per distributed table: a few per core of a small cluster (each commit touching
#: many customers fans out to the shards they fall in).
SHARD_COUNT = 16


async def is_citus(conn: asyncpg.Connection) -> bool:
    """Whether the citus extension is installed in this database."""
    return bool(await conn.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'citus'"))


async def create_extension(conn: asyncpg.Connection) -> None:
    """On every node, before joining: Citus in the database the service uses."""
    await conn.execute("CREATE EXTENSION IF NOT EXISTS citus")


async def join_cluster(conn: asyncpg.Connection, coordinator_port: int, workers: list[int]) -> None:
    """On the coordinator: name it, and add each worker (on 127.0.0.1) not added yet."""
    await conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
    await conn.execute("SELECT citus_set_coordinator_host('127.0.0.1', $1)", coordinator_port)
    for port in workers:
        known = await conn.fetchval(
            "SELECT count(*) FROM pg_dist_node WHERE nodename = '127.0.0.1' AND nodeport = $1",
            port,
        )
        if not known:
            await conn.execute("SELECT citus_add_node('127.0.0.1', $1)", port)


async def distribute(conn: asyncpg.Connection, shard_count: int = SHARD_COUNT) -> list[str]:
    """Distribute what is not yet (see the module's doc), in `shard_count` shards per
    table; the tables it changed."""
    if not await is_citus(conn):
        return []
    done = {
        r["t"]
        for r in await conn.fetch("SELECT logicalrelid::regclass::text AS t FROM pg_dist_partition")
    }
    changed = []
    await conn.execute(f"SET citus.shard_count = {int(shard_count)}")
    for table in REFERENCE_TABLES:
        if table not in done:
            await conn.execute("SELECT create_reference_table($1)", table)
            changed.append(table)
    for table in DISTRIBUTED_TABLES:
        if table not in done:
            colocate = "none" if table == DISTRIBUTED_TABLES[0] else DISTRIBUTED_TABLES[0]
            await conn.execute(
                "SELECT create_distributed_table($1, 'customer_id', colocate_with => $2)",
                table,
                colocate,
            )
            changed.append(table)
    return changed


#: One connection per worker for the rollup fold's writes.
SEQUENTIAL_SQL = "SET LOCAL citus.multi_shard_modify_mode TO 'sequential'"

#: The transactions of this database prepared on the workers now (their gids), Citus only.
#: This database's only (run_command_on_workers connects to the same database on each
#: worker): another database's transaction in doubt on a shared worker says nothing of ours,
#: and would hold every fold back until someone recovered it.
_PREPARED_SQL = """
SELECT coalesce(string_agg(result, ','), '') FROM run_command_on_workers(
    $$SELECT coalesce(string_agg(gid, ','), '') FROM pg_prepared_xacts
      WHERE database = current_database()$$)
"""

#: Longest wait for prepared transactions to end before a fold of the rollups gives up its
#: round (store/rollups.py).
SETTLE_S = 2.0


async def settled(conn: asyncpg.Connection, timeout_s: float) -> bool:
    """Whether every transaction prepared on a worker when this was called has ended (within
    `SETTLE_S`): committed or rolled back there, so its rows are final.

    Why the rollup fold (store/rollups.py) waits for it: on Citus `xid` is the coordinator's
    transaction id (the default is evaluated there, for the rows the coordinator sends to the
    shards) and xmin the coordinator's; a multi-node commit is prepared on the workers,
    committed on the coordinator (leaving its snapshot), then committed on the workers. So
    after reading xmin the fold waits for this: each transaction below xmin is then visible
    on its worker. The fold writes through one connection per worker (`SEQUENTIAL_SQL`), so
    a worker shows the new rollups and its copy of the new watermark at once, and a query
    reads both there in one snapshot (store/series.py)."""
    first = {g for g in (await conn.fetchval(_PREPARED_SQL, timeout=timeout_s)).split(",") if g}
    deadline = time.monotonic() + SETTLE_S
    while first:
        if time.monotonic() > deadline:
            return False
        await anyio.sleep(0.005)
        now = await conn.fetchval(_PREPARED_SQL, timeout=timeout_s)
        first &= set(now.split(","))
    return True
