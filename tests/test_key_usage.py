"""When a key was last used: written by the key lookup itself, at most once an hour."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import anyio.lowlevel
import asyncpg
import pytest

from analytics.settings import Settings
from analytics.store.keys import create_customer, create_key, lookup_key
from analytics.store.pool import connect

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def conn(fresh_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(fresh_dsn, Settings())
    yield conn
    await conn.close()


async def last_used(conn: asyncpg.Connection, key_id: str) -> datetime | None:
    return await conn.fetchval("SELECT last_used_at FROM api_keys WHERE key_id = $1", key_id)


async def test_a_lookup_marks_the_key_used_at_most_once_an_hour(conn) -> None:
    customer_id = await create_customer(conn, "acme", NOW)
    created = await create_key(conn, customer_id, {"write"}, signing=False, now=NOW)
    key_id = created.key.split("_")[2]
    assert await last_used(conn, key_id) is None

    assert await lookup_key(conn, created.key, now=NOW) is not None
    assert await last_used(conn, key_id) == NOW
    for later in (NOW + timedelta(minutes=1), NOW + timedelta(minutes=59)):
        assert await lookup_key(conn, created.key, now=later) is not None
        assert await last_used(conn, key_id) == NOW  # within the hour: no write
    an_hour_on = NOW + timedelta(hours=1, seconds=1)
    assert await lookup_key(conn, created.key, now=an_hour_on) is not None
    assert await last_used(conn, key_id) == an_hour_on


async def test_only_the_right_key_marks_itself_used(conn) -> None:
    customer_id = await create_customer(conn, "acme", NOW)
    created = await create_key(conn, customer_id, {"write"}, signing=False, now=NOW)
    key_id = created.key.split("_")[2]
    wrong_secret = created.key[:-4] + ("AAAA" if not created.key.endswith("AAAA") else "BBBB")
    unknown = f"ak_{customer_id}_00000000_" + "x" * 43
    for key in (wrong_secret, unknown, f"ak_{customer_id + 1}_{key_id}_" + "x" * 43):
        assert await lookup_key(conn, key, now=NOW) is None
    assert await last_used(conn, key_id) is None

    await conn.execute("UPDATE api_keys SET revoked_at = $1", NOW)
    assert await lookup_key(conn, created.key, now=NOW) is None
    assert await last_used(conn, key_id) is None  # a revoked key is not "used"


async def test_the_lookup_is_one_statement_whether_or_not_it_writes(conn) -> None:
    customer_id = await create_customer(conn, "acme", NOW)
    created = await create_key(conn, customer_id, {"read"}, signing=False, now=NOW)
    queries: list[str] = []
    conn.add_query_logger(lambda record: queries.append(record.query))
    for now in (NOW, NOW + timedelta(minutes=5)):  # writes, then does not
        assert await lookup_key(conn, created.key, now=now) is not None
    assert await lookup_key(conn, f"ak_{customer_id}_00000000_" + "x" * 43, now=NOW) is None
    await anyio.lowlevel.checkpoint()  # asyncpg calls query loggers with call_soon
    assert len(queries) == 3
    assert all(q.lstrip().startswith("WITH touched AS (") for q in queries)
