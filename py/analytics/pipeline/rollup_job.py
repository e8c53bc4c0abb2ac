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
from analytics.store.rollups import Folded, Folder
from analytics.store.sketches import inline

log = logging.getLogger(__name__)


class RollupJob:
    def __init__(
        self,
        pool: db.Pool,
        dimensions: tuple[str, ...],
        *,
        interval_s: float = 0.5,
        timeout_s: float = 30.0,
        offload: Offload | None = None,
    ) -> None:
        self._pool = pool
        # Sketches of unique users are built and merged in Rust, in a worker thread.
        self._cpu = functools.partial(offload.run, "cpu") if offload else inline
        self._folder = Folder(dimensions)
        self._interval_s = interval_s
        self._timeout_s = timeout_s

    async def fold_once(self) -> Folded | None:
        """One fold (None when another process holds the job's lock)."""
        started = time.perf_counter()
        with anyio.fail_after(self._timeout_s):
            async with self._pool.acquire() as conn:
                folded = await self._folder.fold(conn, self._timeout_s, self._cpu)
        if folded is not None and folded.events:
            prometheus.rollup_folded.inc(folded.events)
            prometheus.rollup_fold_seconds.observe(time.perf_counter() - started)
        return folded

    async def run(self) -> None:
        """Fold, then sleep `interval_s` (at once again while a backlog is left), until
        cancelled."""
        while True:
            folded = await self.fold_once()
            if folded is not None and folded.more:
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
