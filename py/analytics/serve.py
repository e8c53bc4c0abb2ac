"""`analytics serve`: database ready, migrations applied, then Hypercorn's workers.

Runs before any event loop exists, so the blocking steps (starting the embedded PostgreSQL)
are plain sync calls here. Workers are separate processes that read the same environment;
this process binds the sockets once and supervises them (`analytics.workers`): a worker that
dies is replaced, and `serve` returns non-zero only when it had to give up.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import replace
from datetime import UTC, datetime

import anyio
from hypercorn.config import Config, Sockets

from analytics.api import protocol
from analytics.api.dberrors import unavailable
from analytics.billing import stub as billing_stub
from analytics.commands.runner import mask_dsn
from analytics.runtime import prometheus
from analytics.runtime.logs import configure_logging
from analytics.settings import Settings
from analytics.store.bootstrap import first_start
from analytics.store.embedded import resolve_database
from analytics.store.pool import connect
from analytics.workers import Supervisor, hypercorn_spawner

#: On SIGTERM a worker gets Hypercorn's graceful timeout for in-flight requests, then its
#: lifespan commits what the writer accepted and closes the pool; this covers the latter.
DRAIN_MARGIN_S = 5.0


async def _prepare(settings: Settings) -> list[str]:
    """Apply migrations; on the very first start create a demo customer and its keys."""
    conn = await connect(settings.database_url, settings)
    try:
        demo = await first_start(conn, datetime.now(UTC))
    finally:
        await conn.close()
    if demo is None:
        return []
    return [
        "Created the demo customer (shown once, keep them):",
        f"  write key: {demo.write.key}",
        f"  read key:  {demo.read.key}",
    ]


def hypercorn_config(settings: Settings, worker_class: str) -> Config:
    config = Config()
    config.application_path = "analytics.app:app_from_env()"
    config.bind = [f"{settings.host}:{settings.port}"]
    config.workers = settings.workers
    config.worker_class = worker_class
    # Hardening: Hypercorn has no read timeout by default, so a slow client could hold a
    # connection forever; bound it, and keep-alive and header sizes too.
    config.read_timeout = 30
    config.keep_alive_timeout = 5
    # h11 applies this only to a head arriving in pieces; `protocol.ProtocolGuard` caps a
    # head that arrives whole at the same size.
    config.h11_max_incomplete_size = protocol.MAX_HEAD_BYTES
    config.graceful_timeout = settings.graceful_timeout_s
    config.accesslog = None
    config.errorlog = "-"
    return config


class ServeError(Exception):
    """Why `serve` cannot start, in one line for the operator (no traceback)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


#: Shown on a later start, when the demo keys were printed on the first one.
KEYS_HINT = (
    "API keys live in the database: `analytics keys list` shows them, "
    "`analytics keys create --customer NAME --scopes write,read` makes new ones."
)


def _listen(config: Config, settings: Settings) -> Sockets:
    try:
        sockets = config.create_sockets()
    except OSError as e:
        raise ServeError(
            f"cannot listen on {settings.host}:{settings.port}: {e.strerror or e}"
            " (is another server there? choose another with --port)"
        ) from None
    for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
        # Listening from here on, not from a worker's start: connections that arrive before
        # the first worker is up, or while a dead one's replacement boots, wait in the backlog.
        sock.listen(config.backlog)
    return sockets


def _trio_installed() -> bool:
    try:
        import trio  # noqa: F401  (the optional extra `analytics[trio]`)
    except ImportError:
        return False
    return True


def serve(
    settings: Settings,
    worker_class: str = "uvloop",
    stub_latency_ms: int = 20,
    citus_workers: int = 0,
) -> int:
    """Serve until SIGTERM/SIGINT (0 once the workers drained) or until workers keep dying
    (non-zero, see `analytics.workers`). Raises `ServeError` when it cannot start."""
    if worker_class == "trio" and not _trio_installed():
        raise ServeError(
            "the trio worker needs Trio: pip install 'analytics[trio]'"
            " (or use --worker-class uvloop, the default, or asyncio)",
            exit_code=2,
        )
    configure_logging()
    if citus_workers and settings.database_url:
        raise ServeError("--citus-workers starts a local cluster: unset DATABASE_URL", 2)
    embedded = not settings.database_url and not citus_workers
    config = hypercorn_config(settings, worker_class)
    sockets = _listen(config, settings)  # first: a taken port fails before anything starts
    try:
        return _serve(settings, config, sockets, stub_latency_ms, embedded, citus_workers)
    finally:
        for sock in [*sockets.secure_sockets, *sockets.insecure_sockets]:
            sock.close()


