"""The experiments' hands on the embedded PostgreSQL: stop it hard, kill it, freeze it, start
it again.

`analytics.store.embedded` starts the server (pgserver, `cleanup_mode=None`) and stops it
gracefully; pgserver caches one handle per data directory and process, so it cannot start
the same server a second time from this process. Restarts therefore run `pg_ctl start`
directly, with the options pgserver itself uses (no TCP listener, the same socket
directory, the same log), as the data directory's owner when this runs as root (pg_ctl
refuses root; see `stop_embedded`). Everything here blocks.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from analytics.store.embedded import stop_embedded
from benches.chaos import procs

#: What a backend's title (update_process_title is on) shows while it is inside the
#: writer's transaction: the COPY, the statement that stores and rolls up, the COMMIT.
IN_TRANSACTION = ("COPY", "SELECT", "INSERT", "COMMIT", "transaction")


class Postgres:
    """The server under `data_dir/pg`, reached at `dsn` (pgserver's unix-socket DSN)."""

    def __init__(self, data_dir: Path, dsn: str) -> None:
        self.data_dir = data_dir
        self.pgdata = data_dir.resolve() / "pg"
        self.dsn = dsn
        self.socket_dir = Path(parse_qs(urlsplit(dsn).query)["host"][0])
        self.port = urlsplit(dsn).port or 5432
        self.socket_path = self.socket_dir / f".s.PGSQL.{self.port}"
        self._user = pwd.getpwuid(self.pgdata.stat().st_uid).pw_name if os.geteuid() == 0 else None

    def _pg_ctl(self, *args: str, timeout_s: float = 60) -> None:
        # Imported here: `start_embedded` has imported pgserver (and silenced its warning).
        from pgserver import pg_ctl

        pg_ctl(list(args), pgdata=self.pgdata, user=self._user, timeout=timeout_s)

    def postmaster(self) -> int | None:
        """The postmaster's pid from `postmaster.pid` if that process is alive."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
            if procs.alive(pid):
                return pid
        return None

    def processes(self) -> list[int]:
        """The postmaster and all its children (backends, checkpointer, WAL writer...)."""
        pid = self.postmaster()
        return [] if pid is None else [pid, *procs.children(pid)]

    def client_backends(self) -> list[int]:
        """The backends serving clients (their title names the connection: `[local]`)."""
        pid = self.postmaster()
        return [c for c in (procs.children(pid) if pid else []) if "[local]" in procs.cmdline(c)]

    @staticmethod
    def in_transaction(backends: list[int]) -> list[str]:
        """What those of `backends` inside a transaction are doing right now, from their
        titles (`postgres: postgres postgres [local] COMMIT` gives `COMMIT`)."""
        doing = [procs.cmdline(pid).partition("[local]")[2].strip() for pid in backends]
        return [d for d in doing if any(w in d for w in IN_TRANSACTION)]

    def stop_immediate(self) -> None:
        """`pg_ctl stop -m immediate`: every backend quits at once, no checkpoint; the next
        start runs crash recovery."""
        self._pg_ctl("-w", "-m", "immediate", "stop")

    def start(self) -> None:
        """`pg_ctl start -w`, as pgserver starts it; returns once it accepts connections.

        The lock files a killed postmaster leaves (`postmaster.pid`, the socket's `.lock`)
        are removed first when their process is gone or a zombie: PostgreSQL takes a zombie
        (not yet reaped by init) for a live postmaster and refuses to start. Its backends
        are gone too (`kill_postmaster`)."""
        for lock in (self.pgdata / "postmaster.pid", Path(f"{self.socket_path}.lock")):
            with contextlib.suppress(OSError, ValueError, IndexError):
                if not procs.alive(int(lock.read_text().split()[0])):
                    lock.unlink()
        self._pg_ctl(
            "-w",
            "-o",
            '-h ""',
            "-o",
            f"-k {self.socket_dir}",
            "-l",
            str(self.pgdata / "log"),
            "start",
            timeout_s=60,
        )

    def kill_postmaster(self, orphans_s: float = 5.0) -> tuple[int, list[int]]:
        """SIGKILL the postmaster alone (its backends finish what they were doing and exit
        when they notice it is gone); after `orphans_s` SIGKILL the stragglers, which would
        keep the shared memory and stop a restart. Returns (pid, stragglers killed)."""
        pid = self.postmaster()
        if pid is None:
            raise RuntimeError("PostgreSQL is not running")
        kids = procs.children(pid)
        procs.send([pid], signal.SIGKILL)
        stragglers = procs.wait_gone([pid, *kids], orphans_s)
        procs.send(stragglers, signal.SIGKILL)
        procs.wait_gone(stragglers, 5)
        return pid, stragglers

    @contextlib.contextmanager
    def frozen(self) -> Iterator[list[int]]:
        """SIGSTOP the postmaster and every child inside the block, SIGCONT them after it,
        also when the block raises (a server left stopped would hang the teardown)."""
        stopped: list[int] = []
        try:
            pids = self.processes()
            # Children first: a running postmaster would notice nothing, but a frozen one
            # cannot fork a new backend between the two signals.
            stopped = procs.send([*pids[1:], *pids[:1]], signal.SIGSTOP)
            yield stopped
        finally:
            procs.send(stopped, signal.SIGCONT)

    def shutdown(self) -> None:
        """Stop it for good (teardown): a fast stop, else SIGKILL whatever is left."""
        pids = self.processes()
        procs.send(pids, signal.SIGCONT)  # in case a failed experiment left it frozen
        with contextlib.suppress(Exception):
            stop_embedded(self.data_dir)
        left = procs.wait_gone(pids, 10)
        procs.send(left, signal.SIGKILL)
        procs.wait_gone(left, 5)
