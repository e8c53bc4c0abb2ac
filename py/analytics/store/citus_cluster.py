"""A local Citus cluster of embedded PostgreSQL servers: Citus built into pgserver's
PostgreSQL from a source tarball, a coordinator and N workers under `data_dir/citus/`.

Everything here blocks (compilers, initdb, `pg_ctl`): call it before the event loop starts.

The build runs once per tarball: `make install` writes `citus.so` and the extension files into
the pginstall of the `pgserver` wheel (found through its `pg_config`), and a stamp next to them
keeps the tarball's sha256, so a different tarball rebuilds and the same one costs a hash.
Nodes listen on 127.0.0.1 (the workers and the coordinator connect to each other over TCP) on
ports chosen at their first start and kept in `data_dir/citus/<node>/port`; like the embedded
server they keep running after the command that started them (`stop_cluster`).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import tarfile
import tempfile
import warnings
from pathlib import Path

import anyio
import asyncpg

from analytics.store.citus import create_extension, join_cluster

#: Settings every node starts with: Citus loaded, and logical replication for shard moves.
NODE_CONF = """
shared_preload_libraries = 'citus'
wal_level = logical
max_replication_slots = 10
max_wal_senders = 10
max_connections = 200
"""


def _pginstall() -> Path:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pgserver
    return Path(pgserver.__file__).parent / "pginstall"


def pg_config() -> Path:
    """pg_config of the embedded PostgreSQL (the `pgserver` wheel)."""
    return _pginstall() / "bin" / "pg_config"


def _stamp() -> Path:
    return _pginstall() / "share" / "postgresql" / "extension" / "citus.source-sha256"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_citus_built(src: Path, log=print) -> bool:
    """Build and install Citus from the tarball `src` unless the embedded PostgreSQL has
    this very tarball's build already (or has a build and `src` is gone); True when it
    built. About a minute on 2 cores. FileNotFoundError without tarball nor build."""
    src = Path(src).expanduser().resolve()
    libdir = _pginstall() / "lib" / "postgresql"
    if not src.is_file() and _stamp().exists() and (libdir / "citus.so").exists():
        return False  # built before from a tarball no longer there: the build stands
    if not src.is_file():
        raise FileNotFoundError(
            f"no Citus source tarball at {src}: set CITUS_SRC to a release tarball"
            " (https://github.com/citusdata/citus/releases, 13.x for PostgreSQL 16)"
        )
    if shutil.which("make") is None:
        raise RuntimeError("building Citus needs make and a C compiler")
    want = _sha256(src)
    stamp = _stamp()
    if stamp.exists() and stamp.read_text().strip() == want and (libdir / "citus.so").exists():
        return False
    log(f"building Citus from {src} into {_pginstall()} (once per tarball)")
    with tempfile.TemporaryDirectory(prefix="citus-build-") as tmp:
        with tarfile.open(src) as tar:
            tar.extractall(tmp, filter="data")
        (tree,) = [p for p in Path(tmp).iterdir() if p.is_dir()]
        steps = [
            ["./configure", f"PG_CONFIG={pg_config()}", "--without-libcurl", "--without-lz4",
             "--without-zstd"],
            ["make", f"-j{os.cpu_count() or 2}"],
            ["make", "install"],
        ]  # fmt: skip
        for step in steps:
            done = subprocess.run(step, cwd=tree, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(step[:2])} failed:\n{done.stdout[-4000:]}"
                                   f"\n{done.stderr[-4000:]}")  # fmt: skip
    stamp.write_text(want + "\n")
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> tuple[str | None, int | None, int | None]:
    """PostgreSQL refuses to run as root: then as pgserver's `pgserver` user."""
    if os.geteuid() != 0:
        return None, None, None
    try:
        entry = pwd.getpwnam("pgserver")
    except KeyError:
        subprocess.run(["useradd", "-s", "/bin/bash", "pgserver"], check=True)
        entry = pwd.getpwnam("pgserver")
    return "pgserver", entry.pw_uid, entry.pw_gid


