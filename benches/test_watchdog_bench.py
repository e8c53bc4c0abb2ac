"""What the loop watchdog costs a busy loop: the same CPU-bound workload of many small awaits
(no I/O, so every microsecond the heartbeat or the watchdog thread takes shows), with and
without the watchdog, on each backend.

Run with `just bench -k watchdog`; compare the events/s (awaits/s) of `[on]` and `[off]`.
`[polling]` is the watchdog without its deadline timerfd: the thread then wakes at every
deadline (~20 times a second) and takes the GIL from the loop each time, which is what the
timerfd is there to avoid.
"""

import anyio
import anyio.lowlevel
import pytest

from analytics.runtime.deadline_timer import DeadlineTimer
from analytics.runtime.watchdog import LoopWatchdog

TASKS, STEPS = 100, 3000  # ~0.3-0.5 s a run: the fixed cost of entering (~1 ms) stays small


async def workload() -> None:
    async def task() -> None:
        acc = 0
        for i in range(STEPS):
            acc += i * i  # a little Python work between awaits
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        for _ in range(TASKS):
            tg.start_soon(task)


async def watched() -> None:
    async with LoopWatchdog() as wd:
        await workload()
    assert wd.lag.count > 0


BACKENDS = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}


@pytest.mark.parametrize("watchdog", ["off", "on", "polling"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_watchdog_overhead(benchmark, monkeypatch, backend, watchdog):
    name, options = BACKENDS[backend]
    main = workload if watchdog == "off" else watched
    if watchdog == "polling":
        monkeypatch.setattr(DeadlineTimer, "create", lambda delay: None)
    benchmark.extra_info["events"] = TASKS * STEPS
    benchmark.pedantic(
        anyio.run,
        args=(main,),
        kwargs={"backend": name, "backend_options": options},
        rounds=10,
        warmup_rounds=2,
    )
