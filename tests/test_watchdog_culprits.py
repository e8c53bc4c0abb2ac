"""What a stall report blames, when the loop thread shows no line of its own.

The case: under light load the watchdog logged `loop_stall ... at <stack not captured>`.
The watchdog thread looks at the loop only once it holds the GIL, and the loop may then be
past the blocking code: a stall barely over the threshold has ended by the time the thread
is woken and handed the GIL (up to the interpreter's 5 ms switch interval later), and one in
C code holding the GIL cannot be watched at all. Such a stall has no stack, and `culprit([])`
was the whole report. Or the thread finds the loop thread in C with no Python frame of a
task: uvloop's loop is C, a C function may run as a callback, the selector waits in epoll,
and the only frame left is the runner's (`asyncio/runners.py:118 in run`), which the report
then named as if it were the blocking line.

End to end first (a real loop blocked in a C callback, no Python frame above the loop), then
the rules with a fake clock and frames made to look like the loop's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import sysconfig
import time
from traceback import FrameSummary

import anyio
import pytest

from analytics.runtime import frames
from analytics.runtime.frames import PACKAGE_DIR, culprit, is_loop_machinery, task_frames
from analytics.runtime.stalls import SEEN_AFTER, SEEN_BLOCKED, SEEN_IN_C, StallTracker
from analytics.runtime.watchdog import LoopWatchdog

#: The loop is blocked on purpose here, and `time.sleep` must be the C function itself (the
#: blocking-call checker would wrap it in Python).
pytestmark = pytest.mark.allow_blocking

THRESHOLD, INTERVAL = 0.05, 0.01
ASYNCIO_EVENTS = os.path.join(sysconfig.get_paths()["stdlib"], "asyncio", "events.py")


@pytest.fixture(
    params=["asyncio", ("asyncio", {"use_uvloop": True}), "trio"],
    ids=["asyncio", "uvloop", "trio"],
)
def anyio_backend(request):
    return request.param


def schedule_from_c(fn, *args) -> None:
    """Have the running loop call `fn(*args)` itself, as a callback: no Python frame of ours
    (or of any task) is then above the call. uvloop calls it from C (libuv and Cython),
    asyncio from `Handle._run`, trio from its run loop."""
    if anyio_backend_name() == "trio":
        import trio

        trio.lowlevel.current_trio_token().run_sync_soon(fn, *args)
    else:
        asyncio.get_running_loop().call_soon(fn, *args)


def anyio_backend_name() -> str:
    import sniffio

    return sniffio.current_async_library()


@pytest.mark.anyio
async def test_a_c_callback_blocking_the_loop_is_reported_as_c_code(anyio_backend, caplog):
    caplog.set_level(logging.WARNING, logger="analytics.runtime.watchdog")
    uvloop = anyio_backend != "trio" and "uvloop" in type(asyncio.get_running_loop()).__module__
    async with LoopWatchdog(THRESHOLD, INTERVAL, c_fallback=False) as wd:
        await anyio.sleep(0.05)
        schedule_from_c(time.sleep, 0.3)  # blocks in C, GIL released: the thread can look
        await anyio.sleep(0.05)
    [stall] = wd.stalls
    assert stall.seen == SEEN_IN_C, (stall.seen, stall.where)
    assert not task_frames(stall.stack)  # truly no frame of a task: only the loop's
    assert stall.where.startswith("<in C code, no Python frame of a task")
    if anyio_backend == "asyncio" and not uvloop:
        assert "the C function time.sleep run as a callback" in stall.where
    elif uvloop:
        assert "uvloop's own loop" in stall.where
        assert is_loop_machinery(stall.stack[-1].filename)  # the runner's call into uvloop
    started = [r for r in caplog.records if getattr(r, "phase", None) == "started"]
    assert [r.culprit for r in started] == [stall.where]
    assert started[0].levelname == "WARNING" and started[0].seen == SEEN_IN_C
    assert started[0].duration_s < 0.3  # reported while it lasted, not only afterwards
    assert "<stack not captured>" not in caplog.text


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Handle:
    """Stands for asyncio's: `_run` reads `self._callback`."""

    def __init__(self, callback) -> None:
        self._callback = callback


# A function whose frames look like asyncio's `Handle._run` (its file name is asyncio's).
_ns: dict = {}
exec(compile("import sys\ndef _run(self):\n    return sys._getframe()\n", ASYNCIO_EVENTS, "exec"),
     _ns)  # fmt: skip


def loop_frame(callback=None):
    """`frame_of_loop` for a loop thread inside `Handle._run` running a C `callback`."""
    frame = _ns["_run"](Handle(callback))
    return lambda: frame


def task_frame():
    """`frame_of_loop` for a loop thread in a task: this test's line, inside `_run`."""
    frame = sys._getframe(1)
    return lambda: frame


def stalled(clock: FakeClock, **kwargs) -> StallTracker:
    t = StallTracker(THRESHOLD, INTERVAL, clock=clock, log_every=0, **kwargs)
    t.reset()
    clock.advance(0.1)  # past the deadline
    return t