def _bin(name: str) -> str:
    return str(_pginstall() / "bin" / name)


def node_names(workers: int) -> list[str]:
    return ["coordinator", *(f"worker{i}" for i in range(1, workers + 1))]


def _running(pgdata: Path) -> bool:
    pid_file = pgdata / "postmaster.pid"
    if not pid_file.exists():
        return False
    try:
        os.kill(int(pid_file.read_text().split()[0]), 0)
    except (ValueError, OSError, IndexError):
        return False
    return True


def _traversable(root: Path) -> None:
    """Let the server's user reach `root` (when run as root): traverse permission on it and
    its parents. Again at every start and stop: a parent may have been made private since
    (pytest does so to its temporary directories)."""
    for p in [root, *root.parents]:
        p.chmod(p.stat().st_mode | 0o011)


def start_node(root: Path, name: str) -> int:
    """Start (or reuse) the node `name` under `root`; its port."""
    node = root / name
    pgdata = node / "pg"
    user, uid, gid = _run_as()
    node.mkdir(parents=True, exist_ok=True)
    port_file = node / "port"
    if not port_file.exists():
        port_file.write_text(str(_free_port()))
    port = int(port_file.read_text())
    if uid is not None:
        _traversable(root)
        os.chown(node, uid, gid)
    if not (pgdata / "PG_VERSION").exists():
        subprocess.run([_bin("initdb"), "-D", str(pgdata), "--auth=trust", "-U", "postgres",
                        "--encoding=utf8"], check=True, capture_output=True, user=user)  # fmt: skip
        with (pgdata / "postgresql.conf").open("a") as conf:
            conf.write(NODE_CONF)
    if not _running(pgdata):
        options = f"-h 127.0.0.1 -p {port} -k {node}"
        subprocess.run([_bin("pg_ctl"), "-D", str(pgdata), "-w", "-t", "60", "-o", options,
                        "-l", str(node / "log"), "start"], check=True, capture_output=True,
                       user=user)  # fmt: skip
    return port


def stop_cluster(root: Path) -> list[str]:
    """Stop every node under `root` (fast shutdown); the names of those that were running."""
    user, _, _ = _run_as()
    if user is not None and root.exists():
        _traversable(root)
    stopped = []
    for node in sorted(root.glob("*/pg")):
        if _running(node):
            subprocess.run([_bin("pg_ctl"), "-D", str(node), "-w", "-m", "fast", "stop"],
                           check=True, capture_output=True, user=user)  # fmt: skip
            stopped.append(node.parent.name)
    return stopped


def dsn(port: int) -> str:
    """A node's DSN (loopback, trust authentication). The empty password and sslmode=disable
    keep asyncpg from reading ~/.pgpass and ~/.postgresql/ (blocking file reads) on every
    connect."""
    return f"postgresql://postgres:@127.0.0.1:{port}/postgres?sslmode=disable"


def start_cluster(data_dir: Path, workers: int) -> tuple[int, list[int]]:
    """Start (or reuse) a coordinator and `workers` workers under `data_dir/citus`: the
    coordinator's port and the workers'. Joining them is `store.citus.join_cluster`
    (`join_nodes` does both)."""
    root = Path(data_dir).expanduser().resolve() / "citus"
    ports = [start_node(root, name) for name in node_names(workers)]
    return ports[0], ports[1:]


def join_nodes(coordinator: int, workers: list[int], database: str = "postgres") -> None:
    """The extension created in `database` on every node, the workers added to the
    coordinator (`store.citus.join_cluster`; again harmlessly)."""

    def at(port: int) -> str:
        return dsn(port).replace("/postgres?", f"/{database}?")

    async def join() -> None:
        for port in workers:
            node = await asyncpg.connect(at(port))
            try:
                await create_extension(node)
            finally:
                await node.close()
        conn = await asyncpg.connect(at(coordinator))
        try:
            await join_cluster(conn, coordinator, workers)
        finally:
            await conn.close()

    anyio.run(join)
