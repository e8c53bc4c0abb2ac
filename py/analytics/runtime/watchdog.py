"""The loop watchdog: says at once that the event loop is stalled, and which line did it.

A heartbeat task on the loop stamps `time.monotonic()` every `interval`. A daemon thread
watches the deadline: when a tick is more than `threshold` late, the loop is blocked, and the
thread captures the loop thread's Python stack *while it is still blocked*
(`sys._current_frames()`). When the heartbeat resumes, the stall gets its full duration.
Waiting for I/O is not a stall (the heartbeat runs while the loop idles), nor is a busy loop
whose tasks yield (the heartbeat gets its turn every loop iteration).

The thread costs a healthy loop nothing: on Linux it sleeps on a timerfd that each heartbeat
pushes back, so it wakes (and takes the GIL) only when a deadline is missed.

When C code holds the GIL, no Python thread can run, the watchdog's included. For that case
faulthandler's C-level timer stays armed, pushed back by the heartbeat (and by the watchdog
thread during a stall); when neither can run for long enough, faulthandler (which needs no
GIL) writes every thread's stack to a file.

Everything but `LoopWatchdog` is plain bookkeeping that imports no event loop: `Histogram`,
`Stall`, `StallGroup`, `StallTracker` (detection, merge by stack signature, rate-limited logs)
and `RequestContext` (which request the blocked code serves).
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import hashlib
import logging
import math
import os
import select
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from traceback import FrameSummary
from types import FrameType, TracebackType
from typing import Any, TextIO

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup

from analytics.runtime import metrics
from analytics.runtime.histogram import Histogram
from analytics.settings import Settings

log = logging.getLogger(__name__)

#: Frames whose file lives under this directory are ours, and are marked in stall reports.
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


@dataclass(eq=False)
class Stall:
    """One stall of the loop. Written by the watchdog and the heartbeat, read by anyone.

    `started_at` (monotonic) is when the missed heartbeat was due; `detected_at` when the
    watchdog thread saw it missed and took `stack` (innermost frame last) from the blocked loop
    thread. `duration` is the time the heartbeat was late: so far while in progress, final once
    `ended` (for a loop blocked `d` seconds, between `d - interval` and `d`).

    A `detected_at - started_at` much larger than the threshold means the watchdog thread
    could not run either (C code holding the GIL): the stack then shows where the loop was
    after the blocking call, and the faulthandler file holds the truth. An empty `stack` means
    the thread never saw the stall, only the heartbeat when it ended. `context` is what the
    `context` callable said about the blocked request. `logged` tells whether the rate limit
    let this stall's log records through.
    """

    started_at: float
    detected_at: float
    stack: list[FrameSummary]
    context: dict[str, Any]
    signature: str
    logged: bool = False
    final_duration: float | None = None

    @property
    def ended(self) -> bool:
        return self.final_duration is not None

    @property
    def duration(self) -> float:
        final = self.final_duration
        return final if final is not None else time.monotonic() - self.started_at


@dataclass(eq=False)
class StallGroup:
    """Stalls with identical stacks, merged: how often, how long, and the log rate limit."""

    signature: str
    stack: list[FrameSummary]
    count: int = 0
    total_s: float = 0.0
    max_s: float = 0.0
    logged_at: float = -math.inf
    suppressed: int = 0


def is_own(filename: str) -> bool:
    """Whether a frame's file belongs to the analytics package."""
    return filename.startswith(PACKAGE_DIR)


def stack_signature(stack: list[FrameSummary]) -> str:
    """A short stable id of a stack: equal for stalls at the same lines through the same calls."""
    text = "\n".join(f"{f.filename}:{f.lineno}:{f.name}" for f in stack)
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def stack_fields(stack: list[FrameSummary]) -> list[dict[str, Any]]:
    """The stack as JSON-ready dicts, innermost last, with our own frames marked `ours`.
    Reads source lines through `linecache` (file I/O: call it off the loop)."""
    return [
        {
            "file": f.filename,
            "line": f.lineno,
            "func": f.name,
            "code": f.line,
            "ours": is_own(f.filename),
        }
        for f in stack
    ]


def culprit(stack: list[FrameSummary]) -> str:
    """The innermost frame of ours (else the innermost frame) as `file:line in func`."""
    frames = [f for f in stack if is_own(f.filename)] or stack
    if not frames:
        return "<stack not captured>"
    f = frames[-1]
    return f"{f.filename}:{f.lineno} in {f.name}"


