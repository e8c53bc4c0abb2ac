"""`analytics serve`: database ready, migrations applied, then Hypercorn.

Runs before any event loop exists, so the blocking steps (starting the embedded PostgreSQL)
are plain sync calls here. Workers are separate processes that read the same environment.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from datetime import UTC, datetime

import anyio
from hypercorn.config import Config
from hypercorn.run import run

from analytics.billing import stub as billing_stub
from analytics.settings import Settings
from analytics.store.bootstrap import first_start
from analytics.store.embedded import resolve_database
from analytics.store.pool import connect


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
    config.h11_max_incomplete_size = 16 * 1024
    config.graceful_timeout = settings.graceful_timeout_s
    config.accesslog = None
    config.errorlog = "-"
    return config


def serve(settings: Settings, worker_class: str = "uvloop", stub_latency_ms: int = 20) -> int:
    settings = resolve_database(settings)
    for line in anyio.run(_prepare, settings):
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
        run(hypercorn_config(settings, worker_class))
    finally:
        if stub is not None:
            stub.stop()
    return 0


def add_serve_command(subparsers) -> None:
    """Registrar of `analytics serve`."""
    p = subparsers.add_parser("serve", help="run the API under Hypercorn")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--workers", type=int, help="worker processes (default 1)")
    p.add_argument(
        "--stub-latency-ms", type=int, default=20, help="latency of the billing stub (default 20)"
    )
    p.add_argument(
        "--worker-class",
        default="uvloop",
        choices=["asyncio", "uvloop", "trio"],
        help="Hypercorn worker class (default uvloop)",
    )

    def handler(args) -> int:
        overrides = {k: getattr(args, k) for k in ("host", "port", "workers")}
        settings = Settings.from_env(**{k: v for k, v in overrides.items() if v is not None})
        return serve(settings, args.worker_class, args.stub_latency_ms)

    p.set_defaults(handler=handler)
