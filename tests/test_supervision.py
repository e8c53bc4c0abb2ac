"""Worker supervision (`analytics.workers`): a dead worker is replaced, the others are left
alone, a crash loop ends in a non-zero exit, and a stop drains.

The restart policy runs on a fake clock; the supervisor itself on small forked processes;
then `analytics serve` for real, its Hypercorn workers killed with SIGKILL under traffic.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx2 as httpx
import pytest

from analytics.workers import RestartPolicy, Restarts, ShutdownSignal, Supervisor
from dbutil import fetch
from serverproc import (
    connection_owner,
    read_responses,
    running_server,
    wait_for_workers,
    worker_pids,
)

# -- the policy, on a fake clock ---------------------------------------------------------


def test_backoff_doubles_from_half_a_second_to_ten():
    restarts = Restarts(RestartPolicy(crash_limit=100))
    delays = [restarts.crashed(0, now=t, lived_s=1.0) for t in range(8)]
    assert delays == [0.5, 1, 2, 4, 8, 10, 10, 10]


def test_a_worker_that_had_served_is_replaced_soon_and_is_no_crash_loop():
    restarts = Restarts(RestartPolicy(crash_limit=100))
    assert [restarts.crashed(0, now=t, lived_s=2.0) for t in range(3)] == [0.5, 1, 2]
    assert restarts.in_window == 3
    assert restarts.crashed(0, now=40, lived_s=3.0) == 0.5
    assert restarts.in_window == 3  # not a crash: it had booted and served
    assert restarts.crashed(0, now=41, lived_s=1.0) == 1


def test_workers_killed_every_few_seconds_are_replaced_every_time():
    """An OOM killer or an operator's kill every 5-10 s is no reason to give up."""
    restarts = Restarts()
    assert all(restarts.crashed(0, now=5.0 * i, lived_s=4.5) == 0.5 for i in range(50))


def test_backoff_is_per_slot():
    restarts = Restarts(RestartPolicy(crash_limit=100))
    assert [restarts.crashed(0, now=t, lived_s=1.0) for t in range(3)] == [0.5, 1, 2]
    assert restarts.crashed(1, now=3, lived_s=1.0) == 0.5


def test_the_fifth_crash_within_60_s_gives_up():
    restarts = Restarts()
    assert all(restarts.crashed(i % 2, now=10.0 * i, lived_s=0.1) for i in range(4))
    assert restarts.crashed(0, now=40, lived_s=0.1) is None


def test_crashes_older_than_the_window_no_longer_count():
    restarts = Restarts()
    for t in (0, 1, 2, 3):
        assert restarts.crashed(0, now=t, lived_s=0.1) is not None
    # At 60.5 the crash at 0 has left the window: four in it, one short of the limit.
    assert restarts.crashed(0, now=60.5, lived_s=0.1) is not None
    assert restarts.in_window == 4
    assert restarts.crashed(0, now=61.5, lived_s=0.1) is not None
    assert restarts.crashed(0, now=61.6, lived_s=0.1) is None


# -- the supervisor, on small processes ----------------------------------------------------


def _serve_until_shutdown(shutdown: ShutdownSignal) -> None:
    while not shutdown.is_set():
        time.sleep(0.01)


def _ignore_shutdown(shutdown: ShutdownSignal) -> None:
    time.sleep(60)


def _exit_3(shutdown: ShutdownSignal) -> None:
    sys.exit(3)


def spawning(target: Callable[[ShutdownSignal], None]):
    """A `Spawn` starting `target` as `hypercorn_spawner` starts a worker (spawn context, so
    the child gets the shutdown signal pickled, as a Hypercorn worker does)."""
    ctx = multiprocessing.get_context("spawn")

    def spawn(shutdown: ShutdownSignal):
        process = ctx.Process(target=target, args=(shutdown,), daemon=True)
        process.start()
        return process

    return spawn


