"""Reading a test database from sync test code (outside any event loop)."""

from __future__ import annotations

import os
import time

import anyio
import asyncpg


def fetch(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    """The rows of `query` on a fresh connection to `dsn`, for checking what was stored."""

    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    return anyio.run(run)


def fetchval(dsn: str, query: str, *args: object) -> object:
    """The first column of the first row of `query` on `dsn`."""
    rows = fetch(dsn, query, *args)
    return rows[0][0] if rows else None


def settle(dsn: str, within_s: float = 15.0) -> None:
    """Wait until the rollup job has folded every committed event (the running server's job
    does the folding), so the rollup tables can be read directly."""
    deadline = time.monotonic() + within_s
    query = "SELECT count(*) FROM events WHERE xid >= (SELECT watermark FROM rollup_state)"
    while fetchval(dsn, query):
        assert time.monotonic() < deadline, "the rollup job did not fold the events in time"
        time.sleep(0.05)


async def apply_migrations(conn: asyncpg.Connection, migrations: list) -> None:
    """Bring a blank database to the state `migrations` (the first ones of
    `load_migrations()`, read before any loop runs) leave, recorded as `migrate` records
    them: a database as an older release left it, for testing the migrations after."""
    await conn.execute(
        "CREATE TABLE schema_migrations (version int PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL)"
    )
    for m in migrations:
        await conn.execute(m.sql)
        await conn.execute(
            "INSERT INTO schema_migrations VALUES ($1, $2, now())", m.version, m.name
        )


#: The suites run against a Citus cluster (`just test-citus`): tests/conftest.py's database
#: fixtures give databases of its coordinator. A test that cannot run there says why with
#: `pytest.mark.skipif(ON_CITUS, reason=...)`.
ON_CITUS = os.environ.get("CITUS_TESTS") == "1"
