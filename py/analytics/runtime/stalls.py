"""Stall bookkeeping for the loop watchdog: detection, merge by stack, rate-limited reports.

Loop-agnostic (no event loop, no thread of its own): `StallTracker` is driven from outside,
by a heartbeat calling `beat()` and a watchdog thread calling `poll()` (see
`analytics.runtime.watchdog.LoopWatchdog`), and it reads time only through the `clock` it is
given, so its rules are tested with a fake clock instead of real sleeps. Reading the stack
(whose frames are ours, which the loop's, the culprit) is in `frames`.
"""

from __future__ import annotations

import logging
import math
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from traceback import FrameSummary
from types import FrameType
from typing import Any

from analytics.runtime.frames import (
    PACKAGE_DIR,
    culprit,
    is_own,
    running_callback,
    stack_fields,
    stack_signature,
    task_frames,
    where,
)
from analytics.runtime.histogram import Histogram

__all__ = [
    "PACKAGE_DIR",
    "SEEN_AFTER",
    "SEEN_BLOCKED",
    "SEEN_IN_C",
    "Stall",
    "StallGroup",
    "StallTracker",
    "culprit",
    "is_own",
    "stack_fields",
    "stack_signature",
]

log = logging.getLogger(__name__)

#: How the watchdog thread saw a stall (`Stall.seen`). `blocked`: it caught the loop thread
#: in the blocking code, whose line `where` names. `in C code`: twice in a row it found no
#: Python frame of a task on the loop thread, which was still blocked (C code with no Python
#: caller, or a wait in the selector or for the GIL). `after it ended`: it could look only
#: once the blocking part was over (or not at all), so no line is known.
SEEN_BLOCKED, SEEN_IN_C, SEEN_AFTER = "blocked", "in C code", "after it ended"

#: Seconds from an arbitrary origin, never going back; read from more than one thread.
Clock = Callable[[], float]


@dataclass(eq=False)
class Stall:
    """One stall of the loop. Written by the tracker's two sides, read by anyone.

    `started_at` (on the tracker's clock) is when the missed heartbeat was due; `detected_at`
    when the watchdog thread saw it missed and took `stack` (innermost frame last) from the
    blocked loop thread. `duration` is the time the heartbeat was late: so far while in
    progress, final once `ended` (for a loop blocked `d` seconds, between `d - interval` and
    `d`).

    A `detected_at - started_at` much larger than the threshold means the watchdog thread
    could not run either (C code holding the GIL): the stack then shows where the loop was
    after the blocking call, and the faulthandler file holds the truth. An empty `stack` means
    the thread never saw the stall, only the heartbeat when it ended. `seen` says which of
    these it was (`SEEN_*`), `where` what the reports say of it: the culprit line when the
    thread caught one, else what it found, in words. `context` is what the `context`
    callable said about the blocked request. `logged` tells whether the rate limit let this
    stall's log records through.
    """

    started_at: float
    detected_at: float
    stack: list[FrameSummary]
    context: dict[str, Any]
    signature: str
    logged: bool = False
    final_duration: float | None = None
    clock: Clock = field(default=time.monotonic, repr=False)  # the tracker's
    seen: str = ""  # set once the tracker knows (`SEEN_*`); empty while it looks again
    where: str = ""
    #: Under asyncio, the C function the loop was running as a callback, if it was one.
    callback: str | None = None

    @property
    def ended(self) -> bool:
        return self.final_duration is not None

    @property
    def duration(self) -> float:
        final = self.final_duration
        return final if final is not None else self.clock() - self.started_at


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


