"""The loop watchdog: says at once that the event loop is stalled, and which line did it.

A heartbeat task on the loop stamps the time every `interval`. A daemon thread watches the
deadline: when a tick is more than `threshold` late, the loop is blocked, and the thread
captures the loop thread's Python stack *while it is still blocked* (`sys._current_frames()`).
When the heartbeat resumes, the stall gets its full duration. Waiting for I/O is not a stall
(the heartbeat runs while the loop idles), nor is a busy loop whose tasks yield (the
heartbeat gets its turn every loop iteration).

The thread costs a healthy loop nothing: on Linux it sleeps on a timerfd that each heartbeat
pushes back, so it wakes (and takes the GIL) only when a deadline is missed.

The thread can look at the loop only once it holds the GIL, so what it sees is not always
the blocking line: a stall just over the threshold may be over by the time it is woken and
handed the GIL (the interpreter hands it over after its switch interval, 5 ms), C code
holding the GIL keeps it out until the end, and C code with no Python caller (uvloop's own
loop, a C function run as a callback, the selector's wait) leaves only the runner's frame on
the loop thread. The reports say which it was (`Stall.seen`, `stalls.StallTracker`) instead
of naming the runner's line or "<stack not captured>".

When C code holds the GIL, no Python thread can run, the watchdog's included. For that case
faulthandler's C-level timer stays armed, pushed back by the heartbeat (and by the watchdog
thread during a stall); when neither can run for long enough, faulthandler (which needs no
GIL) writes every thread's stack to a file.

This is the one module of the watchdog that knows an event loop (anyio: asyncio, uvloop or
trio): the heartbeat task, the thread, and `watch_loop`, the app's wiring to Prometheus.
What they drive imports none: the rules and records in `stalls` (`StallTracker`), the
request lookup in `request_context`, the timerfd in `deadline_timer`, the buckets in
`histogram`.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import math
import os
import select
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType, TracebackType
from typing import TextIO

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup

from analytics.runtime import prometheus
from analytics.runtime.deadline_timer import DeadlineTimer
from analytics.runtime.histogram import Histogram
from analytics.runtime.stalls import (
    Clock,
    ContextFn,
    OnLag,
    OnStall,
    Stall,
    StallGroup,
    StallTracker,
)
from analytics.settings import Settings

#: The logger of the stall reports (`loop_stall` records) of every LoopWatchdog by default.
log = logging.getLogger(__name__)

_fallback_owner: object | None = None  # faulthandler's timer is process-global


def c_fallback_in_use() -> bool:
    """Whether some LoopWatchdog in this process already owns faulthandler's timer."""
    return _fallback_owner is not None


