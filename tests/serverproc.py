"""Run `analytics serve` in its own process for tests (real Hypercorn, real HTTP)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx

SERVE = [sys.executable, "-m", "analytics.cli", "serve"]
#: Hypercorn's worker classes: the end-to-end suites run on each of them.
BACKENDS = ["uvloop", "asyncio", "trio"]
STUB = [sys.executable, "-m", "analytics.billing.stub"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer")


@dataclass
class Server:
    base: str
    proc: subprocess.Popen
    keys: dict[str, str] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)

    def headers(self, scope: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[scope]}"}

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@contextmanager
def running_server(
    dsn: str, *args: str, command: list[str] = SERVE, port: int | None = None, **env: str
) -> Iterator[Server]:
    """`analytics serve` (or `command`) on a free port against `dsn` (a fresh, unmigrated
    database gets the demo keys printed at start-up, which the Server carries). Its data dir
    (Prometheus' multiprocess files) is a temporary one unless `ANALYTICS_DATA_DIR` is given,
    so servers of other tests (or other suites on the machine) never share it. `port`
    (default: a free one) lets a test start a server again where producers expect it."""
    port = port or free_port()
    data_dir = None
    if "ANALYTICS_DATA_DIR" not in env:
        data_dir = tempfile.mkdtemp(prefix="serve-")
        env = {**env, "ANALYTICS_DATA_DIR": data_dir}
    proc = subprocess.Popen(
        [*command, "--port", str(port), *args],
        env={**os.environ, "DATABASE_URL": dsn, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = Server(f"http://127.0.0.1:{port}", proc)
    try:
        for line in proc.stdout:
            server.output.append(line)
            if "key:" in line:
                server.keys[line.split()[0]] = line.split()[-1]
            if "serving on" in line:
                break
        # Keep draining the output: a full pipe would block the server's log writer.
        threading.Thread(target=lambda: server.output.extend(proc.stdout), daemon=True).start()
        wait_http(f"{server.base}/healthz")
        yield server
    finally:
        server.stop()
        if data_dir is not None:
            shutil.rmtree(data_dir, ignore_errors=True)
        # Shown by pytest only when the test failed.
        print("".join(server.output))


@contextmanager
def running_stub(port: int, *args: str) -> Iterator[str]:
    proc = subprocess.Popen([*STUB, "--port", str(port), *args])
    try:
        wait_http(f"http://127.0.0.1:{port}/usage")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def worker_pids(server: Server) -> list[int]:
    """The pids of `server`'s Hypercorn workers: its children started by multiprocessing's
    spawn (not the billing stub, nor multiprocessing's resource tracker). Linux /proc."""
    pids = []
    for children in Path(f"/proc/{server.proc.pid}/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue  # exited meanwhile
            if b"spawn_main" in cmdline:
                pids.append(int(pid))
    return sorted(pids)


def wait_for_workers(
    server: Server, n: int, *, without: Iterable[int] = (), timeout_s: float = 20
) -> list[int]:
    """`server`'s worker pids once there are `n` of them, none of them in `without`."""
    excluded = set(without)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = worker_pids(server)
        if len(pids) == n and not excluded & set(pids):
            return pids
        if server.proc.poll() is not None:
            raise AssertionError(f"the server exited ({server.proc.returncode})")
        time.sleep(0.02)
    raise TimeoutError(f"not {n} workers (without {sorted(excluded)}): {worker_pids(server)}")


def connection_owner(server: Server, client: socket.socket) -> int | None:
    """The worker pid holding the server's end of `client`'s TCP connection (IPv4, Linux
    /proc), or None while no worker has accepted it."""
    server_port = int(server.base.rsplit(":", 1)[1])
    client_port = client.getsockname()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == server_port and (
            int(remote.split(":")[1], 16) == client_port
        ):
            inode = fields[9]
    if inode is None:
        return None
    for pid in worker_pids(server):
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        if f"socket:[{inode}]" in links:
            return pid
    return None


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # names lowercased
    body: bytes


def read_responses(
    sock: socket.socket, *, count: int | None = None, timeout_s: float = 5
) -> tuple[list[RawResponse], bool]:
    """The responses read from `sock` (Content-Length framed, as all of ours are), and
    whether the server closed the connection; reads until it does, until `count` responses
    arrived, or for `timeout_s`."""
    buffer, responses, closed = b"", [], False
    deadline = time.monotonic() + timeout_s
    while count is None or len(responses) < count:
        head_end = buffer.find(b"\r\n\r\n")
        if head_end >= 0:
            lines = buffer[:head_end].decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            end = head_end + 4 + int(headers.get("content-length", "0"))
            if len(buffer) >= end:
                status = int(lines[0].split()[1])
                responses.append(RawResponse(status, headers, buffer[head_end + 4 : end]))
                buffer = buffer[end:]
                continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            data = b""
        if not data:
            closed = True
            break
        buffer += data
    return responses, closed


@contextmanager
def serving(
    argv: list[str], ready_path: str, *, cwd: str, env: dict[str, str], ready_s: float = 30
) -> Iterator[str]:
    """Any server command of ours (`argv` + `--port N`) on a free port, its base URL yielded
    once `ready_path` answers; on exit SIGTERM, which it must answer with a clean exit
    (asserted), else it is killed. Its output is shown by pytest when the test fails."""
    port = free_port()
    proc = subprocess.Popen(
        [*argv, "--port", str(port)],
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    drain = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
    drain.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}{ready_path}", deadline_s=ready_s)
        yield base
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, "did not exit cleanly on SIGTERM"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        drain.join(timeout=5)
        print("".join(output))
