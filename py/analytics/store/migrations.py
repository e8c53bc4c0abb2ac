"""Versioned SQL migrations: `migrations/NNNN_name.sql`, applied once each, in order.

The files ship inside the package (read through importlib.resources). Each migration runs in
its own transaction together with its row in `schema_migrations`, so it is applied entirely or
not at all. A transaction-scoped advisory lock serializes concurrent `migrate` calls (several
workers or hosts starting at once): the later caller waits, then finds the work done.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files

import anyio.to_thread
import asyncpg

#: Advisory lock key held while migrating (an arbitrary constant unique to this application).
LOCK_KEY = 0x616E616C79746963  # "analytic"

_FILE_NAME = re.compile(r"(\d{4})_(\w+)\.sql")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    int PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL
)
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def label(self) -> str:
        """The file's stem, e.g. `0001_init`."""
        return f"{self.version:04d}_{self.name}"


def load_migrations() -> list[Migration]:
    """The packaged migrations, ordered by version; duplicate versions raise ValueError."""
    found: dict[int, Migration] = {}
    for entry in files("analytics.store").joinpath("migrations").iterdir():
        match = _FILE_NAME.fullmatch(entry.name)
        if match is None:
            continue
        version = int(match[1])
        if version in found:
            raise ValueError(f"two migrations with version {version}: {entry.name}")
        found[version] = Migration(version, match[2], entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


async def migrate(conn: asyncpg.Connection, timeout_s: float = 600.0) -> list[str]:
    """Apply the pending migrations in order; return their labels (empty when up to date).

    Idempotent and safe to run from several connections at once. A failing migration raises
    and leaves the database at the previous version. `timeout_s` bounds each migration's SQL
    and the wait for a concurrent migrator, instead of the connection's command timeout.
    """
    applied: list[str] = []
    # Reading the packaged files is blocking I/O: done in a worker thread.
    for migration in await anyio.to_thread.run_sync(load_migrations):
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY, timeout=timeout_s)
            await conn.execute(_CREATE_TABLE)
            done = await conn.fetchval(
                "SELECT true FROM schema_migrations WHERE version = $1", migration.version
            )
            if done:
                continue
            await conn.execute(migration.sql, timeout=timeout_s)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                datetime.now(UTC),
            )
        applied.append(migration.label)
    return applied
