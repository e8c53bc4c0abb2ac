"""Background jobs that never die silently.

`supervised` runs a job inside the caller's task group: when it raises, the traceback is
logged with the job's name and the job restarts after an exponential backoff (reset once
it has run for a while); with `critical=True` the error propagates instead, which cancels
the root task group and takes the process down on purpose. Cancellation passes straight
through: shutdown is never mistaken for a crash.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

log = logging.getLogger(__name__)


async def supervised(
    name: str,
    job: Callable[[], Awaitable[object]],
    *,
    critical: bool = False,
    first_backoff_s: float = 0.1,
    max_backoff_s: float = 30.0,
    healthy_after_s: float = 60.0,
) -> None:
    """Run `job()` until it returns normally; restart it (with backoff) whenever it raises."""
    backoff = first_backoff_s
    while True:
        started = anyio.current_time()
        try:
            await job()
            return
        except Exception:
            if critical:
                log.critical("job %s failed; stopping the process", name, exc_info=True)
                raise
            if anyio.current_time() - started >= healthy_after_s:
                backoff = first_backoff_s
            log.error("job %s failed; restarting in %.1fs", name, backoff, exc_info=True)
        await anyio.sleep(backoff)
        backoff = min(backoff * 2, max_backoff_s)