class LoopWatchdog:
    """`async with LoopWatchdog() as wd:` watches the running loop (asyncio, uvloop or trio)
    for as long as the block runs.

    Entering starts a heartbeat task (in a task group the watchdog owns) and a daemon thread;
    exiting cancels the heartbeat, wakes the thread and waits (shielded, in a worker thread)
    until it has flushed its last reports and exited, and cancels the faulthandler timer. Stall
    reports (see `StallTracker`) come from the thread, never from the loop; the loop side
    makes no blocking call.

    `threshold`: a heartbeat later than this is a stall. `interval`: the heartbeat period.
    A stall is detected at most `threshold + interval` after the loop blocked, plus the
    thread's wake-up latency. On Linux the thread sleeps on a `DeadlineTimer` the heartbeat
    pushes back each tick, so it wakes only for stalls; elsewhere it wakes at each deadline.

    Observers, besides the watchdog's own records (`lag`, `stall_durations`, `stalls`,
    `groups`, which are the tracker's): `on_lag(seconds)` gets every tick's lag, on the loop
    thread inside the heartbeat, so it must not block (a Prometheus histogram's `observe`);
    `on_stall(stall)` gets every stall as it starts and as it ends, in the watchdog thread.
    `context(frame)` is called in the watchdog thread with the blocked loop thread's innermost
    frame; a `RequestContext` is such a callable.

    `clock`: what lag and stalls are measured on (default `time.monotonic`). The heartbeat's
    sleeps, the deadline timer and faulthandler run on real time whatever it is. A clock
    slower than that, such as the loop thread's CPU time (which leaves out the time the OS kept
    the thread off a core), still counts every late tick as a stall, but the thread may see
    a stall only when it has ended, without a stack.

    `c_fallback`: keep `faulthandler.dump_traceback_later(c_fallback_timeout, repeat=True)`
    armed, re-armed every timeout/4 by the heartbeat and, during a stall, by the watchdog
    thread. If neither can run for about `c_fallback_timeout` (default
    `max(4 * threshold, 1 s)`) — C code holding the GIL — faulthandler's own C thread writes
    all threads' stacks to `c_fallback_file` (default `sys.stderr`; it needs a real file
    descriptor), every timeout until the GIL is free. The timer is process-global: one
    watchdog per process may own it; entering a second with `c_fallback=True` raises
    RuntimeError.
    """

    def __init__(
        self,
        threshold: float = 0.05,
        interval: float = 0.01,
        on_stall: OnStall | None = None,
        context: ContextFn | None = None,
        *,
        on_lag: OnLag | None = None,
        clock: Clock = time.monotonic,
        log_every: float = 60.0,
        keep: int = 1000,
        c_fallback: bool = True,
        c_fallback_timeout: float | None = None,
        c_fallback_file: TextIO | None = None,
        logger: logging.Logger = log,
    ) -> None:
        self.tracker = StallTracker(
            threshold,
            interval,
            on_stall=on_stall,
            on_lag=on_lag,
            context=context,
            log_every=log_every,
            keep=keep,
            logger=logger,
            clock=clock,
        )
        self.threshold, self.interval = threshold, interval
        self.c_fallback = c_fallback
        self.c_fallback_timeout = c_fallback_timeout or max(4 * threshold, 1.0)
        self.c_fallback_file = c_fallback_file
        self._fallback: TextIO | None = None
        self._rearm_at = -math.inf
        self._timer: DeadlineTimer | None = None
        self._wake: tuple[int, int] | None = None  # a pipe: wakes the thread to report or stop
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._tg: TaskGroup | None = None

    @property
    def lag(self) -> Histogram:
        """Every tick's lag (the tracker's histogram: there is one)."""
        return self.tracker.lag

    @property
    def stall_durations(self) -> Histogram:
        return self.tracker.stall_durations

    @property
    def stalls(self) -> list[Stall]:
        """The latest stalls, oldest first (the tracker keeps `keep` of them)."""
        return self.tracker.stalls

    @property
    def groups(self) -> dict[str, StallGroup]:
        """Stalls merged by stack signature."""
        return self.tracker.groups

    @property
    def stalls_total(self) -> int:
        return self.tracker.stalls_total

    @property
    def in_stall(self) -> bool:
        return self.tracker.in_stall

    async def __aenter__(self) -> LoopWatchdog:
        global _fallback_owner
        if self._wake is not None:
            raise RuntimeError("a LoopWatchdog can be entered once")
        if self.c_fallback:
            if _fallback_owner is not None:
                raise RuntimeError("another LoopWatchdog owns faulthandler's timer")
            self._fallback = _fileno_file(self.c_fallback_file or sys.stderr)
            _fallback_owner = self
        self._wake = os.pipe()
        for fd in self._wake:
            os.set_blocking(fd, False)
        self._timer = DeadlineTimer.create(self.interval + self.threshold)
        self._thread = threading.Thread(
            target=self._watch, args=(threading.get_ident(),), name="loop-watchdog", daemon=True
        )
        self.tracker.reset()
        if self._timer is not None:
            self._timer.push()
        self._rearm_fallback()
        self._thread.start()
        self._tg = anyio.create_task_group()
        try:
            await self._tg.__aenter__()
        except BaseException:
            await self._stop()
            raise
        self._tg.start_soon(self._heartbeat, name="loop-watchdog-heartbeat")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        try:
            # The body's exception is not the task group's: it passes through unwrapped.
            await self._tg.__aexit__(None, None, None)
            self.tracker.beat()  # the loop runs: end a stall the heartbeat had no tick to end
        finally:
            await self._stop()

    async def _stop(self) -> None:
        global _fallback_owner
        assert self._wake is not None and self._thread is not None
        self._stopping = True
        self._wake_thread()
        with anyio.CancelScope(shield=True):  # the thread must be gone before its fds close
            # It exits at once, but joining a thread is a blocking call: off the loop.
            await anyio.to_thread.run_sync(self._thread.join)
        for fd in self._wake:
            os.close(fd)
        if self._timer is not None:
            self._timer.close()
        if self._fallback is not None:
            faulthandler.cancel_dump_traceback_later()
            _fallback_owner = None

    async def _heartbeat(self) -> None:
        tick, interval = self._tick, self.interval
        while True:
            await anyio.sleep(interval)
            tick()

    def _tick(self) -> None:
        """Loop thread, each `interval`: a beat, the deadline timer pushed back, faulthandler
        re-armed when due. About 2 us; ~40 us more when faulthandler is re-armed (it restarts
        its C thread), which happens every `c_fallback_timeout / 4`."""
        if self.tracker.beat():
            self._wake_thread()  # to report the stall that just ended
        if self._timer is not None:
            self._timer.push()
        self._rearm_fallback()

    def _rearm_fallback(self) -> None:
        if self._fallback is not None:
            now = time.monotonic()
            if now >= self._rearm_at:
                self._rearm_at = now + self.c_fallback_timeout / 4
                faulthandler.dump_traceback_later(
                    self.c_fallback_timeout, repeat=True, file=self._fallback
                )

    def _wake_thread(self) -> None:
        assert self._wake is not None
        with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending anyway
            os.write(self._wake[1], b"\0")

    def _watch(self, loop_thread: int) -> None:
        """The watchdog thread: sleeps (GIL released) until the deadline timer expires, a
        report is due or `_stop` wakes it; polls every `interval` during a stall."""
        assert self._wake is not None

        def frame_of_loop() -> FrameType | None:
            return sys._current_frames().get(loop_thread)

        wake, timer, tracker = self._wake[0], self._timer, self.tracker
        poller = select.poll()
        poller.register(wake, select.POLLIN)
        if timer is not None:
            poller.register(timer.fd, select.POLLIN)
        while not self._stopping:
            wait: float | None = tracker.poll(frame_of_loop)
            if tracker.current is not None:
                self._rearm_fallback()  # the thread runs, so the GIL is free: no C-level dump
            elif timer is not None:
                wait = None  # until the timer expires: the heartbeat missed its deadline
            for fd, _ in poller.poll(None if wait is None else wait * 1000):
                if timer is not None and fd == timer.fd:
                    timer.clear()
                else:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake, 512)
        tracker.poll(None)


