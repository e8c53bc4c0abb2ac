"""Shared fixtures: one embedded PostgreSQL per test session, databases cloned from a template.

`pg_server` starts the server in a short temp dir; `pg_template` is a migrated database that
`pg_dsn` (one per session) and `fresh_dsn` (one per test, dropped afterwards) are cloned from,
which takes milliseconds. `blank_dsn` is an empty database for migration tests.

With `CITUS_TESTS=1` (`just test-citus`) the same fixtures give databases of a Citus cluster
instead (a coordinator and two workers built from CITUS_SRC, store/citus_cluster.py), so the
suites run unchanged against it. A database there is one database of the same name on every
node (Citus keeps its metadata, shard tables and node list in each), so a clone is made the
same way on each node, from a template that is itself on each: `citus_blank` (the extension
and the nodes joined, nothing else: what `template0` stands for) and the migrated template
(its tables distributed). About 0.1 s to create and 0.3 s to drop, where truncating every
distributed table costs 0.4-1.5 s and leaves the catalog (partitions) as the last test made it.
"""

from __future__ import annotations

import os
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

from analytics.store import citus_cluster
from analytics.store.citus import distribute
from analytics.store.embedded import start_embedded, stop_embedded
from analytics.store.migrations import migrate
from dbutil import ON_CITUS

ROOT = Path(__file__).resolve().parents[1]

#: On Citus, the server DSN of the coordinator -> those of every node, coordinator first.
_NODES: dict[str, list[str]] = {}
#: On Citus, the blank template, standing for `template0`.
CITUS_BLANK = "citus_blank"


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


def _nodes(server_dsn: str) -> list[str]:
    """The `postgres` DSN of every node of the server: itself alone on a single node."""
    return _NODES.get(server_dsn, [server_dsn])


def _seal(server_dsn: str, name: str) -> None:
    """On Citus, make `name` a template nobody is connected to on any node: the nodes'
    maintenance daemons (and their connections to each other) are in every database with
    the extension; connections refused, they are ended and stay away."""
    if server_dsn not in _NODES:
        return  # single node: nothing but the test's own (closed) connections used it

    async def run() -> None:
        conns = [await asyncpg.connect(node) for node in _nodes(server_dsn)]
        try:
            for conn in conns:
                await conn.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
            with anyio.fail_after(30):
                for conn in conns:
                    while True:  # the server, polled until they are gone
                        ended = await conn.fetchval(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                            " WHERE datname = $1 AND pid <> pg_backend_pid()",
                            name,
                        )
                        if not ended:
                            break
                        await anyio.sleep(0.02)
        finally:
            for conn in conns:
                await conn.close()

    anyio.run(run)


def _drop_database(server_dsn: str, name: str) -> None:
    """DROP DATABASE on every node. On Citus, a transaction a test's server left in doubt on
    a worker (a stop during a fold's two-phase commit: the maintenance daemon would recover
    it within a minute) is recovered first, then connections are refused on every node (the
    nodes' daemons connect to each other), and a daemon slow to go is waited for."""
    if server_dsn in _NODES:
        _admin(dsn_for(server_dsn, name), "SELECT recover_prepared_transactions()")
    _seal(server_dsn, name)

    async def run() -> None:
        for node in _nodes(server_dsn):
            conn = await asyncpg.connect(node)
            try:
                with anyio.fail_after(60):
                    while True:
                        try:
                            await conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
                            break
                        except asyncpg.ObjectInUseError:
                            await anyio.sleep(0.1)
            finally:
                await conn.close()

    anyio.run(run)


def _create_database(server_dsn: str, template: str) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    if server_dsn in _NODES and template == "template0":
        template = CITUS_BLANK
    for node in _nodes(server_dsn):
        _admin(node, f"CREATE DATABASE {name} TEMPLATE {template}")
    return name


def _start_citus(root: Path) -> str:
    """A coordinator and two workers under `root`, with the blank template on each; the
    coordinator's DSN."""
    src = Path(os.environ.get("CITUS_SRC") or ROOT / "../shared/vendor/citus-13.2.2.tar.gz")
    citus_cluster.ensure_citus_built(src)
    coordinator, workers = citus_cluster.start_cluster(root, 2)
    nodes = [citus_cluster.dsn(port) for port in (coordinator, *workers)]
    for node in nodes:
        _admin(node, f"CREATE DATABASE {CITUS_BLANK} TEMPLATE template0")
    citus_cluster.join_nodes(coordinator, workers, CITUS_BLANK)
    _NODES[nodes[0]] = nodes
    _seal(nodes[0], CITUS_BLANK)
    return nodes[0]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """DSN of the session's embedded server (database `postgres`), stopped at session end;
    on Citus, of the coordinator of a cluster stopped at session end."""
    root = Path(tempfile.mkdtemp(prefix="apg"))
    try:
        if ON_CITUS:
            yield _start_citus(root)
        else:
            yield start_embedded(root)
    finally:
        if ON_CITUS:
            citus_cluster.stop_cluster(root / "citus")
        else:
            stop_embedded(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_template(pg_server: str) -> str:
    """Name of a migrated database to clone (nobody may stay connected to it); on Citus, its
    tables distributed (what `analytics migrate` does; nothing on a single node)."""
    name = _create_database(pg_server, "template0")

    async def run() -> None:
        conn = await asyncpg.connect(dsn_for(pg_server, name))
        try:
            await migrate(conn)
            await distribute(conn)
        finally:
            await conn.close()

    anyio.run(run)
    _seal(pg_server, name)
    return name


@pytest.fixture(scope="session")
def pg_dsn(pg_server: str, pg_template: str) -> str:
    """A migrated database shared by the whole session."""
    return dsn_for(pg_server, _create_database(pg_server, pg_template))


def _temporary_database(pg_server: str, template: str) -> Iterator[str]:
    name = _create_database(pg_server, template)
    yield dsn_for(pg_server, name)
    _drop_database(pg_server, name)


@pytest.fixture
def fresh_dsn(pg_server: str, pg_template: str) -> Iterator[str]:
    """A migrated database for this test alone."""
    yield from _temporary_database(pg_server, pg_template)


@pytest.fixture
def blank_dsn(pg_server: str) -> Iterator[str]:
    """An empty (unmigrated) database for this test alone (on Citus: the extension created
    and the nodes joined, as `just citus` leaves a database before migrating)."""
    yield from _temporary_database(pg_server, "template0")
