"""A small billing service for development, tests and benchmarks (`analytics billing-stub`).

It stands in for the vendor's usage API that `sdk.BillingClient` talks to:

- `POST /v1/usage` (JSON `customer_id`, `count`, `window_start`, `window_end`; header
  `Idempotency-Key`): waits `latency_ms` (an async sleep), then fails with 503 with probability
  `fail_rate` (nothing recorded), else records the usage once per key: 200
  `{"accepted": true, "duplicate": false}`; the same key again with the same body is answered
  200 `{"accepted": true, "duplicate": true}` and not counted; with a different body 409.
  A call whose client gave up (timeout) may still be recorded, as with a real service.
- `GET /usage`: `{"customers": {"<id>": total_count}, "calls": n, "duplicates": d,
  "failures": f}`; `calls` counts every usage request on arrival, `failures` the injected 503s.
- `GET|POST /admin/config` (`{"latency_ms", "fail_rate", "seed"}`, all optional): read or
  change the behaviour at run time. `POST /admin/reset`: forget all usage.

State lives in memory and, with `state_path`, also in a JSON file rewritten atomically (write a
temp file, rename) after each change, so a restarted stub keeps its totals and idempotency keys.
No fsync: it survives the stub's process dying, not the machine's. It is a stub.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import anyio
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

# customer_id (as text), count, window_start, window_end (both normalized ISO 8601)
Usage = tuple[str, int, str, str]


class BadRequest(Exception):
    """The request cannot be understood; answered 400 with a code."""


@dataclass
class Ledger:
    """What billing has recorded. Pure bookkeeping: no I/O, no event loop."""

    customers: dict[str, int] = field(default_factory=dict)
    keys: dict[str, list[Any]] = field(default_factory=dict)  # idempotency key -> Usage
    calls: int = 0
    duplicates: int = 0
    failures: int = 0

    def record(self, key: str, usage: Usage) -> Literal["recorded", "duplicate", "conflict"]:
        """Count `usage` once per `key`; a key seen with another body is a conflict."""
        seen = self.keys.get(key)
        if seen is None:
            self.keys[key] = list(usage)
            customer, count = usage[0], usage[1]
            self.customers[customer] = self.customers.get(customer, 0) + count
            return "recorded"
        if tuple(seen) != usage:
            return "conflict"
        self.duplicates += 1
        return "duplicate"

    def totals(self) -> dict[str, Any]:
        return {
            "customers": dict(self.customers),
            "calls": self.calls,
            "duplicates": self.duplicates,
            "failures": self.failures,
        }

    @classmethod
    def load(cls, path: Path | None) -> Ledger:
        """The ledger saved at `path`, or an empty one if there is none."""
        if path is None or not path.exists():
            return cls()
        return cls(**json.loads(path.read_text()))


def _save(path: Path, data: bytes) -> None:
    """Replace `path` atomically: readers see the old file or the new one, never a torn one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _parse_usage(body: Any) -> Usage:
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    customer, count = body.get("customer_id"), body.get("count")
    if isinstance(customer, bool) or not isinstance(customer, int | str) or customer == "":
        raise BadRequest("customer_id must be an integer or a non-empty string")
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise BadRequest("count must be an integer >= 0")
    windows = []
    for name in ("window_start", "window_end"):
        try:
            when = datetime.fromisoformat(body[name])
        except (KeyError, TypeError, ValueError):
            raise BadRequest(f"{name} must be an ISO 8601 datetime") from None
        if when.tzinfo is None:
            raise BadRequest(f"{name} must carry a UTC offset")
        windows.append(when)
    if windows[0] > windows[1]:
        raise BadRequest("window_start must not be after window_end")
    return (str(customer), count, windows[0].isoformat(), windows[1].isoformat())


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


