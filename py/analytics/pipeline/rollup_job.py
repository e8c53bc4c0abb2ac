"""The rollup job: every `interval_s`, fold the events committed since the last fold into
the rollups (store/rollups.py), in one transaction, in whichever worker process takes the
job's lock first (the others find it taken and wait for the next round).

Nothing here decides what a query answers: a query reads the rollups plus the raw events the
job has not folded yet, in one snapshot. The job only keeps that raw remainder small. On
shutdown the lifespan runs one last fold after the writer's final commit, so a stopped
service leaves (almost) nothing unfolded.
"""

from __future__ import annotations

import functools
import logging
import time

import anyio
import anyio.lowlevel

from analytics.runtime import prometheus
from analytics.runtime.offload import Offload
from analytics.store import db
from analytics.store.deferred import Rebuilder, Rebuilt
from analytics.store.rollups import FOLD_MAX_EVENTS, Folded, Folder
from analytics.store.sketches import inline

log = logging.getLogger(__name__)

#: While a backlog is left, each fold is sized to take about this long (from the last one's
#: rate), between `FOLD_MAX_EVENTS` and `BACKLOG_MAX_EVENTS` events: a backfill's old events
#: share more rollup rows and sketches the more of them one fold takes (docs/rollups.md),
#: and the fold's transaction stays short.
BACKLOG_FOLD_S = 2.0
BACKLOG_MAX_EVENTS = 50_000

#: The hours a fold of a backlog deferred (store/deferred.py) are rebuilt once it is folded,
#: in short transactions (`deferred.REBUILD_S`); and while a backlog lasts, one rebuild at
#: least every `REBUILD_EVERY_S`, so a backfill that never ends does not leave its hours to
#: the raw events for ever.
REBUILD_EVERY_S = 30.0
#: Rebuilds run side by side (each its own marks and connection): a rebuild is one
#: PostgreSQL backend's work, and after a backfill is acknowledged the cores are free.
REBUILD_CONNECTIONS = 2


class RollupJob:
    def __init__(
        self,
        pool: db.Pool,
        dimensions: tuple[str, ...],
        *,
        interval_s: float = 0.5,
        timeout_s: float = 30.0,
        offload: Offload | None = None,
        minute_horizon_h: int | None = None,
    ) -> None:
        self._pool = pool
        # Sketches of unique users are built and merged in Rust, in a worker thread.
        self._cpu = functools.partial(offload.run, "cpu") if offload else inline
        self._folder = Folder(dimensions, minute_horizon_h)
        self._rebuilder = Rebuilder(dimensions)
        #: Whether marked hours may be waiting (a restart finds those left: check once).
        self._marked = True
        self._rebuilt_at = time.monotonic()
        self._interval_s = interval_s
        #: How long the last fold took, in seconds.
        self.last_fold_s = 0.0
        self._timeout_s = timeout_s

    async def fold_once(self, max_events: int = FOLD_MAX_EVENTS) -> Folded | None:
        """One fold of at most `max_events` (None when another process holds the lock)."""
        started = time.perf_counter()
        with anyio.fail_after(self._timeout_s):
            async with self._pool.acquire() as conn:
                folded = await self._folder.fold(conn, self._timeout_s, self._cpu, max_events)
        self.last_fold_s = time.perf_counter() - started
        if folded is not None and folded.events:
            prometheus.rollup_folded.inc(folded.events)
            prometheus.rollup_fold_seconds.observe(self.last_fold_s)
        return folded

    async def rebuild_once(self) -> Rebuilt | None:
        """Rebuild the oldest deferred hours, `REBUILD_CONNECTIONS` rebuilds side by side
        (None when a fold or an erasure holds the lock)."""
        done: list[Rebuilt | None] = []

        async def one() -> None:
            async with self._pool.acquire() as conn:
                done.append(await self._rebuilder.rebuild(conn, self._timeout_s, self._cpu))

        with anyio.fail_after(self._timeout_s):
            async with anyio.create_task_group() as tg:
                for _ in range(REBUILD_CONNECTIONS):
                    tg.start_soon(one)
        self._rebuilt_at = time.monotonic()
        ran = [r for r in done if r is not None]
        if not ran:
            return None
        rebuilt = Rebuilt(
            sum(r.hours for r in ran), sum(r.events for r in ran), any(r.more for r in ran)
        )
        self._marked = rebuilt.more
        if rebuilt.hours:
            prometheus.rollup_rebuilt_hours.inc(rebuilt.hours)
        return rebuilt

    async def run(self) -> None:
        """Fold, then sleep `interval_s` (at once again, and more at a time, while a backlog
        is left: `BACKLOG_FOLD_S`; hours a backlog's folds deferred are rebuilt once it is
        folded), until cancelled."""
        size = FOLD_MAX_EVENTS
        while True:
            folded = await self.fold_once(size)
            if folded is not None and folded.deferred:
                self._marked = True
            if folded is not None and folded.more:
                rate = folded.events / max(self.last_fold_s, 1e-3)
                size = int(min(max(rate * BACKLOG_FOLD_S, FOLD_MAX_EVENTS), BACKLOG_MAX_EVENTS))
                if self._marked and time.monotonic() - self._rebuilt_at > REBUILD_EVERY_S:
                    await self.rebuild_once()
                await anyio.lowlevel.checkpoint()
                continue
            size = FOLD_MAX_EVENTS
            # (Another worker's folds may have marked hours: looked for now and then.) Not
            # while a backfill still arrives (the last fold left hours out): hours rebuilt
            # then are marked again by its next folds, and read whole again (through the
            # service, a 1M-event backfill reached the rollups after 93-98 s; 65-68 s since).
            arriving = folded is not None and folded.deferring > 0
            since = time.monotonic() - self._rebuilt_at
            if (self._marked and not arriving) or since > REBUILD_EVERY_S:
                rebuilt = await self.rebuild_once()
                if rebuilt is not None and rebuilt.more:
                    await anyio.lowlevel.checkpoint()
                    continue
            await anyio.sleep(self._interval_s)

    async def final_fold(self, within_s: float = 5.0) -> None:
        """The last folds at shutdown, shielded and bounded; failures are logged only (the
        next start folds what is left)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(within_s):
            try:
                while (folded := await self.fold_once()) is not None and folded.more:
                    pass
            except Exception as e:
                log.warning("final rollup fold failed: %r", e)
