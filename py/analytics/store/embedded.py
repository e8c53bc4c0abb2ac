"""An embedded PostgreSQL (the `pgserver` wheel) for when `DATABASE_URL` is unset.

Everything here blocks (initdb, `pg_ctl start`/`stop`, a process-wide file lock): call it before
the event loop starts, or from async code through a thread offload
(`anyio.to_thread.run_sync(start_embedded, data_dir)`).

The server is started with `cleanup_mode=None`, so it outlives the process that started it and
later processes reuse it (the data, and the running server, persist under `data_dir/pg`). Stop it
with `stop_embedded`. When run as root, pgserver creates a `pgserver` system user that owns the
data directory and runs the server, and it adds group/other traverse permissions to the parent
directories of `data_dir` so that user can reach them.
"""

from __future__ import annotations

import os
import pwd
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

from analytics.settings import Settings


def _pgdata(data_dir: Path) -> Path:
    return Path(data_dir).expanduser().resolve() / "pg"


def _pgserver() -> ModuleType:
    """pgserver, imported on first use: deployments with `DATABASE_URL` never load it."""
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset; its /tmp fallback is fine.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pgserver
    return pgserver


def start_embedded(data_dir: Path) -> str:
    """Start (or reuse) the PostgreSQL server under `data_dir/pg`; return its asyncpg DSN.

    The DSN connects as the superuser `postgres` to the database `postgres` over a unix socket
    (`postgresql://postgres:@/postgres?host=<socket dir>`). pgserver puts the socket in the
    data directory, or in a short per-user runtime directory when that path would exceed the
    unix-socket length limit, so `data_dir` may be long. A first start (initdb) takes about
    half a second; reusing a running server takes milliseconds. Blocking.
    """
    pgdata = _pgdata(data_dir)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = _pgserver().get_server(pgdata, cleanup_mode=None)
    _tune(server, pgdata)
    return server.get_uri()


def shared_buffers_mb(total_bytes: int | None = None) -> int:
    """The embedded server's shared_buffers: an eighth of the machine's memory, between
    PostgreSQL's default of 128 MB and 1 GB. (The rollups of 10M events over 30 days are
    ~1.5 GB; the default cache held a fraction of what a fold touches. PostgreSQL maps the
    buffers at start but the memory is only taken as pages are used, so a small test
    database costs no more.)"""
    if total_bytes is None:
        total_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(128, min(1024, total_bytes // 8 // 2**20))


def _tune(server: object, pgdata: Path) -> None:
    """Set shared_buffers (`shared_buffers_mb`) if the server runs with another size: by
    ALTER SYSTEM, then a restart (with the options it was started with). Once per data dir,
    or when the machine's memory changed."""
    wanted = shared_buffers_mb()
    psql = server.psql  # type: ignore[attr-defined]
    now = psql("SELECT setting::bigint * 8 / 1024 FROM pg_settings WHERE name = 'shared_buffers';")
    if int(now.split()[2]) == wanted:  # (a header, a rule, the value, the row count)
        return
    psql(f"ALTER SYSTEM SET shared_buffers = '{wanted}MB';")
    user = pwd.getpwuid(pgdata.stat().st_uid).pw_name if os.geteuid() == 0 else None
    _pgserver().pg_ctl(["-w", "-m", "fast", "restart"], pgdata=pgdata, user=user, timeout=60)


def stop_embedded(data_dir: Path) -> bool:
    """Stop the server under `data_dir/pg` (fast shutdown); False if it was not running.

    Blocking. It stops the server for every process using it. pgserver caches server handles
    per process, so this process must not call `start_embedded` on the same `data_dir` again.
    """
    pgdata = _pgdata(data_dir)
    if not (pgdata / "postmaster.pid").exists():
        return False
    # pg_ctl refuses to run as root: run it as the data directory's owner then.
    user = pwd.getpwuid(pgdata.stat().st_uid).pw_name if os.geteuid() == 0 else None
    _pgserver().pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=60)
    return True


@dataclass(frozen=True)
class EmbeddedStatus:
    """The embedded server under a data dir, as found on disk: never started to find out."""

    pgdata: Path
    #: Whether initdb has run there (a `PG_VERSION` file).
    initialized: bool
    #: Whether a postmaster is running on it (its `postmaster.pid` names a live process).
    running: bool
    #: The DSN `start_embedded` returns, when running.
    dsn: str | None
    #: The postmaster's process id, when running.
    pid: int | None
    #: Bytes of every file under `pgdata` (data, WAL, logs).
    size_bytes: int


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:  # a file PostgreSQL removed while we walked
                continue
    return total


def embedded_status(data_dir: Path) -> EmbeddedStatus:
    """What is under `data_dir/pg`: initialized or not, running or not, its DSN and size.
    Reads files only (and whether the postmaster's process exists). Blocking."""
    pgdata = _pgdata(data_dir)
    initialized = (pgdata / "PG_VERSION").exists()
    info = None
    if (pgdata / "postmaster.pid").exists():
        _pgserver()  # its import sets up what its utilities need
        from pgserver.utils import PostmasterInfo

        try:
            info = PostmasterInfo.read_from_pgdata(pgdata)
        except (AssertionError, ValueError, OSError):  # a half-written pid file: starting
            info = None
    running = info is not None and info.is_running()
    return EmbeddedStatus(
        pgdata=pgdata,
        initialized=initialized,
        running=running,
        dsn=info.get_uri() if running and info is not None else None,
        pid=info.pid if running and info is not None else None,
        size_bytes=_tree_size(pgdata) if pgdata.exists() else 0,
    )


def resolve_database(settings: Settings) -> Settings:
    """`settings` with `database_url` set: unchanged if set, else the embedded server's DSN.

    Starts the embedded server under `settings.data_dir` when needed, so it blocks like
    `start_embedded`.
    """
    if settings.database_url:
        return settings
    return replace(settings, database_url=start_embedded(settings.data_dir))
