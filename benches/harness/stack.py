"""One mode's processes: embedded PostgreSQL, the billing stub and the server under test.

`Stack` is a context manager: entering starts everything (the database prepared by
`analytics.store.bootstrap`, the stub by `analytics.billing.stub.spawn`, the server pinned
with taskset) and waits until the server is ready. The server is this service (`analytics
serve`), a case-study variant (`benches.casestudy.serve`) or a reference
(`benches.reference_apps.serve`, on the service's Hypercorn settings, worker class and
worker count; it bills nothing, so no stub is started for it); leaving, even after a failed start,
stops the server and the stub, keeps the end of each one's output under the run directory,
stops PostgreSQL and removes the temporary directory (a `data_dir` given instead, as the
query bench does to reuse a loaded database, is kept). With `citus_workers` the database is
a local Citus cluster instead (store/citus_cluster.py: a coordinator and that many workers
under the directory, Citus built from CITUS_SRC once), the schema distributed by the same
`prepare`, the server on the coordinator; PostgreSQL's CPU is then every node's. Every
process runs in its own session so that Ctrl-C reaches only the harness, which then stops
them. Blocking throughout.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import anyio
import asyncpg

from analytics.billing import stub as billing_stub
from analytics.settings import Settings
from analytics.store import citus_cluster
from analytics.store.bootstrap import CustomerKeys, customer_with_keys, prepare
from analytics.store.embedded import start_embedded, stop_embedded
from benches.harness.cpu import pinned
from benches.harness.httpclient import Http
from benches.harness.plan import REFERENCES

#: The checkout: the servers run from it (`-m benches.casestudy.serve`), results go under it.
ROOT = Path(__file__).resolve().parents[2]


def stop_process(proc: subprocess.Popen, timeout: float = 25) -> None:
    """SIGTERM (a graceful stop), then SIGKILL after `timeout`: to its process group when it
    leads one (started with `start_new_session`: the server's Hypercorn workers are its
    children), else to it alone (its group may be the harness's own)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        proc.wait(timeout=10)


async def _prepare_database(dsn: str, signing: bool) -> CustomerKeys:
    """Migrate, create the partitions, and a customer with a write key (signing if
    `signing`) and a read key."""
    conn = await asyncpg.connect(dsn)
    try:
        now = datetime.now(UTC)
        await prepare(conn, now)
        return await customer_with_keys(conn, "loadtest", now, signing=signing)
    finally:
        await conn.close()


class Stack:
    """PostgreSQL, billing stub and server for `mode` (`service`, a case-study variant or a
    reference), the server on `server_cpus`. `port` and `keys` are set once entered."""

    def __init__(
        self,
        mode: str,
        opts: argparse.Namespace,
        root: Path,
        server_cpus: str | None,
        label: str | None = None,
        data_dir: Path | None = None,
        citus_workers: int = 0,
    ):
        self.mode, self.opts, self.root, self.server_cpus = mode, opts, root, server_cpus
        #: On a local Citus cluster of this many workers (0: the embedded single node).
        self.citus_workers = citus_workers
        #: What its steps, logs and k6 files are called (`mode@class` when classes vary).
        self.label = label or mode
        # A given `data_dir` (the query bench's, reused across runs) is kept on exit.
        self.keep = data_dir is not None
        if data_dir is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
        self.tmp = data_dir or Path(tempfile.mkdtemp(prefix=f"loadtest-{mode}-"))
        self.dsn = ""
        self.db_started = False
        self.stub: billing_stub.StubProcess | None = None
        self.server: subprocess.Popen | None = None
        self.port = 0
        self.keys: CustomerKeys | None = None

    def log(self, name: str) -> IO[bytes]:
        """The output file of process `name` (the caller closes it; the child keeps it)."""
        return open(self.tmp / f"{name}.log", "wb")

    def __enter__(self) -> Stack:
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        self.db_started = True  # a partly started cluster is stopped too
        dsn = self.dsn = self._start_citus() if self.citus_workers else start_embedded(self.tmp)
        self.keys = anyio.run(_prepare_database, dsn, self.opts.sign)
        env = {"DATABASE_URL": dsn}
        if self.mode not in REFERENCES:
            with self.log("billing-stub") as out:
                self.stub = billing_stub.spawn(
                    self.opts.stub_latency_ms,
                    ready_s=20,
                    cwd=self.root,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            env["BILLING_URL"] = self.stub.url
        self.port = billing_stub.free_port()
        cmd, ready, extra = self.server_command()
        env |= extra
        with self.log("server") as out:
            self.server = subprocess.Popen(
                pinned(self.server_cpus, cmd),
                cwd=self.root,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready(self.server, ready, 60)

    def _start_citus(self) -> str:
        """A coordinator and `citus_workers` workers under the directory, joined; the
        coordinator's DSN."""
        citus_cluster.ensure_citus_built(Path(os.environ.get("CITUS_SRC") or Settings().citus_src))
        coordinator, workers = citus_cluster.start_cluster(self.tmp, self.citus_workers)
        citus_cluster.join_nodes(coordinator, workers)
        return citus_cluster.dsn(coordinator)

    def server_command(self) -> tuple[list[str], str, dict[str, str]]:
        """(argv, readiness path, extra environment) of the server of this mode."""
        assert self.keys is not None
        port = ["--port", str(self.port)]
        if self.mode == "service":
            cmd = [sys.executable, "-m", "analytics.cli", "serve", *port]
            cmd += ["--workers", str(self.opts.workers), "--worker-class", self.opts.worker_class]
            env = {
                "ANALYTICS_DATA_DIR": str(self.tmp),
                # The per-key token bucket would answer 429 above 2,000 req/s: what is
                # measured here is the service's capacity, not its rate limiter.
                "ANALYTICS_RATE_LIMIT_PER_S": "1000000",
                "ANALYTICS_RATE_LIMIT_BURST": "1000000",
            }
            return cmd, "/readyz", env
        if self.mode in REFERENCES:
            cmd = [sys.executable, "-m", "benches.reference_apps.serve", "--variant", self.mode]
            cmd += [*port, "--workers", str(self.opts.workers)]
            cmd += ["--worker-class", self.opts.worker_class]
            cmd += ["--customer-id", str(self.keys.customer_id)]
            return cmd, "/readyz", {}
        cmd = [sys.executable, "-m", "benches.casestudy.serve", "--variant", self.mode, *port]
        return cmd, "/healthz", {}

    def wait_ready(self, server: subprocess.Popen, path: str, deadline_s: float) -> None:
        """Until `path` answers 200; RuntimeError (with the server's output) if the server
        exits or is not ready within `deadline_s`."""
        client = Http(self.port, timeout=2)
        deadline = time.monotonic() + deadline_s
        try:
            while time.monotonic() < deadline:
                if server.poll() is not None:
                    raise RuntimeError(f"{self.mode} server exited:\n{self.tail('server')}")
                with contextlib.suppress(OSError, http.client.HTTPException):
                    if client.request("GET", path)[0] == 200:
                        return
                time.sleep(0.2)
        finally:
            client.close()
        raise RuntimeError(
            f"{self.mode} server not ready in {deadline_s} s:\n{self.tail('server')}"
        )

    def tail(self, name: str, n: int = 30) -> str:
        try:
            text = (self.tmp / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-n:])

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            stop_process(self.server)
        if self.stub is not None:
            self.stub.stop()
        self.keep_logs()
        if self.db_started:
            with contextlib.suppress(Exception):
                if self.citus_workers:
                    citus_cluster.stop_cluster(self.tmp / "citus")
                else:
                    stop_embedded(self.tmp)
        if not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def keep_logs(self, limit: int = 256 * 1024) -> None:
        """The end of each process's output, into `<run dir>/logs/<mode>-<name>.log`."""
        logs = getattr(self.opts, "run_dir", None)
        if logs is None:
            return
        (logs / "logs").mkdir(parents=True, exist_ok=True)
        for log in self.tmp.glob("*.log"):
            with contextlib.suppress(OSError), open(log, "rb") as f:
                f.seek(max(0, log.stat().st_size - limit))
                (logs / "logs" / f"{self.label}-{log.name}").write_bytes(f.read())

    def cpu_roots(self) -> dict[str, int | list[int] | None]:
        """The processes whose CPU a step reports: the server and PostgreSQL's postmaster
        (on Citus, every node's)."""
        roots: dict[str, int | list[int] | None] = {
            "server": self.server.pid if self.server else None
        }
        if self.citus_workers:
            names = citus_cluster.node_names(self.citus_workers)
            pgdatas = [self.tmp / "citus" / n / "pg" for n in names]
        else:
            pgdatas = [self.tmp / "pg"]
        pids = []
        for pgdata in pgdatas:
            with contextlib.suppress(OSError, ValueError, IndexError):
                pids.append(int((pgdata / "postmaster.pid").read_text().split()[0]))
        roots["postgres"] = pids or None
        return roots

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
