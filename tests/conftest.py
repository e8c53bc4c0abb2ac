"""Shared fixtures: one embedded PostgreSQL per test session, databases cloned from a template.

`pg_server` starts the server in a short temp dir; `pg_template` is a migrated database that
`pg_dsn` (one per session) and `fresh_dsn` (one per test, dropped afterwards) are cloned from,
which takes milliseconds. `blank_dsn` is an empty database for migration tests.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import pytest
from blockbuster import blockbuster_ctx

from analytics.store.embedded import start_embedded, stop_embedded
from analytics.store.migrations import migrate


@pytest.fixture(autouse=True)
def no_blocking_calls(request: pytest.FixtureRequest) -> Iterator[None]:
    """A blocking call made by our code on a running event loop fails the test (blockbuster
    patches time.sleep, socket, file and os calls while a loop runs in the calling thread).
    Tests that block a loop on purpose (the watchdog's) are marked `allow_blocking`."""
    if request.node.get_closest_marker("allow_blocking"):
        yield
        return
    with blockbuster_ctx(["analytics"]) as bb:
        # asyncpg stats ~/.pgpass while opening a connection: rare (pool start, reconnects)
        # and local; allowed by name rather than hidden.
        for name in ("os.stat", "os.path.exists", "io.BufferedReader.read"):
            if name in bb.functions:
                bb.functions[name].can_block_in("asyncpg/connect_utils.py", "_read_password_file")
        yield


@pytest.fixture
def anyio_backend() -> str:
    """Database tests run on asyncio unless a module asks for more (test_db_seam.py runs the
    seam on trio too; the end-to-end suites run every backend as `analytics serve`)."""
    return "asyncio"


def dsn_for(dsn: str, database: str) -> str:
    """`dsn` pointing at another database on the same server."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


def _admin(server_dsn: str, *statements: str) -> None:
    """Run `statements` (outside a transaction) on the server's `postgres` database."""

    async def run() -> None:
        conn = await asyncpg.connect(server_dsn)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    anyio.run(run)


def _create_database(server_dsn: str, template: str) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    _admin(server_dsn, f"CREATE DATABASE {name} TEMPLATE {template}")
    return name


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """DSN of the session's embedded server (database `postgres`), stopped at session end."""
    root = Path(tempfile.mkdtemp(prefix="apg"))
    try:
        yield start_embedded(root)
    finally:
        stop_embedded(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_template(pg_server: str) -> str:
    """Name of a migrated database to clone (nobody may stay connected to it)."""
    name = _create_database(pg_server, "template0")

    async def run() -> None:
        conn = await asyncpg.connect(dsn_for(pg_server, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    anyio.run(run)
    return name


@pytest.fixture(scope="session")
def pg_dsn(pg_server: str, pg_template: str) -> str:
    """A migrated database shared by the whole session."""
    return dsn_for(pg_server, _create_database(pg_server, pg_template))


def _temporary_database(pg_server: str, template: str) -> Iterator[str]:
    name = _create_database(pg_server, template)
    yield dsn_for(pg_server, name)
    _admin(pg_server, f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def fresh_dsn(pg_server: str, pg_template: str) -> Iterator[str]:
    """A migrated database for this test alone."""
    yield from _temporary_database(pg_server, pg_template)


@pytest.fixture
def blank_dsn(pg_server: str) -> Iterator[str]:
    """An empty (unmigrated) database for this test alone."""
    yield from _temporary_database(pg_server, "template0")
