"""The watchdog's bookkeeping, without an event loop, a thread or a real sleep.

`StallTracker` reads time only through the clock it is given: here a fake one the test moves.
Each test drives both sides itself, in the order the heartbeat (`beat`) and the watchdog
thread (`poll`) would, so these are the rules exactly, with no scheduler in the way.
"""

from __future__ import annotations

import logging
import sys
from traceback import FrameSummary

import pytest

from analytics.runtime.request_context import RequestContext
from analytics.runtime.stalls import PACKAGE_DIR, Stall, StallTracker, culprit, stack_fields

THRESHOLD, INTERVAL = 0.05, 0.01
STALLS_LOGGER = "analytics.runtime.stalls"  # StallTracker's default logger


class FakeClock:
    """Seconds that pass only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def this_frame():
    """`frame_of_loop` for `poll`: the test's own frame stands for the blocked loop thread."""
    frame = sys._getframe(1)
    return lambda: frame


def tracker(clock: FakeClock, **kwargs) -> StallTracker:
    return StallTracker(kwargs.pop("threshold", THRESHOLD), INTERVAL, clock=clock, **kwargs)


def test_the_bookkeeping_runs_without_an_event_loop(caplog):
    """StallTracker is plain: drive both sides from one thread, no loop at all."""
    clock = FakeClock()
    tracker = StallTracker(0.01, 0.001, log_every=0.3, clock=clock)

    caplog.set_level(logging.WARNING, logger=STALLS_LOGGER)
    for i in range(4):
        if i == 3:
            clock.advance(0.3)  # past the rate limit's window
        tracker.reset()
        clock.advance(0.03)
        frame = sys._getframe()
        tracker.poll(lambda frame=frame: frame)  # detects the stall, captures this frame
        tracker.beat()  # the loop is back: ends it
        tracker.poll(lambda frame=frame: frame)  # reports the end
    stalls = tracker.stalls
    assert [s.logged for s in stalls] == [True, False, False, True]
    assert all(s.ended and s.duration >= 0.01 for s in stalls)
    assert len({s.signature for s in stalls}) == 1
    assert [g.count for g in tracker.groups.values()] == [4]
    logged = [(r.phase, r.suppressed) for r in caplog.records]
    assert logged == [("started", 0), ("ended", 0), ("started", 2), ("ended", 2)]
    assert tracker.stall_durations.count == 4


def test_a_stall_the_watchdog_thread_never_saw_is_still_counted():
    clock = FakeClock()
    tracker = StallTracker(0.01, 0.001, clock=clock)
    tracker.reset()
    clock.advance(0.03)
    tracker.beat()  # as if C code had held the GIL until now
    tracker.poll(None)
    [stall] = tracker.stalls
    assert stall.ended and stall.stack == [] and stall.duration >= 0.01
    assert tracker.stall_durations.count == 1


def test_a_stall_is_detected_once_the_deadline_has_passed_and_not_before():
    clock = FakeClock()
    t = tracker(clock)
    t.reset()
    began = clock()
    assert t.poll(this_frame()) == pytest.approx(INTERVAL + THRESHOLD)  # sleep to the deadline
    clock.advance(INTERVAL + THRESHOLD)
    assert t.poll(this_frame()) == 0.0 and t.stalls == []  # due, not yet late
    clock.advance(0.001)
    assert t.poll(this_frame()) == INTERVAL  # in a stall: check again each interval
    [stall] = t.stalls
    assert t.in_stall and not stall.ended
    assert stall.started_at == pytest.approx(began + INTERVAL)  # when the missed beat was due
    assert stall.detected_at == clock()
    assert stall.stack[-1].name == sys._getframe().f_code.co_name  # the "blocked" frame


def test_a_stall_lasts_until_the_heartbeat_resumes_and_then_has_its_full_duration():
    clock = FakeClock()
    t = tracker(clock)
    t.reset()
    clock.advance(0.1)
    t.poll(this_frame())
    [stall] = t.stalls
    assert stall.duration == pytest.approx(0.1 - INTERVAL)  # so far, on the tracker's clock
    clock.advance(0.1)
    assert stall.duration == pytest.approx(0.2 - INTERVAL) and t.in_stall
    assert t.beat() is True  # the late tick is queued: wake the thread
    assert t.in_stall  # until the thread has seen it
    t.poll(this_frame())
    assert stall.ended and not t.in_stall
    assert stall.duration == pytest.approx(0.2 - INTERVAL)
    clock.advance(1.0)
    assert stall.duration == pytest.approx(0.2 - INTERVAL)  # final: the clock no longer counts
    assert t.stall_durations.count == 1 and t.stall_durations.sum == stall.duration
    assert t.groups[stall.signature].max_s == stall.duration


