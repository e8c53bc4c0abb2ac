"""The `metrics sampler` job: sets the Prometheus gauges every second.

Multiprocess mode has no scrape-time callbacks, so gauges (limiter use, writer inbox, the
billing backlog) are sampled here instead of computed when scraped. The garbage collector's
passes, timed by runtime/gctune.py, are recorded here too.
"""

from __future__ import annotations

import anyio

from analytics.pipeline.services import Services
from analytics.runtime import gctune, prometheus
from analytics.runtime.logs import DroppingQueueHandler
from analytics.store import outbox


async def sample_gauges(services: Services, every_s: float = 1.0, outbox_every: int = 5) -> None:
    """Until cancelled; the outbox backlog (a database query) every `outbox_every` samples."""
    tick, dropped = 0, DroppingQueueHandler.dropped
    while True:
        prometheus.log_records_dropped.inc(DroppingQueueHandler.dropped - dropped)
        dropped = DroppingQueueHandler.dropped
        for generation, seconds in gctune.drain():
            prometheus.gc_pause.labels(str(generation)).observe(seconds)
        for s in services.offload.stats():
            prometheus.limiter_capacity.labels(s.name).set(s.capacity)
            prometheus.limiter_borrowed.labels(s.name).set(s.borrowed)
            prometheus.limiter_waiting.labels(s.name).set(s.waiting)
        prometheus.writer_inbox_depth.set(services.writer.depth)
        prometheus.writer_inbox_capacity.set(services.settings.writer_inbox)
        if tick % outbox_every == 0:
            prometheus.billing_outbox_pending.set(await outbox.pending_count(services.pool))
        tick += 1
        await anyio.sleep(every_s)
