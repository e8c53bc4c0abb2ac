"""Pools and connections configured from Settings, opened through the seam (`store.db`:
asyncpg's own objects on asyncio and uvloop, their Trio wrappers on Trio).

Both functions apply `connect_timeout_s` to connecting, `command_timeout_s` as the default
deadline of every statement, and `statement_cache_size` (set it to 0 behind PgBouncer in
transaction mode). `acquire_timeout_s` is for callers: `pool.acquire(timeout=...)`.
"""

from __future__ import annotations

from typing import Any

import anyio
import asyncpg

from analytics.settings import Settings
from analytics.store import db


def _connect_kwargs(settings: Settings) -> dict[str, Any]:
    return {
        "timeout": settings.connect_timeout_s,
        "command_timeout": settings.command_timeout_s,
        "statement_cache_size": settings.statement_cache_size,
        "server_settings": {"application_name": "analytics"},
    }


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset: nothing beyond the rollback asyncpg always does on release.

    asyncpg's default reset sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL` on every release: a second transaction for every pooled query (a key lookup
    cost two). Our pooled connections never change their session, so there is nothing to
    reset: every setting is `SET LOCAL` inside a transaction, advisory locks are
    transaction-scoped, cursors live inside transactions, and LISTEN has its own direct
    connection. Code that breaks that rule must use a direct connection (`connect`).
    """


async def create_pool(settings: Settings) -> db.Pool:
    """A pool on `settings.database_url` (which must be set: see `embedded.resolve_database`),
    sized `pool_min_size`..`pool_max_size`; the caller closes it."""
    if not settings.database_url:
        raise ValueError("settings.database_url is empty")
    return await db.create_pool(
        settings.database_url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        reset=_keep_session,
        **_connect_kwargs(settings),
    )


async def connect(dsn: str, settings: Settings) -> db.Connection:
    """One direct connection to `dsn` (e.g. `settings.listen_url` for LISTEN); the caller
    closes it."""
    return await db.connect(dsn, **_connect_kwargs(settings))


async def ping(pool: db.Pool, timeout_s: float) -> bool:
    """Whether the database answers a trivial query within `timeout_s` (connecting included)."""
    try:
        with anyio.fail_after(timeout_s):
            await pool.fetchval("SELECT 1")
    except Exception:  # any failure means "not now": readiness says so, it does not raise
        return False
    return True
