"""The group-commit writer: many requests, one transaction.

Requests hand their Rust-encoded COPY payloads to `submit`, which puts them on a bounded
inbox and waits. One writer task takes everything waiting (up to a row cap, lingering up to
a short window for more), COPYs it into a temp staging table, runs one statement that dedups
and inserts (the rollup job folds committed events into the rollups later), commits, and
only then wakes each waiter with its own counts. A request is acknowledged only after its
rows are committed; a failed commit fails every waiter of that transaction, and nothing of
it was stored — except when PostgreSQL refuses the rows
themselves: then the batch is split until the request carrying them is alone, and only that
request is refused, so one tenant's unstorable event never fails another tenant's write.

Guarantees:
- the inbox is bounded: when full, `submit` raises `Overloaded` at once (the API answers 503);
- `close()` stops intake; `run` then commits everything already accepted and returns;
- every database wait has a deadline (`commit_timeout_s`).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from analytics.runtime import prometheus
from analytics.store import db
from analytics.store.group_commit import (
    CommitStatements,
    RowsRefused,
    prepare_connection,
    write_group,
)

log = logging.getLogger(__name__)

#: Commits of the last seconds make the commit rate that Retry-After is estimated from.
RATE_WINDOW_S = 5.0
#: A rate measured over less time than this is measured over this (a burst of commits in
#: one millisecond says little about the next second).
MIN_RATE_SPAN_S = 0.5
MAX_RETRY_AFTER_S = 30
#: The longest hint given without a commit rate to estimate from (a commit times out in 5 s).
BLIND_RETRY_AFTER_S = 5
#: Time constant of the arrival rate the writer lingers by (an exponentially decaying count).
ARRIVAL_TAU_S = 1.0


class Overloaded(Exception):
    """The writer's inbox is full; retry after `retry_after_s` seconds, the writer's estimate
    of when what is queued now will have been committed."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"the writer is saturated; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class WriteFailed(Exception):
    """The transaction holding these rows did not commit; nothing of it was stored."""


class Unstorable(Exception):
    """PostgreSQL refuses these rows themselves (see `RowsRefused`): nothing of the request
    was stored, and sending it again would fail the same way."""


@dataclass
class Ticket:
    payload: bytes
    rows: int
    done: anyio.Event = field(default_factory=anyio.Event)
    inserted: int = 0
    error: BaseException | None = None


Connect = Callable[[], Awaitable[db.Connection]]