class BillingStub:
    """The stub's behaviour (latency, failure rate) and state, and its HTTP handlers."""

    def __init__(
        self,
        latency_ms: float = 20,
        fail_rate: float = 0.0,
        *,
        state_path: Path | None = None,
        seed: int | None = None,
    ) -> None:
        self.latency_ms = latency_ms
        self.fail_rate = fail_rate
        self.state_path = state_path
        self.ledger = Ledger.load(state_path)
        self._rng = random.Random(seed)
        # Held across each change and its save, so saves land in order and nothing is
        # acknowledged before it is saved.
        self._lock = anyio.Lock()

    async def _save(self) -> None:
        if self.state_path is not None:
            data = json.dumps(asdict(self.ledger)).encode()
            await anyio.to_thread.run_sync(_save, self.state_path, data)

    async def usage(self, request: Request) -> JSONResponse:
        async with self._lock:
            self.ledger.calls += 1
            await self._save()
        await anyio.sleep(self.latency_ms / 1000)
        if self._rng.random() < self.fail_rate:
            async with self._lock:
                self.ledger.failures += 1
                await self._save()
            return _error(503, "unavailable", "injected failure")
        key = request.headers.get("idempotency-key", "")
        if not key:
            return _error(400, "missing_idempotency_key", "Idempotency-Key header is required")
        try:
            usage = _parse_usage(await request.json())
        except ValueError:
            return _error(400, "bad_json", "body is not valid JSON")
        except BadRequest as e:
            return _error(400, "bad_usage", str(e))
        async with self._lock:
            outcome = self.ledger.record(key, usage)
            if outcome != "conflict":
                await self._save()
        if outcome == "conflict":
            return _error(409, "idempotency_conflict", "key already used with another body")
        return JSONResponse({"accepted": True, "duplicate": outcome == "duplicate"})

    async def totals(self, request: Request) -> JSONResponse:
        return JSONResponse(self.ledger.totals())

    async def config(self, request: Request) -> JSONResponse:
        if request.method == "POST":
            try:
                changes = await request.json()
                latency = float(changes.get("latency_ms", self.latency_ms))
                fail_rate = float(changes.get("fail_rate", self.fail_rate))
                seed = changes.get("seed")
            except (ValueError, TypeError, AttributeError):
                return _error(400, "bad_config", "expected a JSON object of numbers")
            if not 0 <= latency < math.inf or not 0 <= fail_rate <= 1:
                return _error(400, "bad_config", "latency_ms >= 0 and 0 <= fail_rate <= 1")
            self.latency_ms, self.fail_rate = latency, fail_rate
            if seed is not None:
                self._rng.seed(seed)
        return JSONResponse({"latency_ms": self.latency_ms, "fail_rate": self.fail_rate})

    async def reset(self, request: Request) -> JSONResponse:
        async with self._lock:
            self.ledger = Ledger()
            await self._save()
        return JSONResponse(self.ledger.totals())


def create_app(
    latency_ms: float = 20,
    fail_rate: float = 0.0,
    *,
    state_path: Path | None = None,
    seed: int | None = None,
) -> Starlette:
    """The stub as an ASGI app; loads `state_path` if it exists (a blocking read: call this
    before the event loop runs)."""
    stub = BillingStub(latency_ms, fail_rate, state_path=state_path, seed=seed)
    app = Starlette(
        routes=[
            Route("/v1/usage", stub.usage, methods=["POST"]),
            Route("/usage", stub.totals, methods=["GET"]),
            Route("/admin/config", stub.config, methods=["GET", "POST"]),
            Route("/admin/reset", stub.reset, methods=["POST"]),
        ]
    )
    app.state.stub = stub
    return app


def run_stub(
    host: str = "127.0.0.1",
    port: int = 8100,
    latency_ms: float = 20,
    fail_rate: float = 0.0,
    *,
    state_path: Path | None = None,
    seed: int | None = None,
) -> None:
    """Serve the stub with Hypercorn (asyncio worker); blocks until SIGINT or SIGTERM, then
    shuts down gracefully and returns."""
    app = create_app(latency_ms, fail_rate, state_path=state_path, seed=seed)
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = "-"
    config.read_timeout = 30
    config.graceful_timeout = 5

    async def until_signal() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                return

    async def main() -> None:
        await serve(app, config, shutdown_trigger=until_signal)

    anyio.run(main, backend="asyncio")


@dataclass
class StubProcess:
    """A billing stub running in its own process (see `spawn`)."""

    proc: subprocess.Popen
    url: str

    def stop(self, timeout_s: float = 10) -> None:
        """SIGTERM (a graceful stop), SIGKILL if it has not exited within `timeout_s`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (another process may still take it first)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def spawn(
    latency_ms: float = 20,
    *args: str,
    port: int | None = None,
    ready_s: float = 10.0,
    **popen: Any,
) -> StubProcess:
    """Start the stub in a child process (`args` are more CLI flags, `popen` goes to Popen) on
    `port` or a free one, and return once it accepts connections. Blocking: call it before the
    event loop starts, or through a thread offload."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "analytics.billing.stub", "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--latency-ms", str(latency_ms), *args], **popen)
    stub = StubProcess(proc, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return stub
        except OSError:
            time.sleep(0.05)
    stub.stop(timeout_s=2)
    raise RuntimeError(f"the billing stub did not start on port {port}")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8100, help="port (default 8100)")
    parser.add_argument(
        "--latency-ms", type=float, default=20, help="delay of every usage call (default 20)"
    )
    parser.add_argument(
        "--fail-rate", type=float, default=0.0, help="probability of a 503 (default 0.0)"
    )
    parser.add_argument("--state", type=Path, help="JSON file keeping state across restarts")
    parser.add_argument("--seed", type=int, help="seed of the failure RNG (reproducible runs)")


def _handler(args: argparse.Namespace) -> int:
    run_stub(
        args.host,
        args.port,
        args.latency_ms,
        args.fail_rate,
        state_path=args.state,
        seed=args.seed,
    )
    return 0


def add_billing_stub_command(subparsers: Any) -> None:
    """Registrar of `analytics billing-stub`."""
    p = subparsers.add_parser("billing-stub", help="run a stub of the billing service")
    _add_arguments(p)
    p.set_defaults(handler=_handler)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m analytics.billing.stub")
    _add_arguments(parser)
    raise SystemExit(_handler(parser.parse_args()))
