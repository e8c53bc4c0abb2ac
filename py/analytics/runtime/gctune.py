"""The garbage collector, tuned for a server whose loop must not pause.

CPython's cycle collector runs when allocations outpace deallocations by `threshold[0]`
(700 by default): at a thousand requests a second that was ~50 collections a second, and each
older-generation pass walked every object alive since start-up, on the loop thread. Measured
in one worker at 1,000 requests/s over ~25 s (a gc callback timing each pass): 1,416 young,
129 middle and 12 full collections, the full ones up to 100 ms each on a loaded machine. That
is loop lag no request caused.

`tune()`, called once the worker has started (app built, pool open), moves everything alive
then into the permanent generation (`gc.freeze()`: the modules, routes, settings and pool are
never garbage, and a full pass no longer walks them) and raises the young generation's
threshold, so collections are rare and each walks only what the requests left behind.
Garbage in cycles still gets collected, later, within a bounded number of allocations.
Every pass is timed; the metrics sampler puts them in `analytics_gc_pause_seconds`.
"""

from __future__ import annotations

import collections
import gc
import time

#: Every collector pass since the last `drain()`: (generation, seconds). The callback only
#: appends here: it may run inside any allocation of any thread, including one holding
#: prometheus-client's lock, so observing a metric from it could deadlock.
_pauses: collections.deque[tuple[int, float]] = collections.deque(maxlen=10_000)
_started: list[float] = []
_frozen: list[bool] = []


def _callback(phase: str, info: dict) -> None:
    if phase == "start":
        _started[:] = [time.perf_counter()]
    elif _started:
        _pauses.append((info["generation"], time.perf_counter() - _started[0]))


def tune(gen0_threshold: int) -> None:
    """Freezes what is alive now, sets the young generation's threshold (0: leave Python's
    thresholds) and starts timing every pass. Freezes once per process: objects frozen are
    never collected, so a process that starts many apps (a test run) must not freeze each
    one's objects as it goes; a server's worker starts one."""
    if not _frozen:
        _frozen.append(True)
        gc.collect()  # start-up's garbage goes now, not into the frozen generation
        gc.freeze()
    if gen0_threshold > 0:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0_threshold, gen1, gen2)
    if _callback not in gc.callbacks:
        gc.callbacks.append(_callback)


def drain() -> list[tuple[int, float]]:
    """The passes timed since the last call, oldest first."""
    out = []
    while _pauses:
        out.append(_pauses.popleft())
    return out