OnStall = Callable[[Stall], None]
OnLag = Callable[[float], None]
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
    culprit, seen, stack, context`. Per signature at most one stall is logged each
    `log_every` seconds; `suppressed` counts those skipped since the last one logged.
    `stalls` keeps the latest `keep` stalls; `stalls_total` counts all.

    What the culprit says. When the stack holds a task's frame, its line (`frames.culprit`).
    When it holds none, the loop thread was in C code or between callbacks: the thread
    looks once more at its next poll before reporting, and if the loop is still blocked
    there with no task frame, the report says it is in C code (naming the callback under
    asyncio); if the stall ended meanwhile, the thread only saw the loop after it. A stall
    seen only after it ended (or never: the late tick is all there is) has no known line and
    says so; when it lasted no longer than `reaction_s` (default threshold + interval + the
    interpreter's GIL switch interval: how late the thread may look at a loop running Python
    code) that is expected, and it is logged at DEBUG, not WARNING; it is counted all the
    same. Longer, the thread could not run while it lasted: C code held the GIL, or the host
    gave it no CPU.

    Hooks. `on_stall(stall)` is called for every stall (logged or not) at both phases, in the
    watchdog thread: keep it quick and thread-safe. `on_lag(seconds)` is called with every
    tick's lag, as `lag` records it, in `beat` on the loop thread: it must not block (an
    in-memory metric). A hook that raises is logged by the watchdog thread; a raising
    `on_lag` is also dropped, since it would fail again every tick.

    `clock()` is read on both threads; all times here (`Stall.started_at`, `detected_at`,
    the log rate limit) are on it. Whoever drives `poll` decides when to call it: the deadline
    it returns is a wait on this clock.
    """

    def __init__(
        self,
        threshold: float,
        interval: float,
        *,
        on_stall: OnStall | None = None,
        on_lag: OnLag | None = None,
        context: ContextFn | None = None,
        log_every: float = 60.0,
        keep: int = 1000,
        logger: logging.Logger = log,
        clock: Clock = time.monotonic,
        reaction_s: float | None = None,
    ) -> None:
        if threshold <= 0 or interval <= 0:
            raise ValueError("threshold and interval must be positive")
        self.threshold, self.interval = threshold, interval
        if reaction_s is None:
            reaction_s = threshold + interval + sys.getswitchinterval()
        self.reaction_s = reaction_s
        self.on_stall, self.on_lag, self.context = on_stall, on_lag, context
        self.log_every, self.keep, self.logger, self.clock = log_every, keep, logger, clock
        self.lag = Histogram()  # every tick: actual interval minus expected (never negative)
        self.stall_durations = Histogram()  # every stall's full duration
        self.stalls: list[Stall] = []
        self.groups: dict[str, StallGroup] = {}
        self.stalls_total = 0
        self.current: Stall | None = None  # set and cleared by `poll` only
        self._beat = clock()
        self._late: deque[tuple[float, float, float]] = deque()  # (prev beat, beat, lag)
        self._current_beat = math.nan  # the last beat before `current` began
        self._ended_beat = math.nan  # the same, for the last stall ended
        self._lag_error: Exception | None = None  # set once by `beat`, logged by `poll`

    @property
    def in_stall(self) -> bool:
        """From detection until the watchdog thread has seen the heartbeat resume."""
        current = self.current
        return current is not None and not current.ended

    def reset(self) -> None:
        """Start the clock: the next beat is due `interval` from now."""
        self._beat = self.clock()

    def beat(self) -> bool:
        """One heartbeat (loop thread). True when `poll` has something to do: wake the thread.
        Never blocks: a clock read, a histogram update, `on_lag`, at most a `deque.append`."""
        now = self.clock()
        prev, self._beat = self._beat, now
        lag = now - prev - self.interval
        late = lag if lag > 0.0 else 0.0
        self.lag.observe(late)
        wake = False
        if self.on_lag is not None:
            try:
                self.on_lag(late)
            except Exception as e:  # the heartbeat must go on; the thread logs it
                self.on_lag, self._lag_error, wake = None, e, True
        if lag > self.threshold or self.current is not None:
            self._late.append((prev, now, lag))
            return True
        return wake

    def poll(self, frame_of_loop: Callable[[], FrameType | None] | None) -> float:
        """One watchdog check (watchdog thread): end, detect, capture, report. Returns how long
        to wait before the next check: until the deadline, or `interval` during a stall.
        With `frame_of_loop=None` it detects nothing new (a final flush)."""
        if self._lag_error is not None:
            error, self._lag_error = self._lag_error, None
            self.logger.error("on_lag callback failed; no longer called", exc_info=error)
        reports: list[tuple[Stall, str]] = []
        while self._late:
            prev, at, lag = self._late.popleft()
            if self.current is not None and prev == self._current_beat:
                reports.append((self._finish(self.current, lag), "ended"))
            elif lag > self.threshold and prev != self._ended_beat:
                # Late, yet the thread never saw it: it could not run (C code held the GIL).
                reports.append((self._finish(self._open(prev, at, [], {}), lag), "ended"))
        now, beat = self.clock(), self._beat
        deadline = beat + self.interval + self.threshold
        current = self.current
        if current is None:
            if frame_of_loop is not None and now > deadline:
                frame = frame_of_loop()
                stall = self.current = self._open(beat, now, *self._capture(frame))
                if stall.stack and not task_frames(stall.stack):
                    stall.callback = running_callback(frame)  # no report until a second look
                else:
                    reports.append((self._settle(stall, SEEN_BLOCKED), "started"))
        elif beat != self._current_beat and not self._late:
            # The loop beat again but queued no tick for this stall: it checked `current` just
            # before this thread set it. That tick (whose stamp is `beat`) ended the stall.
            reports.append((self._finish(current, beat - current.started_at), "ended"))
        elif not current.seen:  # the second look, and the loop is still blocked
            reports.append((self._look_again(current, frame_of_loop), "started"))
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
        stall = Stall(beat + self.interval, now, stack, ctx, signature, clock=self.clock)
        self.stalls_total += 1
        self.stalls.append(stall)
        if len(self.stalls) > self.keep:
            del self.stalls[: len(self.stalls) - self.keep]
        self._current_beat = beat
        return stall

    def _look_again(
        self, stall: Stall, frame_of_loop: Callable[[], FrameType | None] | None
    ) -> Stall:
        """The loop thread showed no task frame at detection and is still blocked: a task's
        frame now names the line; none again means C code (or a wait for the GIL)."""
        frame = frame_of_loop() if frame_of_loop is not None else None
        stack, ctx = self._capture(frame)
        if task_frames(stack):
            stall.stack, stall.context, stall.signature = stack, ctx, stack_signature(stack)
            return self._settle(stall, SEEN_BLOCKED)
        stall.callback = stall.callback or running_callback(frame)
        return self._settle(stall, SEEN_IN_C)

    def _settle(self, stall: Stall, seen: str) -> Stall:
        """Say how the stall was seen and what its reports call it; count it in its group."""
        stall.seen = seen
        if seen == SEEN_BLOCKED:
            stall.where = culprit(stall.stack)
        elif seen == SEEN_IN_C:
            what = (
                f"the C function {stall.callback} run as a callback"
                if stall.callback
                else "uvloop's own loop or a C function it called, the selector, or a GIL wait"
            )
            innermost = where(stall.stack[-1])
            stall.where = f"<in C code, no Python frame of a task: {what}; at {innermost}>"
        else:
            short = stall.duration <= self.reaction_s
            why = (
                f"it lasted {stall.duration:.3f}s, within the watchdog's reaction time"
                f" ({self.reaction_s:.3f}s)"
                if short
                else "the watchdog thread got no GIL or no CPU meanwhile (C code holding the GIL,"
                " or an overloaded host)"
            )
            seen_at = f"; the loop was back at {where(stall.stack[-1])}" if stall.stack else ""
            stall.where = f"<seen only after it ended, no line known: {why}{seen_at}>"
        group = self.groups.get(stall.signature)
        if group is None:
            group = self.groups[stall.signature] = StallGroup(stall.signature, stall.stack)
        group.count += 1
        return stall

    def _finish(self, stall: Stall, duration: float) -> Stall:
        self.current = None
        self._ended_beat = self._current_beat
        stall.final_duration = duration
        if not stall.seen:
            self._settle(stall, SEEN_AFTER)
        self.stall_durations.observe(duration)
        group = self.groups[stall.signature]
        group.total_s += duration
        group.max_s = max(group.max_s, duration)
        return stall

    def _report(self, stall: Stall, phase: str) -> None:
        group = self.groups[stall.signature]
        if phase == "started" or stall.seen == SEEN_AFTER:  # its first report decides logging
            now = self.clock()
            if now - group.logged_at >= self.log_every:
                stall.logged, group.logged_at = True, now
            else:
                group.suppressed += 1
        if stall.logged:
            duration = stall.duration
            expected = stall.seen == SEEN_AFTER and duration <= self.reaction_s
            self.logger.log(
                logging.DEBUG if expected else logging.WARNING,
                "loop_stall %s %.3fs at %s",
                phase,
                duration,
                stall.where,
                extra={
                    "event": "loop_stall",
                    "phase": phase,
                    "duration_s": duration,
                    "detected_after_s": stall.detected_at - stall.started_at,
                    "threshold_s": self.threshold,
                    "signature": stall.signature,
                    "count": group.count,
                    "suppressed": group.suppressed,
                    "culprit": stall.where,
                    "seen": stall.seen,
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
