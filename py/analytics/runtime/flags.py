"""Feature flags: defaults from settings, overrides in the `feature_flags` table.

Every worker keeps a local copy, reloaded when `analytics flags set` (or anyone) sends
`NOTIFY analytics_flags`, and every `refresh_s` as a safety net. Reads are plain attribute
lookups on the loop: no I/O on the request path.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime

import anyio
import asyncpg
from anyio.abc import TaskStatus

log = logging.getLogger(__name__)

CHANNEL = "analytics_flags"
NAMES = ("billing_dispatch", "enrichment", "signature_enforcement")


class Flags:
    def __init__(self, defaults: Mapping[str, bool]) -> None:
        unknown = set(defaults) - set(NAMES)
        if unknown:
            raise ValueError(f"unknown flags {sorted(unknown)}")
        self._defaults = {name: bool(defaults.get(name, True)) for name in NAMES}
        self._overrides: dict[str, bool] = {}
        self.changed = anyio.Event()

    def enabled(self, name: str) -> bool:
        return self._overrides.get(name, self._defaults[name])

    def snapshot(self) -> dict[str, bool]:
        return {name: self.enabled(name) for name in NAMES}

    def apply(self, overrides: Mapping[str, bool]) -> None:
        before = self.snapshot()
        self._overrides = {k: v for k, v in overrides.items() if k in self._defaults}
        if self.snapshot() != before:
            log.info("feature flags now %s", self.snapshot())
            self.changed.set()
            self.changed = anyio.Event()

    async def load(self, conn: asyncpg.Connection) -> None:
        rows = await conn.fetch("SELECT name, enabled FROM feature_flags")
        self.apply({r["name"]: r["enabled"] for r in rows})

    async def run(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        *,
        refresh_s: float = 30.0,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep the flags current until cancelled (raises on connection loss: supervise it)."""
        conn = await connect()
        try:
            reload = anyio.Event()

            def on_notify(*_: object) -> None:
                reload.set()

            await conn.add_listener(CHANNEL, on_notify)
            await self.load(conn)
            task_status.started()
            while True:
                with anyio.move_on_after(refresh_s):
                    await reload.wait()
                reload = anyio.Event()
                await self.load(conn)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await conn.close()


async def set_flag(conn: asyncpg.Connection, name: str, enabled: bool, now: datetime) -> None:
    if name not in NAMES:
        raise ValueError(f"unknown flag {name!r}; known: {', '.join(NAMES)}")
    async with conn.transaction():
        await conn.execute(
            """INSERT INTO feature_flags (name, enabled, updated_at) VALUES ($1, $2, $3)
               ON CONFLICT (name) DO UPDATE SET enabled = $2, updated_at = $3""",
            name,
            enabled,
            now,
        )
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, name)