def test_no_task_frame_is_looked_at_twice_then_called_c_code(caplog):
    caplog.set_level(logging.DEBUG, logger="analytics.runtime.stalls")
    clock = FakeClock()
    t = stalled(clock)
    frame_of_loop = loop_frame(time.sleep)
    assert t.poll(frame_of_loop) == INTERVAL  # detected: look again in one interval
    [stall] = t.stalls
    assert t.in_stall and stall.seen == "" and caplog.records == []  # no report yet
    clock.advance(INTERVAL)
    t.poll(frame_of_loop)
    assert stall.seen == SEEN_IN_C and not stall.ended
    assert stall.where == (
        "<in C code, no Python frame of a task: the C function time.sleep run as a callback;"
        f" at {ASYNCIO_EVENTS}:3 in _run>"
    )
    [record] = caplog.records
    assert (record.phase, record.culprit, record.levelname) == ("started", stall.where, "WARNING")
    t.beat()
    t.poll(frame_of_loop)
    assert stall.ended and caplog.records[-1].phase == "ended"
    assert caplog.records[-1].culprit == stall.where
    assert t.groups[stall.signature].count == 1


def test_a_task_frame_found_at_the_second_look_names_the_line():
    clock = FakeClock()
    t = stalled(clock)
    t.poll(loop_frame())  # between callbacks...
    clock.advance(INTERVAL)
    t.poll(task_frame())  # ...then in a task's code, still blocked
    [stall] = t.stalls
    assert stall.seen == SEEN_BLOCKED
    assert stall.where == culprit(stall.stack) and "in test_a_task_frame_found" in stall.where
    assert list(t.groups) == [stall.signature]


@pytest.mark.parametrize(("late", "level"), [(0.06, "DEBUG"), (0.3, "WARNING")])
def test_a_stall_that_ended_before_the_thread_could_look_says_so(caplog, late, level):
    caplog.set_level(logging.DEBUG, logger="analytics.runtime.stalls")
    clock = FakeClock()
    t = StallTracker(THRESHOLD, INTERVAL, clock=clock, log_every=0)
    assert t.reaction_s == pytest.approx(THRESHOLD + INTERVAL + sys.getswitchinterval())
    t.reset()
    clock.advance(INTERVAL + late)
    t.beat()  # the heartbeat came back before the thread got to look
    t.poll(task_frame())
    [stall] = t.stalls
    assert stall.ended and stall.stack == [] and stall.seen == SEEN_AFTER
    [record] = caplog.records
    assert (record.phase, record.levelname, record.seen) == ("ended", level, SEEN_AFTER)
    assert record.culprit.startswith("<seen only after it ended, no line known: ")
    if level == "DEBUG":  # expected of a stall this short: no warning without a line
        assert "within the watchdog's reaction time (0.065s)" in record.culprit
    else:  # the thread could not run for 0.3 s: something held the GIL, or the CPU
        assert "got no GIL or no CPU meanwhile" in record.culprit
    assert t.stalls_total == 1 and t.stall_durations.count == 1  # counted either way


def test_a_stall_over_by_the_second_look_was_seen_only_after_it_ended(caplog):
    caplog.set_level(logging.DEBUG, logger="analytics.runtime.stalls")
    clock = FakeClock()
    t = stalled(clock)
    t.poll(loop_frame())  # the loop was back in its machinery: the blocking part was over
    t.beat()
    t.poll(loop_frame())
    [stall] = t.stalls
    assert stall.seen == SEEN_AFTER
    assert stall.where.endswith(f"; the loop was back at {ASYNCIO_EVENTS}:3 in _run>")
    assert [r.phase for r in caplog.records] == ["ended"]


def summary(filename: str, name: str = "f") -> FrameSummary:
    return FrameSummary(filename, 1, name, lookup_line=False)


def test_frames_outside_the_loop_are_never_the_culprit():
    stdlib = sysconfig.get_paths()["stdlib"]
    site = os.path.join(os.path.dirname(os.path.dirname(anyio.__file__)))
    starter = [summary(PACKAGE_DIR + "serve.py", "serve"), summary("/x/hypercorn/run.py")]
    runner = summary(os.path.join(stdlib, "asyncio", "runners.py"), "run")
    wrapper = summary(os.path.join(site, "anyio", "_backends", "_asyncio.py"), "wrapper")
    ours = summary(PACKAGE_DIR + "api/ingest.py", "ingest")
    lib = summary("/x/site-packages/orjson/__init__.py", "dumps")
    assert all(map(is_loop_machinery, (runner.filename, wrapper.filename)))
    assert not any(map(is_loop_machinery, (ours.filename, lib.filename, starter[0].filename)))
    # uvloop in C: the runner is the innermost frame; serve.py (ours, outside) is not to blame.
    assert culprit([*starter, runner]) == (
        f"<no Python frame of a task: C code or the selector, at {runner.filename}:1 in run>"
    )
    assert culprit([*starter, runner, wrapper, ours, lib]) == f"{ours.filename}:1 in ingest"
    assert culprit([*starter, runner, wrapper, lib]) == f"{lib.filename}:1 in dumps"
    assert task_frames([ours, lib]) == [ours, lib]  # no loop in the stack: all of it
    assert culprit([]) == "<stack not captured>"  # what a report no longer says alone


def test_frames_imports_no_event_loop():
    source = open(frames.__file__, encoding="utf-8").read()
    for loop in ("anyio", "asyncio", "trio", "uvloop", "sniffio"):
        assert f"import {loop}" not in source and f"from {loop}" not in source
