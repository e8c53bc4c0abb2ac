"""One experiment's processes: embedded PostgreSQL, optionally the partition proxy, the
billing stub, and `analytics serve`, all under a fresh temporary directory.

`ChaosStack` is a context manager. Entering starts PostgreSQL (`start_embedded`), prepares
the database and a customer with keys (`analytics.store.bootstrap`), starts the proxy when
asked (the app then reaches PostgreSQL over TCP through it), the stub (`billing.stub.spawn`)
and the server, and waits for `/readyz`. Leaving, also after a failed start or Ctrl-C, stops
the server (its process group: the workers too), the stub, the proxy and PostgreSQL (thawed
first, killed if a fast stop does not do), keeps the end of each log under the run directory
and removes the temporary directory. Every child runs in its own session, so a Ctrl-C reaches
only this process, which then stops them. Blocking throughout.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import anyio
import asyncpg
import httpx2 as httpx

from analytics.billing import stub as billing_stub
from analytics.store.bootstrap import CustomerKeys, customer_with_keys, prepare
from analytics.store.embedded import start_embedded
from benches.chaos import procs
from benches.chaos.postgres import Postgres
from benches.chaos.proxy import PartitionProxy
from benches.harness.stack import ROOT, stop_process

#: The server's settings for the experiments: billing windows of a second, so usage reaches
#: the stub within seconds of the load ending; no per-key rate limit in the way.
SERVER_ENV = {
    "ANALYTICS_BILLING_WINDOW_S": "1",
    "ANALYTICS_BILLING_POLL_S": "0.2",
    "ANALYTICS_BILLING_MAX_BACKOFF_S": "1",
    "ANALYTICS_BILLING_TIMEOUT_S": "0.5",
    "ANALYTICS_RATE_LIMIT_PER_S": "1000000",
    "ANALYTICS_RATE_LIMIT_BURST": "1000000",
}


async def _prepare_database(dsn: str) -> CustomerKeys:
    conn = await asyncpg.connect(dsn)
    try:
        now = datetime.now(UTC)
        await prepare(conn, now)
        return await customer_with_keys(conn, "chaos", now)
    finally:
        await conn.close()


class ChaosStack:
    """The processes of the experiment `name`; with `proxy`, the app's DATABASE_URL is the
    proxy's TCP port. `logs` (a directory) receives the end of each process's output."""

    def __init__(
        self, name: str, *, proxy: bool = False, logs: Path | None = None, stub_latency_ms=5
    ) -> None:
        self.name, self.want_proxy, self.logs = name, proxy, logs
        self.stub_latency_ms = stub_latency_ms
        self.tmp = Path(tempfile.mkdtemp(prefix=f"chaos-{name}-"))
        self.pg: Postgres | None = None
        self.proxy: PartitionProxy | None = None
        self.stub: billing_stub.StubProcess | None = None
        self.server: subprocess.Popen | None = None
        self.keys: CustomerKeys | None = None
        self.port = 0

    def __enter__(self) -> ChaosStack:
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        dsn = start_embedded(self.tmp)
        self.pg = Postgres(self.tmp, dsn)
        self.keys = anyio.run(_prepare_database, dsn)
        app_dsn = dsn
        if self.want_proxy:
            self.proxy = PartitionProxy(self.pg.socket_path)
            app_dsn = f"postgresql://postgres:@127.0.0.1:{self.proxy.port}/postgres"
        with self._log("billing-stub") as out:
            self.stub = billing_stub.spawn(
                self.stub_latency_ms,
                ready_s=20,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.port = billing_stub.free_port()
        env = {
            **os.environ,
            **SERVER_ENV,
            "DATABASE_URL": app_dsn,
            "BILLING_URL": self.stub.url,
            "ANALYTICS_DATA_DIR": str(self.tmp),
        }
        with self._log("server") as out:
            self.server = subprocess.Popen(
                [sys.executable, "-m", "analytics.cli", "serve", "--port", str(self.port)],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if not self.wait_ready(60):
            raise RuntimeError(f"the server did not get ready:\n{self.tail('server')}")

    def _log(self, name: str):
        return open(self.tmp / f"{name}.log", "wb")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dsn(self) -> str:
        """PostgreSQL directly (never through the proxy): for counting."""
        assert self.pg is not None
        return self.pg.dsn

    def wait_ready(self, timeout_s: float) -> bool:
        """Until `/readyz` answers 200 (True), the server exits or `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.base_url, timeout=2) as client:
            while time.monotonic() < deadline:
                if self.server is None or self.server.poll() is not None:
                    return False
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/readyz").status_code == 200:
                        return True
                time.sleep(0.1)
        return False

    def workers(self) -> list[int]:
        """The server's worker processes: its descendants but multiprocessing's resource
        tracker (Hypercorn spawns the workers; the supervisor may sit in between)."""
        if self.server is None or self.server.poll() is not None:
            return []
        return [
            pid
            for pid in procs.descendants(self.server.pid)
            if "resource_tracker" not in procs.cmdline(pid) and procs.alive(pid)
        ]

    def tail(self, name: str, n: int = 30) -> str:
        try:
            text = (self.tmp / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-n:])

    def __exit__(self, *exc: object) -> None:
        try:
            if self.server is not None:
                stop_process(self.server, timeout=15)
            if self.stub is not None:
                self.stub.stop()
            if self.proxy is not None:
                self.proxy.close()
            if self.pg is not None:
                self.pg.shutdown()
            self._keep_logs()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _keep_logs(self, limit: int = 256 * 1024) -> None:
        if self.logs is None:
            return
        self.logs.mkdir(parents=True, exist_ok=True)
        logs = [*self.tmp.glob("*.log"), self.tmp / "pg" / "log"]
        for log in logs:
            with contextlib.suppress(OSError), open(log, "rb") as f:
                f.seek(max(0, log.stat().st_size - limit))
                name = "postgres.log" if log.name == "log" else log.name
                (self.logs / f"{self.name}-{name}").write_bytes(f.read())
