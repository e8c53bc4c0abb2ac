"""Run `analytics serve` in its own process for tests (real Hypercorn, real HTTP)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx2 as httpx

SERVE = [sys.executable, "-m", "analytics.cli", "serve"]
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
def running_server(dsn: str, *args: str, **env: str) -> Iterator[Server]:
    """`analytics serve` on a free port against `dsn` (a fresh, unmigrated database gets the
    demo keys printed at start-up, which the Server carries)."""
    port = free_port()
    proc = subprocess.Popen(
        [*SERVE, "--port", str(port), *args],
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