class GroupCommitWriter:
    def __init__(
        self,
        connect: Connect,
        *,
        inbox: int = 256,
        inbox_rows: int = 20_000,
        max_batch_rows: int = 20_000,
        window_s: float = 0.0,
        linger_requests: int = 8,
        commit_timeout_s: float = 5.0,
        connections: int = 2,
        usage_window_s: float = 60.0,
        enrich: Callable[[], bool] = lambda: True,
    ) -> None:
        self._connect = connect
        # The `enrichment` flag picks between the two statements at each commit.
        self._sql = {e: CommitStatements.build(enrich=e) for e in (True, False)}
        self._enrich = enrich
        self._send, self._receive = anyio.create_memory_object_stream[Ticket](inbox)
        self._max_rows = max_batch_rows
        # Requests bound the inbox's length, rows bound its work: 256 batches of 500 would
        # queue seconds of commits, so callers would time out with rows still to commit.
        self._inbox_rows = inbox_rows
        self._queued_rows = 0
        self._window_s = window_s
        self._linger_requests = linger_requests
        #: Requests per second arriving lately, as of `_rate_at` (see `linger_s`).
        self._rate, self._rate_at = 0.0, 0.0
        self._timeout_s = commit_timeout_s
        self._lanes = max(1, connections)
        self._usage_window = timedelta(seconds=usage_window_s)
        self._inbox = inbox
        #: (loop time, rows) of recent commits, for the commit rate behind Retry-After.
        self._commits: deque[tuple[float, int]] = deque(maxlen=512)
        #: Set when `run` has returned: everything accepted was committed (or failed).
        self.closed = anyio.Event()

    @property
    def depth(self) -> int:
        """Tickets waiting in the inbox."""
        return self._send.statistics().current_buffer_used

    @property
    def queued_rows(self) -> int:
        """Rows waiting in the inbox."""
        return self._queued_rows

    @property
    def saturation(self) -> float:
        """How full the inbox is, 0..1 (or above, past a request larger than the row cap): the
        larger of its fill in requests and in rows."""
        return max(self.depth / self._inbox, self._queued_rows / self._inbox_rows)

    def retry_after_s(self) -> int:
        """When to come back: see `retry_after`."""
        return retry_after(self._queued_rows, self._commits, anyio.current_time(), self.saturation)

    async def submit(self, payload: bytes, rows: int) -> tuple[int, int]:
        """Queue `rows` COPY tuples and wait for their commit; returns (inserted, duplicates).

        Raises `Overloaded` when the inbox is full (in requests, or in rows: a request larger
        than the row cap is still taken when the inbox is empty), `Unstorable` when PostgreSQL
        refuses this request's rows themselves, and `WriteFailed` when the commit failed.
        If the caller is cancelled while waiting, the rows may still commit (and a retry is
        then counted as a duplicate).
        """
        ticket = Ticket(payload, rows)
        if self._queued_rows and self._queued_rows + rows > self._inbox_rows:
            raise Overloaded(self.retry_after_s())
        try:
            self._send.send_nowait(ticket)
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise Overloaded(self.retry_after_s()) from None
        # No await since the send: the lane that takes the ticket subtracts these rows after.
        self._queued_rows += rows
        now = anyio.current_time()
        self._rate = self.arrival_rate(now) + 1.0 / ARRIVAL_TAU_S
        self._rate_at = now
        await ticket.done.wait()
        if isinstance(ticket.error, Unstorable):
            raise ticket.error
        if ticket.error is not None:
            raise WriteFailed(str(ticket.error)) from ticket.error
        return ticket.inserted, rows - ticket.inserted

    def close(self) -> None:
        """Stop intake; `run` commits what was already accepted, then returns."""
        self._send.close()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The writer: `connections` lanes, each taking a batch, committing it on its own
        connection and waking its waiters, until the inbox is closed and empty.

        Lanes commit concurrently (PostgreSQL runs each in its own backend). They cannot
        deadlock: every statement takes its row locks in key order. One lane gathers at a
        time: while a lane lingers for its batch the others wait for their turn, so the
        requests arriving meanwhile all go to that batch instead of being split among lanes
        lingering side by side (commits half as full for the same wait); a lane commits
        while the next one gathers.
        """
        gathering = anyio.Lock()
        try:
            async with self._receive, anyio.create_task_group() as tg:
                for lane in range(self._lanes):
                    inbox = self._receive.clone()
                    tg.start_soon(self._lane, inbox, gathering, name=f"writer lane {lane}")
                task_status.started()
        finally:
            self.closed.set()

    async def _lane(self, inbox: MemoryObjectReceiveStream[Ticket], gathering: anyio.Lock) -> None:
        lane = _Lane(self._connect)
        async with inbox:
            try:
                while True:
                    async with gathering:
                        batch = await self._next_batch(inbox)
                    if not batch:
                        break
                    await self._commit(lane, batch)
            finally:
                await lane.close()

    def arrival_rate(self, now: float) -> float:
        """Requests per second submitted lately (decaying with `ARRIVAL_TAU_S`)."""
        return self._rate * math.exp(-(now - self._rate_at) / ARRIVAL_TAU_S)

    def linger_s(self, now: float) -> float:
        """How long a batch waits for more requests after its first: none when fewer than
        one would arrive within the window (an idle writer commits at once: latency first),
        else until `linger_requests` are likely in, at most the window. A commit's fixed
        cost in PostgreSQL (~0.3 ms of CPU for one row) is then shared by several requests
        exactly when the load makes that CPU matter."""
        rate = self.arrival_rate(now)
        if rate * self._window_s < 1.0:
            return 0.0
        return min(self._window_s, (self._linger_requests - 1) / rate)

    async def _next_batch(self, inbox: MemoryObjectReceiveStream[Ticket]) -> list[Ticket]:
        """The next batch: wait for one ticket, then take whatever arrives while it lingers
        (`linger_s`), up to the row cap. Empty when the inbox is closed and drained."""
        first = await self._take(inbox, math.inf)
        if first is None:
            return []
        batch, rows = [first], first.rows
        now = anyio.current_time()
        deadline = now + self.linger_s(now)
        while rows < self._max_rows:
            ticket = await self._take(inbox, deadline - anyio.current_time())
            if ticket is None:
                break
            batch.append(ticket)
            rows += ticket.rows
        return batch

    async def _take(
        self, inbox: MemoryObjectReceiveStream[Ticket], within_s: float
    ) -> Ticket | None:
        """A ticket already waiting, or one arriving within `within_s`; None otherwise."""
        ticket = None
        try:
            ticket = inbox.receive_nowait()
        except anyio.WouldBlock:
            if within_s > 0:
                with anyio.move_on_after(within_s):
                    try:
                        ticket = await inbox.receive()
                    except anyio.EndOfStream:
                        pass
        except anyio.EndOfStream:
            pass
        if ticket is not None:
            self._queued_rows -= ticket.rows
        return ticket

    async def _commit(self, lane: _Lane, batch: list[Ticket]) -> None:
        """Commit `batch` and give every ticket its verdict.

        Shielded: once rows are in flight, the commit finishes (or fails) before anything else
        happens, so a waiter is never left without one. When PostgreSQL refuses the rows
        themselves (`RowsRefused`: one tenant's event whose sum overflows, say), the batch is
        split in halves and each committed on its own, down to the request that carries the
        rows; only that request is refused (`Unstorable`), the others are stored as if it had
        never been there. Any other failure fails every waiter still without a verdict.
        """
        try:
            with anyio.CancelScope(shield=True):
                await self._commit_isolating(lane, batch)
        except BaseException as e:  # every waiter must learn the outcome
            rows = sum(t.rows for t in batch if not t.done.is_set())
            log.error("group commit of %d rows failed: %r", rows, e)
            prometheus.writer_commit_failures.inc()
            lane.drop()
            for ticket in batch:
                if not ticket.done.is_set():
                    ticket.error = e
                    ticket.done.set()
            if not isinstance(e, Exception):
                raise

    async def _commit_isolating(self, lane: _Lane, batch: list[Ticket]) -> None:
        offsets, total = [], 0
        for ticket in batch:
            offsets.append(total)
            total += ticket.rows
        started = time.perf_counter()
        try:
            with anyio.fail_after(self._timeout_s):
                counts = await self._write(await lane.connection(), batch, offsets)
        except RowsRefused as e:
            prometheus.writer_commit_failures.inc()
            if len(batch) == 1:
                log.warning("refused a request of %d rows PostgreSQL cannot store: %s", total, e)
                batch[0].error = Unstorable(str(e))
                batch[0].done.set()
                return
            middle = len(batch) // 2
            await self._commit_isolating(lane, batch[:middle])
            await self._commit_isolating(lane, batch[middle:])
            return
        elapsed = time.perf_counter() - started
        self._commits.append((anyio.current_time(), total))
        prometheus.writer_batch_rows.observe(total)
        prometheus.writer_commit_seconds.observe(elapsed)
        for req, inserted in counts:
            batch[req].inserted = inserted
        for ticket in batch:
            ticket.done.set()

    async def _write(
        self, conn: db.Connection, batch: list[Ticket], offsets: list[int]
    ) -> list[tuple[int, int]]:
        payloads, rows = [t.payload for t in batch], sum(t.rows for t in batch)
        statements = self._sql[self._enrich()]
        return await write_group(
            conn, payloads, offsets, rows, datetime.now(UTC), self._usage_window, statements
        )


class _Lane:
    """One writer lane's connection, opened on first use and replaced after a failure."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._conn: db.Connection | None = None

    async def connection(self) -> db.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await self._connect()
            await prepare_connection(self._conn)
        return self._conn

    def drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        if self._conn is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await self._conn.close()


def commit_rate(commits: Iterable[tuple[float, int]], now: float) -> float | None:
    """Rows per second committed over the last `RATE_WINDOW_S` of `commits` ((time, rows)
    pairs, oldest first); None without a commit in that window."""
    recent = [(t, n) for t, n in commits if t >= now - RATE_WINDOW_S]
    if not recent:
        return None
    return sum(n for _, n in recent) / max(now - recent[0][0], MIN_RATE_SPAN_S)


def retry_after(
    queued_rows: int, commits: Iterable[tuple[float, int]], now: float, saturation: float
) -> int:
    """Seconds until the rows queued now are likely committed (queued rows over the recent
    commit rate), 1 to `MAX_RETRY_AFTER_S`. Without a recent commit (a stuck database, or
    the first seconds) it is 1 to `BLIND_RETRY_AFTER_S`, longer the fuller the inbox."""
    rate = commit_rate(commits, now)
    wait = queued_rows / rate if rate else BLIND_RETRY_AFTER_S * min(1.0, saturation)
    return max(1, min(MAX_RETRY_AFTER_S, math.ceil(wait)))