def _citus(settings: Settings, workers: int) -> Settings:
    """`settings` on a local Citus cluster (built and started as needed, joined): its
    coordinator's DSN."""
    from analytics.store import citus_cluster
    from analytics.store.citus import create_extension, join_cluster

    citus_cluster.ensure_citus_built(settings.citus_src)
    coordinator, ports = citus_cluster.start_cluster(settings.data_dir, workers)
    url = citus_cluster.dsn(coordinator)

    async def join() -> None:
        for port in ports:
            node = await connect(citus_cluster.dsn(port), settings)
            try:
                await create_extension(node)
            finally:
                await node.close()
        conn = await connect(url, settings)
        try:
            await join_cluster(conn, coordinator, ports)
        finally:
            await conn.close()

    anyio.run(join)
    print(f"Citus coordinator on {url}, workers on ports {ports}", flush=True)
    return replace(settings, database_url=url)


def _serve(
    settings: Settings,
    config: Config,
    sockets: Sockets,
    stub_latency_ms: int,
    embedded: bool,
    citus_workers: int = 0,
) -> int:
    try:
        if citus_workers:
            try:
                settings = _citus(settings, citus_workers)
            except (FileNotFoundError, RuntimeError) as e:  # no tarball, a failed build
                raise ServeError(str(e), exit_code=2) from None
        settings = resolve_database(settings)
        lines = anyio.run(_prepare, settings)
    except Exception as e:
        if not unavailable(e):
            raise
        where = "the embedded PostgreSQL" if embedded else mask_dsn(settings.database_url)
        raise ServeError(f"cannot reach the database ({where}): {e}") from None
    try:
        return _run(settings, config, sockets, stub_latency_ms, lines or [KEYS_HINT])
    finally:
        if embedded:
            # Kept running on purpose: the next start takes milliseconds instead of seconds,
            # and nothing else holds it open. Said, so nobody wonders what is left behind.
            print(
                f"the embedded PostgreSQL (data under {settings.data_dir}/pg) keeps running for"
                " the next start: `analytics db stop` stops it",
                flush=True,
            )


def _run(
    settings: Settings, config: Config, sockets: Sockets, stub_latency_ms: int, lines: list[str]
) -> int:
    for line in lines:
        print(line, flush=True)
    stub = None
    if not settings.billing_url:
        stub = billing_stub.spawn(stub_latency_ms)
        settings = replace(settings, billing_url=stub.url)
        print(f"billing stub on {stub.url} (set BILLING_URL to use a real billing service)")
    # Workers (separate processes) build their app from the environment, and share their
    # metrics through prometheus-client's multiprocess files (cleared for this run).
    prom_dir = settings.data_dir.resolve() / "prometheus"
    shutil.rmtree(prom_dir, ignore_errors=True)
    prom_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prom_dir)
    os.environ["DATABASE_URL"] = settings.database_url
    os.environ["BILLING_URL"] = settings.billing_url
    for name in ("host", "port", "workers"):
        os.environ[f"ANALYTICS_{name.upper()}"] = str(getattr(settings, name))
    print(f"analytics serving on http://{settings.host}:{settings.port}", flush=True)
    try:
        # Each worker speaks HTTP/1.1 only (`protocol.http11_only`, set up before it loads
        # the app); its Prometheus live gauges go when it does.
        supervisor = Supervisor(
            hypercorn_spawner(config, sockets, setup=protocol.http11_only),
            settings.workers,
            drain_timeout_s=settings.graceful_timeout_s + DRAIN_MARGIN_S,
            on_exit=prometheus.worker_exited,
        )
        return supervisor.run()
    finally:
        if stub is not None:
            stub.stop()


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_serve_command(subparsers) -> None:
    """Registrar of `analytics serve`."""
    p = subparsers.add_parser("serve", help="run the API under Hypercorn")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--workers", type=_positive, help="worker processes (default 1)")
    p.add_argument(
        "--stub-latency-ms", type=int, default=20, help="latency of the billing stub (default 20)"
    )
    p.add_argument(
        "--worker-class",
        default="uvloop",
        choices=["asyncio", "uvloop", "trio"],
        help="Hypercorn worker class (default uvloop)",
    )

    p.add_argument(
        "--citus-workers",
        type=_positive,
        help="serve on a local Citus cluster of a coordinator and this many workers, under"
        " the data dir (Citus built from CITUS_SRC once)",
    )

    def handler(args) -> int:
        overrides = {k: getattr(args, k) for k in ("host", "port", "workers")}
        settings = Settings.from_env(**{k: v for k, v in overrides.items() if v is not None})
        try:
            return serve(settings, args.worker_class, args.stub_latency_ms, args.citus_workers or 0)
        except ServeError as e:
            print(f"analytics serve: {e}", file=sys.stderr, flush=True)
            return e.exit_code

    p.set_defaults(handler=handler)