class RequestContext:
    """Which request the loop is serving, readable from the watchdog thread.

    Many requests interleave on one loop, so a single "current request" slot names the wrong
    one whenever a request blocks after an `await`. Instead each request ties its fields to
    its own coroutine frame, and the watchdog looks for such frames on the blocked stack:

        request_context.enter(request_id=rid, route=route, scenario=scenario)
        try:
            await app(scope, receive, send)
        finally:
            request_context.exit()  # from the same function as `enter`

    or `with request_context.bind(...):`. Do it in the task that runs the handler (a pure
    ASGI middleware); Starlette's `BaseHTTPMiddleware` runs the app in another task, whose
    stack does not include the middleware's frame. `enter`/`exit` are plain dict operations
    on the loop thread; the lookup (`__call__`, in the watchdog thread) only reads the dict.
    """

    def __init__(self) -> None:
        self._by_frame: dict[int, dict[str, Any]] = {}

    def enter(self, **fields: Any) -> None:
        # Keyed by the caller's frame: a live frame's id is unique, and `exit` pops it.
        self._by_frame[id(sys._getframe(1))] = fields

    def exit(self) -> None:
        self._by_frame.pop(id(sys._getframe(1)), None)

    @contextlib.contextmanager
    def bind(self, **fields: Any) -> Iterator[None]:
        key = id(sys._getframe(2))  # the frame running the `with` (1 is contextmanager's)
        self._by_frame[key] = fields
        try:
            yield
        finally:
            self._by_frame.pop(key, None)

    def __call__(self, frame: FrameType) -> dict[str, Any]:
        """The fields tied to the innermost such frame in `frame`'s chain, or `{}`."""
        f: FrameType | None = frame
        while f is not None:
            fields = self._by_frame.get(id(f))
            if fields is not None:
                return dict(fields)
            f = f.f_back
        return {}


OnStall = Callable[[Stall], None]
ContextFn = Callable[[FrameType], dict[str, Any]]


