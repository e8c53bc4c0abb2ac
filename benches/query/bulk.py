"""The bulk form of the write path, for datasets too large to post in a few minutes.

What `POST /v1/batch` does to a body, minus HTTP: each batch body of the dataset is
normalized and COPY-encoded by the same Rust call the ingest handler makes
(`normalize_batch`), the COPY tuples of `group_batches` batches are committed by the group
commit's own store call (`write_group`: dedup, events, billing outbox, invalidation), and
the rollup job's own fold (`Folder.fold`, sketches included) folds what was committed. So
the database ends up holding what ingest and the job would have made,
event for event, rollup row for rollup row.

The dataset should be time-ordered (`Dataset(ordered=True)`: batch `b` covers the `b`-th
slice of the spread), as a history import would send it: each fold then holds a few hours
of events, whose rollup rows are written once instead of once per event (see
docs/rollups.md on what a fold costs). Normalizing (Rust, in a thread) runs one group ahead
of the commits, and the folds run on a connection of their own while the next group is
committed (two PostgreSQL backends at work); then the hours the folds deferred are rebuilt,
on both connections, as the rollup job would (store/deferred.py).
Blocking (it runs its own event loop).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg

from analytics.normalize import Limits, normalize_batch
from analytics.settings import DEFAULT_DIMENSIONS, Settings
from analytics.store.deferred import Rebuilder
from analytics.store.group_commit import CommitStatements, prepare_connection, write_group
from analytics.store.rollups import Folder
from analytics.store.sketches import inline
from benches.query.dataset import Dataset
from benches.query.load import LoadFailed, LoadResult

#: Batches per commit (500 events each: 50,000 events a commit and a fold).
GROUP_BATCHES = 100
#: Events one bulk fold may take (a commit's events are one transaction: folded together).
FOLD_MAX_EVENTS = 200_000


def _encoded(dataset: Dataset, customer_id: int, first: int, last: int) -> tuple[list, list]:
    """The COPY payloads of batches first..last-1, and each one's first row (CPU)."""
    limits = Limits(max_events=dataset.batch_size)
    payloads, offsets, rows = [], [], 0
    for b in range(first, last):
        body, n = dataset.batch_body(b)
        result = normalize_batch(
            body, time.time_ns() // 1000, customer_id=str(customer_id), limits=limits
        )
        if result.rejected or result.accepted != n:
            raise LoadFailed(f"batch {b}: {result.rejected[:3]}")
        payloads.append(result.copy_data)
        offsets.append(rows)
        rows += n
    return payloads, offsets


async def _rebuild_all(conn: asyncpg.Connection, rebuilder: Rebuilder) -> None:
    """Rebuild deferred hours until none is left (beside other such loops, as the job's
    rebuilds run side by side)."""
    while True:
        rebuilt = await rebuilder.rebuild(conn, 600.0, inline)
        if rebuilt is not None and not rebuilt.more:
            return
        if rebuilt is None:
            await anyio.sleep(0.05)  # the service's job holds the lock


async def _fold_until(
    conns: tuple[asyncpg.Connection, asyncpg.Connection],
    folder: Folder,
    done: anyio.Event,
    spent: list[float],
) -> None:
    """Fold what the commits have stored until they are done and all of it is folded, on
    the first connection; then rebuild the hours the folds deferred, on both (the second is
    the commits': done by then)."""
    while True:
        finished = done.is_set()  # every commit has ended: the next folds take them all
        t0 = time.monotonic()
        folded = await folder.fold(conns[0], 600.0, max_events=FOLD_MAX_EVENTS)
        spent[0] += time.monotonic() - t0
        if folded is not None and folded.more:
            continue
        if finished and folded is not None:
            t0 = time.monotonic()
            rebuilder = Rebuilder(DEFAULT_DIMENSIONS)
            async with anyio.create_task_group() as tg:
                for conn in conns:
                    tg.start_soon(_rebuild_all, conn, rebuilder)
            spent[0] += time.monotonic() - t0
            return
        await anyio.sleep(0.05)  # nothing committed yet, or the service's job is folding


async def _load(
    dsn: str,
    customer_id: int,
    dataset: Dataset,
    result: LoadResult,
    group_batches: int,
    progress_every_s: float,
) -> None:
    conn, fold_conn = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    # The service's fold: its dimensions and minute horizon (the defaults).
    folder = Folder(DEFAULT_DIMENSIONS, Settings.rollup_minute_horizon_h)
    statements = CommitStatements.build()
    started = time.monotonic()
    next_report = started + progress_every_s
    write_s, fold_s, done = 0.0, [0.0], anyio.Event()
    try:
        await prepare_connection(conn)
        groups = [
            (g, min(g + group_batches, dataset.batches))
            for g in range(0, dataset.batches, group_batches)
        ]
        async with anyio.create_task_group() as tg:
            # Folds on a connection of their own, while the next group is committed.
            tg.start_soon(_fold_until, (fold_conn, conn), folder, done, fold_s)
            with ThreadPoolExecutor(1, thread_name_prefix="bulk-encode") as encoder:
                pending = encoder.submit(_encoded, dataset, customer_id, *groups[0])
                for i in range(len(groups)):
                    payloads, offsets = await anyio.to_thread.run_sync(pending.result)
                    if i + 1 < len(groups):
                        pending = encoder.submit(_encoded, dataset, customer_id, *groups[i + 1])
                    rows = sum(len(dataset.batch_range(b)) for b in range(*groups[i]))
                    t0 = time.monotonic()
                    counts = await write_group(
                        conn, payloads, offsets, rows, datetime.now(UTC), timedelta(seconds=60),
                        statements,
                    )  # fmt: skip
                    write_s += time.monotonic() - t0
                    inserted = sum(n for _, n in counts)
                    result.accepted += inserted
                    result.duplicates += rows - inserted
                    result.seconds = time.monotonic() - started
                    if progress_every_s and time.monotonic() >= next_report:
                        next_report += progress_every_s
                        done_n = result.accepted + result.duplicates
                        print(
                            f"  {result.label}: {done_n:,}/{dataset.events:,} events stored,"
                            f" {done_n / (time.monotonic() - started):,.0f}/s (commits"
                            f" {write_s:,.0f} s, folds {fold_s[0]:,.0f} s)",
                            flush=True,
                        )
            done.set()
    finally:
        await conn.close()
        await fold_conn.close()
    result.folded_s = time.monotonic() - started
    print(f"  {result.label}: folded after {result.folded_s:,.1f} s", flush=True)


def bulk_load(
    dsn: str,
    customer_id: int,
    dataset: Dataset,
    *,
    label: str = "bulk",
    group_batches: int = GROUP_BATCHES,
    progress_every_s: float = 15.0,
) -> LoadResult:
    """Store and fold every event of `dataset` for `customer_id` (see the module's doc)."""
    result = LoadResult(label, dataset.events, connections=1)
    anyio.run(_load, dsn, customer_id, dataset, result, group_batches, progress_every_s)
    return result