def until(predicate: Callable[[], object], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def supervise(supervisor: Supervisor, script: Callable[[], None], timeout_s: float = 30) -> int:
    """`supervisor.run()` here (it wants the main thread) while `script` drives it from a
    thread; a failing or hanging script still stops it."""
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            script()
        except BaseException as error:
            errors.append(error)
            supervisor.stop()
            supervisor.stop()

    watchdog = threading.Timer(timeout_s, lambda: (supervisor.stop(), supervisor.stop()))
    driver = threading.Thread(target=drive)
    watchdog.start()
    driver.start()
    try:
        code = supervisor.run()
    finally:
        watchdog.cancel()
        driver.join(timeout_s)
    if errors:
        raise errors[0]
    return code


FAST = RestartPolicy(first_delay_s=0.05, max_delay_s=0.2)


def test_a_dead_worker_is_replaced_and_the_others_are_left_alone():
    exited: list[int] = []
    supervisor = Supervisor(
        spawning(_serve_until_shutdown), 3, drain_timeout_s=5, policy=FAST, on_exit=exited.append
    )
    before: list[int] = []

    def script() -> None:
        until(lambda: len(supervisor.pids) == 3)
        before.extend(supervisor.pids)
        os.kill(before[0], signal.SIGKILL)
        until(lambda: len(supervisor.pids) == 3 and before[0] not in supervisor.pids)
        assert set(before[1:]) <= set(supervisor.pids)
        assert exited == [before[0]]  # its live gauges dropped, no one else's
        supervisor.stop()

    assert supervise(supervisor, script) == 0
    assert len(exited) == 4 and set(before) <= set(exited)


def test_a_worker_that_keeps_dying_makes_the_supervisor_give_up(caplog):
    exited: list[int] = []
    policy = RestartPolicy(first_delay_s=0.01, crash_limit=3)
    supervisor = Supervisor(
        spawning(_exit_3), 1, drain_timeout_s=5, policy=policy, on_exit=exited.append
    )
    with caplog.at_level(logging.INFO, logger="analytics.workers"):
        assert supervise(supervisor, lambda: None) == 1
    assert len(exited) == 3
    assert [r.exitcode for r in caplog.records if r.levelno == logging.WARNING] == [3, 3]
    (last,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "exit code 3" in last and "giving up after 3 worker crashes within 60 s" in last


def test_a_worker_that_does_not_drain_is_terminated_after_the_timeout():
    supervisor = Supervisor(spawning(_ignore_shutdown), 1, drain_timeout_s=0.3)
    pids: list[int] = []

    def script() -> None:
        until(lambda: supervisor.pids)
        pids.extend(supervisor.pids)
        supervisor.stop()

    started = time.monotonic()
    assert supervise(supervisor, script) == 1  # not drained: terminated
    # 0.3 s of drain, then SIGTERM: well under KILL_AFTER_S more even on a loaded machine.
    assert time.monotonic() - started < 0.3 + Supervisor.KILL_AFTER_S
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)


def test_a_second_stop_terminates_at_once():
    supervisor = Supervisor(spawning(_ignore_shutdown), 1, drain_timeout_s=60)

    def script() -> None:
        until(lambda: supervisor.pids)
        supervisor.stop()
        time.sleep(0.2)
        supervisor.stop()

    started = time.monotonic()
    assert supervise(supervisor, script) == 1
    assert time.monotonic() - started < 10  # not the 60 s drain


def test_the_shutdown_signal_reaches_a_spawned_worker():
    """The worker gets the read end only: were the write end pickled along, the pipe would
    stay open in the worker and it would never see the signal (nor the supervisor dying)."""
    ctx = multiprocessing.get_context("spawn")
    shutdown = ShutdownSignal()
    child = ctx.Process(target=_serve_until_shutdown, args=(shutdown,))
    child.start()
    try:
        time.sleep(0.3)
        assert child.exitcode is None and not shutdown.is_set()
        shutdown.set()
        child.join(10)
        assert child.exitcode == 0
    finally:
        child.kill()


# -- `analytics serve`, its Hypercorn workers killed -----------------------------------------


def batch(prefix: str, n: int) -> bytes:
    now_ms = int(time.time() * 1000)
    events = [{"name": "kill", "event_id": f"{prefix}-{i}", "ts": now_ms} for i in range(n)]
    return json.dumps({"events": events}).encode()


class Producer(threading.Thread):
    """Streams batches until stopped; a batch that was not acknowledged (the connection
    broke with its worker, or a 5xx) is retried as it was, so a retry can only be a
    duplicate. `acked` holds every event id the server acknowledged."""

    def __init__(self, base: str, headers: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.base, self.headers = base, headers
        self.acked: list[str] = []
        self.failures: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        seq = 0
        with httpx.Client(base_url=self.base, timeout=10) as client:
            while not self.stopping.is_set():
                prefix = f"p{seq}"
                seq += 1
                while not self.stopping.is_set():
                    try:
                        r = client.post(
                            "/v1/batch", content=batch(prefix, 20), headers=self.headers
                        )
                    except httpx.TransportError as error:
                        self.failures.append(repr(error))
                        time.sleep(0.02)
                        continue
                    if r.status_code == 200:
                        self.acked.extend(f"{prefix}-{i}" for i in range(20))
                        break
                    self.failures.append(f"{r.status_code} {r.text}")
                    time.sleep(0.05)


def write_headers(server) -> dict[str, str]:
    return {**server.headers("write"), "Content-Type": "application/json"}


def live_gauge_files(prometheus: Path, pid: int) -> list[str]:
    return [p.name for p in prometheus.glob(f"gauge_live*_{pid}.db")]


def test_a_killed_worker_is_replaced_and_no_acknowledged_event_is_lost(blank_dsn, tmp_path):
    with running_server(blank_dsn, ANALYTICS_DATA_DIR=str(tmp_path)) as server:
        (worker,) = wait_for_workers(server, 1)
        producer = Producer(server.base, write_headers(server))
        producer.start()
        until(lambda: len(producer.acked) >= 200)
        assert live_gauge_files(tmp_path / "prometheus", worker)  # in flight, inbox depth...
        os.kill(worker, signal.SIGKILL)
        killed_at = time.monotonic()
        (replacement,) = wait_for_workers(server, 1, without=[worker])
        # The dead worker's live gauges are dropped (its in-flight requests are not).
        assert live_gauge_files(tmp_path / "prometheus", worker) == []
        acked_at_kill = len(producer.acked)
        # Serving again: 0.5 s of backoff and a worker's start (about a second when idle);
        # 15 s leaves room for a machine whose cores are all busy.
        until(lambda: len(producer.acked) > acked_at_kill + 100, timeout_s=15)
        recovered_s = time.monotonic() - killed_at
        producer.stopping.set()
        producer.join(15)
        assert server.proc.poll() is None  # serve is still up
        assert server.stop() == 0
    assert recovered_s < 15
    log = "".join(server.output)
    assert f"worker {worker} died (killed by SIGKILL)" in log
    assert f"worker {replacement} started" in log
    rows = fetch(blank_dsn, "SELECT event_id, count(*) AS n FROM events GROUP BY event_id")
    stored = {r["event_id"]: r["n"] for r in rows}
    assert set(producer.acked) <= set(stored)  # every acknowledged event is there
    assert all(n == 1 for n in stored.values())  # retries counted once


def test_the_other_worker_and_its_request_in_flight_are_untouched(blank_dsn, tmp_path):
    # The in-flight request waits for the rest of its body meanwhile: a long request deadline.
    env = {"ANALYTICS_REQUEST_TIMEOUT_S": "20", "ANALYTICS_DATA_DIR": str(tmp_path)}
    with running_server(blank_dsn, "--workers", "2", **env) as server:
        pids = wait_for_workers(server, 2)
        event = json.dumps({"name": "flight", "event_id": uuid.uuid4().hex}).encode()
        head = (
            f"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {server.keys['write']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(event)}\r\n\r\n"
        ).encode()
        port = int(server.base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(head + event[:10])  # in flight: the rest of the body comes later
            owner = None
            deadline = time.monotonic() + 10
            while owner is None and time.monotonic() < deadline:
                owner = connection_owner(server, client)
                time.sleep(0.01)
            assert owner in pids
            (other,) = set(pids) - {owner}
            os.kill(other, signal.SIGKILL)
            survivors = wait_for_workers(server, 2, without=[other])
            assert owner in survivors
            client.sendall(event[10:])
            (response,), _ = read_responses(client, count=1, timeout_s=10)
        assert (response.status, json.loads(response.body)["accepted"]) == (200, 1)
        server.proc.send_signal(signal.SIGINT)  # Ctrl+C: workers ignore it, serve drains
        assert server.proc.wait(20) == 0
    log = "".join(server.output)
    assert f"worker {other} died (killed by SIGKILL)" in log
    assert f"worker {owner} died" not in log


def test_a_kill_loop_past_the_crash_budget_makes_serve_exit_non_zero(blank_dsn, tmp_path):
    """Five crashes within 60 s: between them the replacements wait 0.5 + 1 + 2 + 4 s."""
    with running_server(blank_dsn, ANALYTICS_DATA_DIR=str(tmp_path)) as server:
        seen: dict[int, float] = {}  # worker pid -> when it was first seen
        killed: list[int] = []
        deadline = time.monotonic() + 60
        while server.proc.poll() is None and time.monotonic() < deadline:
            for pid in worker_pids(server):
                seen.setdefault(pid, time.monotonic())
                # Killed while it boots, but only once the supervisor has handed it its
                # start-up data (a child dead before that is a failed start, not a kill).
                if pid not in killed and time.monotonic() - seen[pid] > 0.1:
                    killed.append(pid)
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        assert server.proc.wait(20) == 1
    assert len(killed) == 5
    log = "".join(server.output)
    assert "giving up after 5 worker crashes within 60 s" in log
