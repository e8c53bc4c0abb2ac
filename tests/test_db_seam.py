"""The database seam (`store.db`) gives the same behaviour on asyncio and on Trio: results,
errors, transactions, COPY, cursors, LISTEN, and cancellation that leaves the connection
usable. On Trio the asyncpg objects live on the loop thread (`store.db_trio`)."""

from __future__ import annotations

import anyio
import asyncpg
import pytest

from analytics.store import db
from analytics.store.db_trio import TrioConnection, TrioPool


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request) -> str:
    return request.param


pytestmark = pytest.mark.anyio


async def test_the_backend_picks_the_implementation(pg_dsn, anyio_backend):
    conn = await db.connect(pg_dsn)
    pool = await db.create_pool(pg_dsn, min_size=1, max_size=2)
    try:
        trio = anyio_backend == "trio"
        assert isinstance(conn, TrioConnection if trio else asyncpg.Connection)
        assert isinstance(pool, TrioPool if trio else asyncpg.Pool)
        assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
        assert [r["g"] for r in await pool.fetch("SELECT generate_series(1, 3) AS g")] == [1, 2, 3]
        async with pool.acquire() as pooled:
            assert (await pooled.fetchrow("SELECT 'x' AS v"))["v"] == "x"
    finally:
        await pool.close()
        await conn.close()
    assert conn.is_closed()


async def test_errors_cross_unchanged_and_transactions_roll_back(fresh_dsn, anyio_backend):
    conn = await db.connect(fresh_dsn)
    try:
        await conn.execute("CREATE TABLE t (v int PRIMARY KEY)")
        with pytest.raises(asyncpg.UniqueViolationError):
            async with conn.transaction():
                await conn.executemany("INSERT INTO t VALUES ($1)", [(1,), (2,)])
                await conn.execute("INSERT INTO t VALUES (1)")
        assert await conn.fetchval("SELECT count(*) FROM t") == 0  # rolled back whole
        async with conn.transaction():
            await conn.copy_to_table("t", source=memoryview(b"7\n8\n"), format="text")
        async with conn.transaction(readonly=True):
            cursor = await conn.cursor("SELECT v FROM t ORDER BY v")
            assert [r["v"] for r in await cursor.fetch(10)] == [7, 8]
    finally:
        await conn.close()


async def test_a_cancelled_query_is_cancelled_and_the_connection_stays_usable(
    pg_dsn, anyio_backend
):
    conn = await db.connect(pg_dsn)
    try:
        with anyio.move_on_after(0.2) as scope:
            await conn.execute("SELECT pg_sleep(30)")
        assert scope.cancelled_caught
        assert await conn.fetchval("SELECT 1") == 1  # no "another operation is in progress"
        # The server really stopped the statement (asyncpg's cancel request got through).
        active = "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'"
        assert await conn.fetchval(active + " AND state = 'active'") == 0
    finally:
        await conn.close()


async def test_notifications_and_termination_reach_the_loop_that_listens(pg_dsn, anyio_backend):
    listener, sender = await db.connect(pg_dsn), await db.connect(pg_dsn)
    got: list[str] = []
    arrived, closed = anyio.Event(), anyio.Event()

    def on_payload(_conn, _pid, _channel, payload) -> None:
        got.append(payload)  # runs on the listening loop: its Event can be set directly
        arrived.set()

    try:
        await listener.add_listener("seam_test", on_payload)
        listener.add_termination_listener(lambda _conn: closed.set())
        await sender.execute("SELECT pg_notify('seam_test', 'hello')")
        with anyio.fail_after(5):
            await arrived.wait()
        assert got == ["hello"]
        listener.terminate()
        with anyio.fail_after(5):
            await closed.wait()
    finally:
        await sender.close()
        await listener.close()
