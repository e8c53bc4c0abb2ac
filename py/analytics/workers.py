"""Hypercorn's worker processes under supervision: a worker that dies is replaced.

Hypercorn's own `run()` stops every worker as soon as one dies and returns, so one crashed
(or OOM-killed) worker took the whole service down. Here `analytics serve` creates the
listening sockets once and hands them to every worker it starts itself, with Hypercorn's
worker function for the class (spawn context, as `run()` does). The sockets stay open in this
process, so while a replacement boots, new connections wait in the backlog instead of being
refused, and the other workers and their requests are never touched.

The contract of `Supervisor.run`:

- A worker that exits while the service is not stopping has died, whatever its status
  (`serve` sets no `max_requests`, so a worker has no reason to leave): it is logged (pid,
  exit code or signal, how long it lived), its Prometheus live gauges are dropped
  (`on_exit`), and a replacement starts after the delay `Restarts` gives.
- At the `RestartPolicy.crash_limit`-th crash (a worker dead before it had served for
  `healthy_after_s`) within `window_s` it gives up: one error line,
  the other workers are stopped as on SIGTERM, and `run` returns 1.
- SIGTERM or SIGINT: the workers are told to stop (they finish in-flight requests within
  Hypercorn's graceful timeout, then the app's lifespan commits what it accepted) and get
  `drain_timeout_s` to exit; a second signal, or the timeout, terminates them. `run` returns
  0 when every worker exited cleanly, else 1.

Sync code, no event loop: it runs in the parent process, before any loop exists. The
bookkeeping (`Restarts`) takes its clock as arguments, so it is tested without sleeping.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from typing import Any

from hypercorn.config import Config, Sockets

log = logging.getLogger("analytics.workers")


@dataclass(frozen=True)
class RestartPolicy:
    #: The first replacement waits this long; each further crash in a row doubles it...
    first_delay_s: float = 0.5
    #: ...up to this.
    max_delay_s: float = 10.0
    #: A worker that lived this long had booted and served (a boot takes about a second):
    #: its death is not a crash loop, so its replacement starts after `first_delay_s` and it
    #: does not count towards the crash budget. A worker OOM-killed or SIGKILLed every few
    #: seconds is replaced every time; one that cannot even boot makes the service give up.
    healthy_after_s: float = 3.0
    #: This many crashes (deaths before `healthy_after_s`) within `window_s`: give up.
    crash_limit: int = 5
    window_s: float = 60.0


class Restarts:
    """The bookkeeping of a `RestartPolicy`. Times are seconds on any monotonic clock.

    Backoff is per worker slot (a worker crashing in a loop does not slow the replacement of
    another one); the crash budget is shared by all of them (the service gives up when its
    workers as a whole keep dying).
    """

    def __init__(self, policy: RestartPolicy | None = None) -> None:
        self.policy = policy or RestartPolicy()
        self._crashes: deque[float] = deque()
        self._streaks: dict[int, int] = {}

    def crashed(self, slot: int, now: float, lived_s: float) -> float | None:
        """Records that the worker in `slot` died at `now` after `lived_s`; returns the delay
        before its replacement starts, or None when the crash budget is spent (give up)."""
        policy = self.policy
        while self._crashes and self._crashes[0] <= now - policy.window_s:
            self._crashes.popleft()
        if lived_s >= policy.healthy_after_s:
            self._streaks[slot] = 1
            return policy.first_delay_s
        self._crashes.append(now)
        if len(self._crashes) >= policy.crash_limit:
            return None
        streak = self._streaks.get(slot, 0)
        self._streaks[slot] = streak + 1
        return min(policy.max_delay_s, policy.first_delay_s * 2**streak)

    @property
    def in_window(self) -> int:
        """Crashes within the window that ends at the last one recorded."""
        return len(self._crashes)


class ShutdownSignal:
    """The workers' shutdown event: `set()` once here, `is_set()` polled by every worker
    (Hypercorn's `check_multiprocess_shutdown_event` calls only that, every 0.1 s).

    A pipe, not `multiprocessing.Event`: that is a lock and a semaphore, and a worker killed
    (SIGKILL) while polling it can die holding the lock, after which `set()` here and every
    other worker's `is_set()` block forever. Polling a pipe holds nothing. Setting it closes
    the write end, which every reader sees as readable; so does this process dying, and its
    orphaned workers then drain and exit instead of serving on unsupervised.
    """

    def __init__(self) -> None:
        self._reader, self._writer = get_context("spawn").Pipe(duplex=False)

    def set(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def is_set(self) -> bool:
        return self._reader.poll(0)

    def __getstate__(self) -> dict[str, Any]:
        # A worker gets the read end only: the write end must close when this process does.
        return {"_reader": self._reader, "_writer": None}


Spawn = Callable[[ShutdownSignal], BaseProcess]


def worker_function(worker_class: str) -> Callable[..., None]:
    """Hypercorn's worker function for `worker_class`, as `hypercorn.run.run` picks it."""
    if worker_class == "asyncio":
        from hypercorn.asyncio.run import asyncio_worker

        return asyncio_worker
    if worker_class == "uvloop":
        from hypercorn.asyncio.run import uvloop_worker

        return uvloop_worker
    if worker_class == "trio":
        from hypercorn.trio.run import trio_worker

        return trio_worker
    raise ValueError(f"no Hypercorn worker of class {worker_class!r}")


def run_worker(
    worker_class: str,
    setup: Callable[[], None] | None,
    config: Config,
    sockets: Sockets,
    shutdown: ShutdownSignal,
) -> None:
    """A worker process's entry point: `setup()` (process-wide preparation, before the app
    is loaded or any connection accepted), then Hypercorn's worker until `shutdown` is set."""
    if setup is not None:
        setup()
    worker_function(worker_class)(config=config, sockets=sockets, shutdown_event=shutdown)


def hypercorn_spawner(
    config: Config, sockets: Sockets, setup: Callable[[], None] | None = None
) -> Spawn:
    """A `Spawn` starting one Hypercorn worker of `config.worker_class` on `sockets` (a fresh
    interpreter: spawn context, so `config`, `sockets` and `setup` must pickle)."""
    worker_function(config.worker_class)  # an unknown class fails here, not in every child
    ctx = get_context("spawn")

    def spawn(shutdown: ShutdownSignal) -> BaseProcess:
        process = ctx.Process(
            target=run_worker,
            args=(config.worker_class, setup, config, sockets, shutdown),
            name="hypercorn worker",
        )
        # A worker inherits SIGINT ignored: Ctrl+C reaches the whole process group, and only
        # the supervisor decides how workers stop (through `shutdown`). Python leaves an
        # inherited SIG_IGN in place at start-up.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            process.start()
        finally:
            signal.signal(signal.SIGINT, previous)
        return process

    return spawn


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


@dataclass
class _Worker:
    slot: int
    process: BaseProcess
    started_at: float


class Supervisor:
    """Runs `workers` processes started by `spawn` until a signal, replacing dead ones."""

    #: After `terminate()`, how long a worker gets before SIGKILL.
    KILL_AFTER_S = 2.0

    def __init__(
        self,
        spawn: Spawn,
        workers: int,
        *,
        drain_timeout_s: float,
        policy: RestartPolicy | None = None,
        on_exit: Callable[[int], None] = lambda pid: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if workers < 1:
            raise ValueError("at least one worker")
        self.spawn = spawn
        self.workers = workers
        self.drain_timeout_s = drain_timeout_s
        self.restarts = Restarts(policy)
        self.on_exit = on_exit
        self.clock = clock
        self.shutdown = ShutdownSignal()
        self._running: list[_Worker] = []
        self._due: dict[int, float] = {}  # slot -> when its replacement starts
        self._gave_up = False
        self._stops = 0
        self._wake_r = self._wake_w = -1

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT (then 0 if the workers drained) or until the crash
        budget is spent (1). Installs its own SIGTERM and SIGINT handlers (main thread only)
        and restores the previous ones on return."""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        handlers = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for slot in range(self.workers):
                self._start(slot)
            while not self._stops and not self._gave_up:
                self._supervise_once()
            drained = self._stop()
            return 1 if self._gave_up or not drained else 0
        finally:
            self.shutdown.set()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            os.close(self._wake_r)
            os.close(self._wake_w)

    def stop(self) -> None:
        """What SIGTERM/SIGINT do (safe from a signal handler or another thread while `run`
        runs): the first call drains the workers, a second one terminates them."""
        self._stops += 1
        try:
            os.write(self._wake_w, b"\0")  # wakes the wait() in `run`
        except BlockingIOError:
            pass  # already full of wake-ups

    @property
    def pids(self) -> list[int]:
        """The running workers' process ids."""
        return [w.process.pid for w in self._running if w.process.pid is not None]

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop()

    def _supervise_once(self) -> None:
        """Start the replacements that are due, then wait for an exit, a signal or the next
        replacement's time."""
        now = self.clock()
        for slot, at in sorted(self._due.items()):
            if at <= now:
                del self._due[slot]
                self._start(slot)
        timeout = max(0.0, min(self._due.values()) - now) if self._due else None
        if self._gave_up:
            return
        self._wait(timeout)
        for worker in self._reap():
            lived_s = self.clock() - worker.started_at
            self._crashed(worker.slot, worker.process.pid, worker.process.exitcode, lived_s)

    def _start(self, slot: int) -> None:
        try:
            process = self.spawn(self.shutdown)
        except OSError as error:
            # E.g. the child died before it read its start-up data (a broken pipe): one crash
            # of the slot, as if the worker had died at once.
            log.error("worker failed to start: %s", error)
            self._crashed(slot, None, None, lived_s=0.0)
            return
        self._running.append(_Worker(slot, process, self.clock()))
        log.info("worker %s started", process.pid, extra={"pid": process.pid, "slot": slot})

    def _crashed(self, slot: int, pid: int | None, exitcode: int | None, lived_s: float) -> None:
        delay = self.restarts.crashed(slot, self.clock(), lived_s)
        policy = self.restarts.policy
        fields = {"pid": pid, "exitcode": exitcode, "lived_s": round(lived_s, 3)}
        if delay is None:
            self._gave_up = True
            log.error(
                "worker %s died (%s); giving up after %d worker crashes within %g s: stopping",
                pid,
                describe_exit(exitcode),
                self.restarts.in_window,
                policy.window_s,
                extra=fields,
            )
            return
        log.warning(
            "worker %s died (%s) after %.1f s; a replacement starts in %g s"
            " (crash %d of %d tolerated within %g s)",
            pid,
            describe_exit(exitcode),
            lived_s,
            delay,
            self.restarts.in_window,
            policy.crash_limit - 1,
            policy.window_s,
            extra={**fields, "restart_in_s": delay},
        )
        self._due[slot] = self.clock() + delay

    def _wait(self, timeout: float | None) -> None:
        """Until a worker exits, a signal arrives, or `timeout` passes."""
        wait([*(w.process.sentinel for w in self._running), self._wake_r], timeout)
        try:
            while os.read(self._wake_r, 64):
                pass
        except BlockingIOError:
            pass

    def _reap(self) -> list[_Worker]:
        """The workers that have exited (joined, gauges dropped), no longer running."""
        exited = [w for w in self._running if w.process.exitcode is not None]
        for worker in exited:
            self._running.remove(worker)
            worker.process.join()
            if worker.process.pid is not None:
                self.on_exit(worker.process.pid)
        return exited

    def _stop(self) -> bool:
        """Tell the workers to stop and wait for them; True if all exited cleanly in time."""
        self._due.clear()
        self.shutdown.set()
        stops = self._stops
        deadline = self.clock() + self.drain_timeout_s
        log.info(
            "stopping: %d worker(s) get %g s to drain", len(self._running), self.drain_timeout_s
        )
        clean = True
        while self._running and self._stops == stops:
            remaining = deadline - self.clock()
            if remaining <= 0:
                break
            self._wait(remaining)
            for worker in self._reap():
                if worker.process.exitcode != 0:
                    clean = False
                    log.warning(
                        "worker %s stopped with %s",
                        worker.process.pid,
                        describe_exit(worker.process.exitcode),
                    )
        if not self._running:
            return clean
        why = "a second stop (signal)" if self._stops != stops else "the drain timeout"
        log.warning("terminating %d worker(s) after %s", len(self._running), why)
        for worker in self._running:
            worker.process.terminate()
        deadline = self.clock() + self.KILL_AFTER_S
        while self._running and self.clock() < deadline:
            self._wait(deadline - self.clock())
            self._reap()
        for worker in self._running:
            worker.process.kill()
            worker.process.join()
        self._reap()
        return False
