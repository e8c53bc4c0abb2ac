"""The store against a real PostgreSQL: migrations, partitions, API keys."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import anyio
import asyncpg
import pytest

from analytics.pipeline.maintenance import sweep_dedup
from analytics.settings import Settings
from analytics.store.keys import create_customer, create_key, lookup_key, revoke_key
from analytics.store.migrations import load_migrations, migrate
from analytics.store.partitions import ensure_partitions
from analytics.store.pool import connect, create_pool

pytestmark = pytest.mark.anyio

NOW = datetime(2024, 5, 17, 12, 30, tzinfo=UTC)
MIGRATIONS = load_migrations()
ALL_MIGRATIONS = [m.label for m in MIGRATIONS]


@pytest.fixture
async def conn(fresh_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(fresh_dsn, Settings())
    yield conn
    await conn.close()


async def insert_event(conn: asyncpg.Connection, ts: datetime) -> str:
    """Insert one event at `ts`; return the name of the partition that stored it (looked up
    in each partition: on Citus a row's `tableoid` is its shard's, on a worker)."""
    key = uuid.uuid4().hex
    await conn.execute(
        "INSERT INTO events (customer_id, ts, name, dedup_key, received_at, properties, flags)"
        " VALUES (1, $1, 'e', $2, $1, '{}', 0)",
        ts,
        key,
    )
    partitions = await conn.fetch(
        "SELECT inhrelid::regclass::text AS p FROM pg_inherits WHERE inhparent = 'events'::regclass"
    )
    (holder,) = [
        r["p"]
        for r in partitions
        if await conn.fetchval(f"SELECT count(*) FROM {r['p']} WHERE dedup_key = $1", key)
    ]
    return holder


async def test_migrate_applies_in_order_once_and_records(blank_dsn: str) -> None:
    assert ALL_MIGRATIONS[0] == "0001_init"
    conn = await connect(blank_dsn, Settings())
    try:
        assert await migrate(conn) == ALL_MIGRATIONS
        assert await migrate(conn) == []
        rows = await conn.fetch("SELECT version, name, applied_at FROM schema_migrations")
        assert [(r["version"], r["name"]) for r in rows] == [
            (m.version, m.name) for m in MIGRATIONS
        ]
        assert all(r["applied_at"] is not None for r in rows)
    finally:
        await conn.close()


async def test_concurrent_migrate_applies_each_migration_once(blank_dsn: str) -> None:
    results: list[list[str]] = []

    async def run() -> None:
        conn = await connect(blank_dsn, Settings())
        try:
            results.append(await migrate(conn))
        finally:
            await conn.close()

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(run)
    assert sorted(label for result in results for label in result) == ALL_MIGRATIONS


async def test_pool_honours_settings(pg_dsn: str) -> None:
    settings = Settings(database_url=pg_dsn, pool_min_size=1, pool_max_size=3)
    pool = await create_pool(settings)
    try:
        assert pool.get_max_size() == 3
        async with pool.acquire(timeout=settings.acquire_timeout_s) as conn:
            assert await conn.fetchval("SELECT count(*) FROM schema_migrations") >= 1
    finally:
        await pool.close()


async def test_releasing_a_pooled_connection_costs_no_round_trip(
    pg_dsn: str, conn: asyncpg.Connection
) -> None:
    """asyncpg's default reset is a second transaction per pooled query (a key lookup cost
    two); the pool keeps the session instead, and still rolls back an abandoned transaction."""
    pool = await create_pool(Settings(database_url=pg_dsn, pool_min_size=1, pool_max_size=1))
    try:
        async with pool.acquire() as pooled:
            pid = pooled.get_server_pid()
            await pooled.fetchval("SELECT 41 + 1")
        last = "SELECT query, state FROM pg_stat_activity WHERE pid = $1"
        assert tuple(await conn.fetchrow(last, pid)) == ("SELECT 41 + 1", "idle")
        async with pool.acquire() as pooled:
            tx = pooled.transaction()
            await tx.start()  # left open on purpose
        assert tuple(await conn.fetchrow(last, pid)) == ("ROLLBACK", "idle")
    finally:
        await pool.close()


async def test_create_pool_needs_a_database_url() -> None:
    with pytest.raises(ValueError):
        await create_pool(Settings())


async def test_partitions_created_ahead_and_rows_routed(conn: asyncpg.Connection) -> None:
    created = await ensure_partitions(conn, NOW, months_back=1, months_ahead=2)
    assert created == ["events_y2024m04", "events_y2024m05", "events_y2024m06", "events_y2024m07"]
    assert await ensure_partitions(conn, NOW) == []
    assert await insert_event(conn, NOW) == "events_y2024m05"
    assert await insert_event(conn, datetime(2024, 7, 31, 23, 59, tzinfo=UTC)) == "events_y2024m07"
    assert await insert_event(conn, datetime(2024, 8, 1, tzinfo=UTC)) == "events_default"


async def test_partition_months_are_utc_months(conn: asyncpg.Connection) -> None:
    # New Year's night at UTC+5 is still December in UTC: the month is taken in UTC.
    new_year_at_utc_plus_5 = datetime(2025, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=5)))
    created = await ensure_partitions(conn, new_year_at_utc_plus_5, months_back=0, months_ahead=0)
    assert created == ["events_y2024m12"]
    assert await insert_event(conn, datetime(2024, 12, 31, 23, 59, tzinfo=UTC)) == "events_y2024m12"
    assert await insert_event(conn, datetime(2025, 1, 1, tzinfo=UTC)) == "events_default"


async def test_past_month_with_rows_in_default_is_skipped(
    conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    await insert_event(conn, datetime(2024, 3, 5, tzinfo=UTC))
    created = await ensure_partitions(conn, NOW, months_back=2, months_ahead=0)
    assert created == ["events_y2024m04", "events_y2024m05"]
    assert "events_y2024m03 skipped" in caplog.text
    assert await insert_event(conn, datetime(2024, 3, 6, tzinfo=UTC)) == "events_default"


async def test_create_customer_is_get_or_create(conn: asyncpg.Connection) -> None:
    first = await create_customer(conn, "acme", NOW)
    assert await create_customer(conn, "acme", NOW + timedelta(days=1)) == first
    assert await create_customer(conn, "globex", NOW) != first


async def test_key_lookup_returns_customer_scopes_and_secret(conn: asyncpg.Connection) -> None:
    customer_id = await create_customer(conn, "acme", NOW)
    created = await create_key(conn, customer_id, {"write"}, signing=True, now=NOW)
    assert created.customer_id == customer_id
    assert created.scopes == {"write"}
    assert created.signing_secret is not None and created.signing_secret.startswith("ansk_")
    prefix, cid, key_id, secret = created.key.split("_", 3)
    assert (prefix, cid, len(key_id)) == ("ak", str(customer_id), 8)
    assert len(secret) >= 32

    info = await lookup_key(conn, created.key)
    assert info is not None
    assert (info.customer_id, info.key_id, info.scopes) == (customer_id, key_id, {"write"})
    assert info.signing_keys == (created.signing_secret.encode(),)
    stored = await conn.fetchval("SELECT key_hash FROM api_keys WHERE key_id = $1", key_id)
    assert created.key.encode() not in stored


async def test_unsigned_key_with_both_scopes(conn: asyncpg.Connection) -> None:
    customer_id = await create_customer(conn, "acme", NOW)
    created = await create_key(conn, customer_id, {"read", "write"}, signing=False, now=NOW)
    assert created.signing_secret is None
    info = await lookup_key(conn, created.key)
    assert info is not None
    assert info.scopes == frozenset({"read", "write"})
    assert info.signing_keys == ()


@pytest.mark.parametrize("scopes", [set(), {"admin"}, {"read", "delete"}])
async def test_unknown_or_no_scopes_are_rejected(conn: asyncpg.Connection, scopes: set) -> None:
    customer_id = await create_customer(conn, "acme", NOW)
    with pytest.raises(ValueError):
        await create_key(conn, customer_id, scopes, signing=False, now=NOW)


async def test_wrong_or_malformed_keys_fail_lookup(conn: asyncpg.Connection) -> None:
    customer_id = await create_customer(conn, "acme", NOW)
    key = (await create_key(conn, customer_id, {"read"}, signing=False, now=NOW)).key
    prefix, cid, key_id, secret = key.split("_", 3)
    flipped = ("A" if secret[0] != "A" else "B") + secret[1:]
    other_customer = await create_customer(conn, "globex", NOW)
    for bad in (
        f"{prefix}_{cid}_{key_id}_{flipped}",
        f"{prefix}_{other_customer}_{key_id}_{secret}",
        f"{prefix}_{cid}_{'0' * 8 if key_id != '0' * 8 else '1' * 8}_{secret}",
        f"{prefix}_{2**70}_{key_id}_{secret}",
        f"{prefix}_{cid}_{key_id}_short",
        key[:-1] + "!",
        "",
        "Bearer " + key,
    ):
        assert await lookup_key(conn, bad) is None, bad
    assert await lookup_key(conn, key) is not None


async def test_revoked_key_fails_lookup(conn: asyncpg.Connection) -> None:
    customer_id = await create_customer(conn, "acme", NOW)
    key = (await create_key(conn, customer_id, {"write"}, signing=False, now=NOW)).key
    other = (await create_key(conn, customer_id, {"write"}, signing=False, now=NOW)).key
    assert not await revoke_key(conn, key[:-1] + ("a" if key[-1] != "a" else "b"), NOW)
    assert await revoke_key(conn, key, NOW)
    assert await lookup_key(conn, key) is None
    assert not await revoke_key(conn, key, NOW)
    assert await lookup_key(conn, other) is not None
    revoked_at = await conn.fetchval(
        "SELECT revoked_at FROM api_keys WHERE customer_id = $1 AND key_id = $2",
        customer_id,
        key.split("_")[2],
    )
    assert revoked_at == NOW


async def test_dedup_sweep_keeps_a_week(fresh_dsn: str) -> None:
    now = datetime.now(UTC)
    pool = await create_pool(Settings(database_url=fresh_dsn, pool_min_size=1))
    try:
        await pool.executemany(
            "INSERT INTO dedup (customer_id, dedup_key, first_seen) VALUES (1, $1, $2)",
            [(f"old{i}", now - timedelta(days=9)) for i in range(25)]
            + [(f"new{i}", now - timedelta(days=6)) for i in range(5)],
        )
        assert await sweep_dedup(pool, now, timedelta(days=8), batch=10) == 25
        assert await pool.fetchval("SELECT count(*) FROM dedup") == 5
        with pytest.raises(ValueError):
            await sweep_dedup(pool, now, timedelta(days=6))
    finally:
        await pool.close()