class StallTracker:
    """Detection and bookkeeping, shared by the heartbeat (loop thread) and the watchdog thread.

    The heartbeat calls `beat()` each tick: it stamps the time, records the tick's lag and,
    when the tick was late (or a stall is in progress), queues it for the thread; that is all
    it does, so the loop never waits for a lock, never does I/O. The watchdog thread calls
    `poll()`: it ends stalls with the late ticks queued (or records the ones it never saw),
    detects a missed deadline and captures the stack, and reports (logs, `on_stall`). All the
    bookkeeping and I/O happen in `poll`, on that one thread.

    Logs: a `loop_stall` warning when a stall is detected (`phase="started"`, the duration so
    far) and another when it ends (`phase="ended"`, the full duration), with `extra` fields
    `event, phase, duration_s, detected_after_s, threshold_s, signature, count, suppressed,
    culprit, stack, context`. Per signature at most one stall is logged each `log_every`
    seconds; `suppressed` counts those skipped since the last one logged. `on_stall` is called
    for every stall (logged or not) at both phases, in the watchdog thread: keep it quick and
    thread-safe. `stalls` keeps the latest `keep` stalls; `stalls_total` counts all.
    """

    def __init__(
        self,
        threshold: float,
        interval: float,
        *,
        on_stall: OnStall | None = None,
        context: ContextFn | None = None,
        log_every: float = 60.0,
        keep: int = 1000,
        logger: logging.Logger = log,
    ) -> None:
        if threshold <= 0 or interval <= 0:
            raise ValueError("threshold and interval must be positive")
        self.threshold, self.interval = threshold, interval
        self.on_stall, self.context, self.log_every, self.keep = on_stall, context, log_every, keep
        self.logger = logger
        self.lag = Histogram()  # every tick: actual interval minus expected (never negative)
        self.stall_durations = Histogram()  # every stall's full duration
        self.stalls: list[Stall] = []
        self.groups: dict[str, StallGroup] = {}
        self.stalls_total = 0
        self.current: Stall | None = None  # set and cleared by `poll` only
        self._beat = time.monotonic()
        self._late: deque[tuple[float, float, float]] = deque()  # (prev beat, beat, lag)
        self._current_beat = math.nan  # the last beat before `current` began
        self._ended_beat = math.nan  # the same, for the last stall ended

    @property
    def in_stall(self) -> bool:
        """From detection until the watchdog thread has seen the heartbeat resume."""
        current = self.current
        return current is not None and not current.ended

    def reset(self) -> None:
        """Start the clock: the next beat is due `interval` from now."""
        self._beat = time.monotonic()

    def beat(self) -> bool:
        """One heartbeat (loop thread). True when it queued a tick for `poll`: wake the thread.
        Never blocks: a clock read, a histogram update, at most a `deque.append`."""
        now = time.monotonic()
        prev, self._beat = self._beat, now
        lag = now - prev - self.interval
        self.lag.observe(lag if lag > 0.0 else 0.0)
        if lag > self.threshold or self.current is not None:
            self._late.append((prev, now, lag))
            return True
        return False

    def poll(self, frame_of_loop: Callable[[], FrameType | None] | None) -> float:
        """One watchdog check (watchdog thread): end, detect, capture, report. Returns how long
        to wait before the next check: until the deadline, or `interval` during a stall.
        With `frame_of_loop=None` it detects nothing new (a final flush)."""
        reports: list[tuple[Stall, str]] = []
        while self._late:
            prev, at, lag = self._late.popleft()
            if self.current is not None and prev == self._current_beat:
                reports.append((self._finish(self.current, lag), "ended"))
            elif lag > self.threshold and prev != self._ended_beat:
                # Late, yet the thread never saw it: it could not run (C code held the GIL).
                reports.append((self._finish(self._open(prev, at, [], {}), lag), "ended"))
        now, beat = time.monotonic(), self._beat
        deadline = beat + self.interval + self.threshold
        if self.current is None:
            if frame_of_loop is not None and now > deadline:
                self.current = self._open(beat, now, *self._capture(frame_of_loop()))
                reports.append((self.current, "started"))
        elif beat != self._current_beat and not self._late:
            # The loop beat again but queued no tick for this stall: it checked `current` just
            # before this thread set it. That tick (whose stamp is `beat`) ended the stall.
            reports.append((self._finish(self.current, beat - self.current.started_at), "ended"))
        for stall, phase in reports:
            self._report(stall, phase)
        return self.interval if self.current is not None else max(deadline - now, 0.0)

    def _capture(self, frame: FrameType | None) -> tuple[list[FrameSummary], dict[str, Any]]:
        if frame is None:
            return [], {}
        stack = traceback.StackSummary.extract(traceback.walk_stack(frame), lookup_lines=False)
        ctx: dict[str, Any] = {}
        if self.context is not None:
            try:
                ctx = self.context(frame)
            except Exception as e:  # a broken hook must not stop the watchdog
                ctx = {"context_error": repr(e)}
        return stack[::-1], ctx  # walk_stack goes outward; innermost last, as usual

    def _open(self, beat: float, now: float, stack: list[FrameSummary], ctx: dict) -> Stall:
        signature = stack_signature(stack)
        stall = Stall(beat + self.interval, now, stack, ctx, signature)
        group = self.groups.get(signature)
        if group is None:
            group = self.groups[signature] = StallGroup(signature, stack)
        group.count += 1
        self.stalls_total += 1
        self.stalls.append(stall)
        if len(self.stalls) > self.keep:
            del self.stalls[: len(self.stalls) - self.keep]
        self._current_beat = beat
        return stall

    def _finish(self, stall: Stall, duration: float) -> Stall:
        self.current = None
        self._ended_beat = self._current_beat
        stall.final_duration = duration
        self.stall_durations.observe(duration)
        group = self.groups[stall.signature]
        group.total_s += duration
        group.max_s = max(group.max_s, duration)
        return stall

    def _report(self, stall: Stall, phase: str) -> None:
        group = self.groups[stall.signature]
        if phase == "started" or not stall.stack:  # a stall's first report decides its logging
            now = time.monotonic()
            if now - group.logged_at >= self.log_every:
                stall.logged, group.logged_at = True, now
            else:
                group.suppressed += 1
        if stall.logged:
            where = culprit(stall.stack)
            duration = stall.duration
            self.logger.warning(
                "loop_stall %s %.3fs at %s",
                phase,
                duration,
                where,
                extra={
                    "event": "loop_stall",
                    "phase": phase,
                    "duration_s": duration,
                    "detected_after_s": stall.detected_at - stall.started_at,
                    "threshold_s": self.threshold,
                    "signature": stall.signature,
                    "count": group.count,
                    "suppressed": group.suppressed,
                    "culprit": where,
                    "stack": stack_fields(stall.stack),
                    "context": stall.context,
                },
            )
            if phase == "ended":
                group.suppressed = 0
        if self.on_stall is not None:
            try:
                self.on_stall(stall)
            except Exception:
                self.logger.exception("on_stall callback failed")