def _fileno_file(file: TextIO) -> TextIO:
    """`file` if faulthandler can write to it, else the process's real stderr (test runners
    replace `sys.stderr` with objects that have no file descriptor)."""
    try:
        file.fileno()
    except (AttributeError, OSError, ValueError):
        if sys.__stderr__ is None:
            raise
        return sys.__stderr__
    return file


def _export_stall(stall: Stall) -> None:
    """`on_stall`, in the watchdog thread: Prometheus' counters are thread-safe."""
    if stall.ended:
        prometheus.loop_stalls.inc()
        prometheus.loop_stall_duration.observe(stall.duration)
        prometheus.loop_stalled.set(0)
    else:
        prometheus.loop_stalled.set(1)


@asynccontextmanager
async def watch_loop(settings: Settings, context: ContextFn) -> AsyncIterator[LoopWatchdog | None]:
    """The loop watchdog for an app's lifetime (None when disabled), its stall reports naming
    the request `context` (a `RequestContext`) says is being served, its figures exported to
    Prometheus: every tick's lag through `on_lag`, every stall through `on_stall`."""
    if not settings.watchdog_enabled:
        yield None
        return
    async with LoopWatchdog(
        threshold=settings.watchdog_threshold_s,
        interval=settings.watchdog_interval_s,
        on_stall=_export_stall,
        on_lag=prometheus.loop_lag.observe,
        context=context,
        c_fallback=settings.watchdog_c_fallback and not c_fallback_in_use(),
    ) as wd:
        yield wd
