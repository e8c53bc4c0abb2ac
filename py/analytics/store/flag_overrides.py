"""The `feature_flags` table: overrides of the flags' defaults, set by operators."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from analytics.settings import FLAG_NAMES
from analytics.store.notify import FLAGS, notify


async def load_overrides(db: asyncpg.Pool | asyncpg.Connection) -> dict[str, bool]:
    """Every flag set in the table (unknown names included: the caller filters)."""
    return {
        r["name"]: r["enabled"] for r in await db.fetch("SELECT name, enabled FROM feature_flags")
    }


async def list_overrides(conn: asyncpg.Connection) -> dict[str, tuple[bool, datetime]]:
    """name -> (enabled, when it was set)."""
    rows = await conn.fetch("SELECT name, enabled, updated_at FROM feature_flags")
    return {r["name"]: (r["enabled"], r["updated_at"]) for r in rows}


async def set_flag(conn: asyncpg.Connection, name: str, enabled: bool, now: datetime) -> None:
    """Set a flag for every worker: the row and the notification commit together."""
    if name not in FLAG_NAMES:
        raise ValueError(f"unknown flag {name!r}; known: {', '.join(FLAG_NAMES)}")
    async with conn.transaction():
        await conn.execute(
            """INSERT INTO feature_flags (name, enabled, updated_at) VALUES ($1, $2, $3)
               ON CONFLICT (name) DO UPDATE SET enabled = $2, updated_at = $3""",
            name,
            enabled,
            now,
        )
        await notify(conn, FLAGS, name)