class _TimeSpec(ctypes.Structure):
    _fields_ = (("sec", ctypes.c_long), ("nsec", ctypes.c_long))


class _ITimerSpec(ctypes.Structure):
    _fields_ = (("interval", _TimeSpec), ("value", _TimeSpec))


class DeadlineTimer:
    """A Linux timerfd that `push()` re-arms to expire `delay` from now; its fd turns readable
    when a push came too late. Lets the watchdog thread sleep in the kernel, without the GIL,
    until the heartbeat misses its deadline: a healthy loop never wakes the thread, and never
    hands it the GIL (each hand-off measured ~1 ms of a busy loop's time on a 2-vCPU VM).

    `push` is one syscall through ctypes (~1.3 us). `create` returns None off Linux.
    """

    def __init__(self, delay: float) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._settime = libc.timerfd_settime
        self._settime.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
        fd = libc.timerfd_create(time.CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self.fd = fd
        self._spec = _ITimerSpec()
        self._spec.value.sec, self._spec.value.nsec = divmod(round(delay * 1e9), 10**9)
        self._ref = ctypes.byref(self._spec)

    @classmethod
    def create(cls, delay: float) -> DeadlineTimer | None:
        try:
            return cls(delay)
        except (OSError, AttributeError, TypeError):  # not Linux
            return None

    def push(self) -> None:
        self._settime(self.fd, 0, self._ref, None)

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)

    def close(self) -> None:
        os.close(self.fd)


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
    `context(frame)` is called in the watchdog thread with the blocked loop thread's innermost
    frame; a `RequestContext` is such a callable.

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
            context=context,
            log_every=log_every,
            keep=keep,
            logger=logger,
        )
        self.threshold, self.interval = threshold, interval
        self.c_fallback = c_fallback
        self.c_fallback_timeout = c_fallback_timeout or max(4 * threshold, 1.0)
        self.c_fallback_file = c_fallback_file
        self.lag, self.stall_durations = self.tracker.lag, self.tracker.stall_durations
        self.stalls, self.groups = self.tracker.stalls, self.tracker.groups
        self._fallback: TextIO | None = None
        self._rearm_at = -math.inf
        self._timer: DeadlineTimer | None = None
        self._wake: tuple[int, int] | None = None  # a pipe: wakes the thread to report or stop
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._tg: TaskGroup | None = None

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


class _TeeHistogram:
    """Feeds the watchdog's own histogram and a Prometheus one from the same observations."""

    def __init__(self, *targets: Any) -> None:
        self._targets = targets

    def observe(self, value: float) -> None:
        for target in self._targets:
            target.observe(value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._targets[0], name)


def _export_stall(stall: Stall) -> None:
    """`on_stall`, in the watchdog thread: Prometheus' counters are thread-safe."""
    if stall.ended:
        metrics.loop_stalls.inc()
        metrics.loop_stall_duration.observe(stall.duration)
        metrics.loop_stalled.set(0)
    else:
        metrics.loop_stalled.set(1)


@asynccontextmanager
async def watch_loop(
    settings: Settings, context: RequestContext
) -> AsyncIterator[LoopWatchdog | None]:
    """The loop watchdog for an app's lifetime (None when disabled), its stall reports naming
    the request `context` says is being served, its figures exported to Prometheus."""
    if not settings.watchdog_enabled:
        yield None
        return
    wd = LoopWatchdog(
        threshold=settings.watchdog_threshold_s,
        interval=settings.watchdog_interval_s,
        on_stall=_export_stall,
        context=context,
        c_fallback=settings.watchdog_c_fallback and not c_fallback_in_use(),
    )
    wd.tracker.lag = _TeeHistogram(wd.tracker.lag, metrics.loop_lag)
    async with wd:
        yield wd