def test_ticks_on_time_wake_nobody_and_are_measured():
    clock = FakeClock()
    lags: list[float] = []
    t = tracker(clock, on_lag=lags.append)
    t.reset()
    for late in (0.0, 0.002, 0.0, 0.03):
        clock.advance(INTERVAL + late)
        assert t.beat() is False  # under the threshold: the thread sleeps on
    clock.advance(INTERVAL - 0.004)  # early: a lag is never negative
    t.beat()
    assert lags == pytest.approx([0.0, 0.002, 0.0, 0.03, 0.0])
    assert t.lag.count == 5 and t.lag.sum == pytest.approx(0.032)  # the same observations
    assert t.stalls == []


def test_a_failing_on_lag_is_dropped_and_logged_by_the_thread_not_the_heartbeat(caplog):
    clock = FakeClock()
    calls: list[float] = []

    def on_lag(seconds: float) -> None:
        calls.append(seconds)
        raise RuntimeError("metrics are down")

    t = tracker(clock, on_lag=on_lag)
    caplog.set_level(logging.ERROR, logger=STALLS_LOGGER)
    t.reset()
    clock.advance(INTERVAL)
    assert t.beat() is True  # nothing late, but the thread has an error to log
    assert caplog.records == []  # the loop thread logs nothing
    t.poll(this_frame())
    [record] = caplog.records
    assert "on_lag" in record.getMessage() and record.exc_info[0] is RuntimeError
    clock.advance(INTERVAL)
    assert t.beat() is False and len(calls) == 1  # not called again
    assert t.lag.count == 2  # the watchdog's own histogram goes on


def test_failing_hooks_do_not_stop_the_watchdog(caplog):
    clock = FakeClock()

    def on_stall(stall: Stall) -> None:
        raise RuntimeError("callback bug")

    def context(frame) -> dict:
        raise KeyError("no request")

    t = tracker(clock, on_stall=on_stall, context=context)
    caplog.set_level(logging.WARNING, logger=STALLS_LOGGER)
    t.reset()
    clock.advance(0.1)
    t.poll(this_frame())
    t.beat()
    t.poll(this_frame())
    [stall] = t.stalls
    assert stall.ended and stall.context == {"context_error": "KeyError('no request')"}
    failures = [r for r in caplog.records if r.getMessage() == "on_stall callback failed"]
    assert len(failures) == 2  # at both phases


def test_only_the_latest_stalls_are_kept_and_all_are_counted():
    clock = FakeClock()
    t = tracker(clock, keep=2)
    t.reset()
    for _ in range(5):
        clock.advance(0.1)
        t.beat()  # each a stall the thread never saw
    t.poll(None)
    assert t.stalls_total == 5 and len(t.stalls) == 2
    assert t.stall_durations.count == 5


def test_stalls_merge_by_stack_and_logs_are_rate_limited_per_stack(caplog):
    clock = FakeClock()
    t = tracker(clock, log_every=60)
    caplog.set_level(logging.WARNING, logger=STALLS_LOGGER)

    def stall_at(frame_of_loop) -> None:
        t.reset()
        clock.advance(0.1)
        t.poll(frame_of_loop)
        t.beat()
        t.poll(frame_of_loop)

    def here():
        return this_frame()

    def elsewhere():
        return this_frame()

    a, b = here(), elsewhere()  # two stacks (their callers' line: the loop's below)
    for frame_of_loop, pause in [(a, 0), (a, 0), (a, 0), (b, 0), (a, 60)]:
        clock.advance(pause)  # the last one after the window has passed
        stall_at(frame_of_loop)
    assert [s.logged for s in t.stalls] == [True, False, False, True, True]
    assert sorted(g.count for g in t.groups.values()) == [1, 4]
    started = [r for r in caplog.records if r.phase == "started"]
    assert [r.suppressed for r in started] == [0, 0, 2]  # skipped since the last one logged
    assert started[0].culprit == culprit(t.stalls[0].stack)


def test_threshold_and_interval_must_be_positive():
    with pytest.raises(ValueError):
        StallTracker(0, INTERVAL)
    with pytest.raises(ValueError):
        StallTracker(THRESHOLD, -1)


def test_our_own_frames_are_marked():
    ours = FrameSummary(PACKAGE_DIR + "api/ingest.py", 10, "ingest", lookup_line=False)
    theirs = FrameSummary("/usr/lib/python3.11/json/decoder.py", 5, "decode", lookup_line=False)
    assert [f["ours"] for f in stack_fields([ours, theirs])] == [True, False]
    assert culprit([ours, theirs]) == f"{PACKAGE_DIR}api/ingest.py:10 in ingest"
    assert culprit([theirs]) == "/usr/lib/python3.11/json/decoder.py:5 in decode"
    assert culprit([]) == "<stack not captured>"


def test_the_request_context_is_found_from_any_inner_frame():
    context = RequestContext()

    def inner():
        return sys._getframe()

    def serve(rid: str):
        context.enter(request_id=rid)
        try:
            return context(inner())
        finally:
            context.exit()

    def serve_bound(rid: str):
        with context.bind(request_id=rid):
            return context(inner())

    assert serve("r1") == {"request_id": "r1"}
    assert serve_bound("r2") == {"request_id": "r2"}
    assert context(sys._getframe()) == {}  # outside any request
    assert context._by_frame == {}
