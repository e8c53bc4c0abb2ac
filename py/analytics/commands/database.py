"""`analytics migrate` and `analytics db status|start|stop`: the database's lifecycle.

With `DATABASE_URL` unset the service runs on an embedded PostgreSQL under
`ANALYTICS_DATA_DIR` (default `.analytics`), which outlives the commands that start it;
`db start` and `db stop` manage that server only. `db status` reports on whichever database
the service would use, without starting anything.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import anyio

from analytics.commands.runner import (
    Subparsers,
    fail,
    mask_dsn,
    print_json,
    with_connection,
)
from analytics.settings import Settings, env_name
from analytics.store.bootstrap import prepare
from analytics.store.embedded import embedded_status, start_embedded, stop_embedded
from analytics.store.inventory import Inventory, inventory
from analytics.store.pool import connect

_ONLY_EMBEDDED = (
    "DATABASE_URL is set: `analytics db {}` manages only the embedded PostgreSQL"
    " (under ANALYTICS_DATA_DIR when DATABASE_URL is unset); manage that server with its own"
    " tools"
)


async def _migrate(conn, args: argparse.Namespace) -> int:
    done = await prepare(conn, datetime.now(UTC))
    print(f"applied: {', '.join(done.migrations)}" if done.migrations else "schema up to date")
    if done.partitions:
        print(f"partitions created: {', '.join(done.partitions)}")
    if done.distributed:
        print(f"distributed on Citus: {', '.join(done.distributed)}")
    return 0


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _inventory(settings: Settings, dsn: str) -> Inventory | str:
    """The database's figures, or why they could not be read."""

    async def read() -> Inventory:
        conn = await connect(dsn, settings)
        try:
            return await inventory(conn)
        finally:
            await conn.close()

    try:
        return anyio.run(read)
    except Exception as e:  # any failure is what status reports: it does not raise
        return f"{type(e).__name__}: {e}"


def _status(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    report: dict[str, object]
    if settings.database_url:
        report = {"kind": "external", "dsn": mask_dsn(settings.database_url)}
        dsn: str | None = settings.database_url
    else:
        st = embedded_status(settings.data_dir)
        report = {
            "kind": "embedded",
            "data_dir": str(st.pgdata),
            "initialized": st.initialized,
            "running": st.running,
            "pid": st.pid,
            "dsn": st.dsn,
            "size_on_disk_bytes": st.size_bytes,
        }
        dsn = st.dsn
    found = _inventory(settings, dsn) if dsn else None
    if isinstance(found, Inventory):
        report.update(reachable=True, **{k: v for k, v in asdict(found).items()})
    elif isinstance(found, str):
        report.update(reachable=False, error=found)
    if args.json:
        print_json(report)
    else:
        _print_status(report)
    return 0 if dsn is None or isinstance(found, Inventory) else 1


def _print_status(r: dict) -> None:
    if r["kind"] == "embedded":
        print(f"embedded PostgreSQL under {r['data_dir']} (set {env_name('data_dir')} to move it)")
        if not r["initialized"]:
            print("  not created yet: `analytics db start` (or `analytics serve`) creates it")
            return
        print(f"  size on disk: {_size(int(r['size_on_disk_bytes']))}")
        if not r["running"]:
            print("  not running: `analytics db start` starts it")
            return
        print(f"  running, pid {r['pid']}")
    else:
        print(f"external PostgreSQL ({env_name('database_url')})")
    print(f"  dsn: {r['dsn']}")
    if not r.get("reachable"):
        print(f"  unreachable: {r.get('error')}")
        return
    print(f"  server: PostgreSQL {r['server_version']}, database {r['database']}")
    print(f"  database size: {_size(int(r['size_bytes']))}")
    print(f"  schema: {r['schema'] or 'not migrated: run `analytics migrate`'}")
    if r["events"] is not None:
        events = f"{r['events']:,}" if r["events_exact"] else f"~{r['events']:,} (estimate)"
        print(f"  customers: {r['customers']:,}, events: {events}")


def _start(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if settings.database_url:
        return fail(_ONLY_EMBEDDED.format("start"))
    was_running = embedded_status(settings.data_dir).running
    dsn = start_embedded(settings.data_dir)
    print(f"{'already running' if was_running else 'started'}: {dsn}")
    return 0


def _stop(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if settings.database_url:
        return fail(_ONLY_EMBEDDED.format("stop"))
    print("stopped" if stop_embedded(settings.data_dir) else "not running")
    citus = Path(settings.data_dir).expanduser().resolve() / "citus"
    if citus.exists():  # `serve --citus-workers`' nodes (store/citus_cluster.py)
        from analytics.store.citus_cluster import stop_cluster

        stopped = stop_cluster(citus)
        print(f"Citus nodes stopped: {', '.join(stopped)}" if stopped else "Citus: not running")
    return 0


def add_database_commands(subparsers: Subparsers) -> None:
    """Registrar of `migrate` and `db status|start|stop`."""
    p = subparsers.add_parser("migrate", help="apply migrations and create event partitions")
    p.set_defaults(handler=with_connection(_migrate))

    db = subparsers.add_parser(
        "db", help="the database: status; start and stop the embedded PostgreSQL"
    ).add_subparsers(dest="db_command", required=True, metavar="ACTION")
    p = db.add_parser("status", help="where the data is, whether it runs, its DSN, size, events")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(handler=_status)
    p = db.add_parser("start", help="start the embedded PostgreSQL (created on first start)")
    p.set_defaults(handler=_start)
    p = db.add_parser("stop", help="stop the embedded PostgreSQL (fast shutdown)")
    p.set_defaults(handler=_stop)
