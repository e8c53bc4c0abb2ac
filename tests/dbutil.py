"""Reading a test database from sync test code (outside any event loop)."""

from __future__ import annotations

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
