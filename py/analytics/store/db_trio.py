"""The database seam on Trio: asyncpg on an asyncio loop in a thread of its own.

asyncpg runs only on asyncio, so in a Trio process one asyncio loop (uvloop when installed)
runs in a daemon thread, started on first use, and owns every asyncpg object. `TrioPool` and
`TrioConnection` hold those objects and offer `db.Pool` and `db.Connection`: each call is one
hop (`LoopThread.call`), which starts the asyncpg coroutine as a task on that loop and parks
the Trio task until it is done.

- Results and exceptions cross unchanged (asyncpg's own Records and errors).
- Cancellation: a cancelled Trio task cancels the asyncio task and *waits for it to end*
  before it raises `trio.Cancelled`, so a connection is never handed on while asyncpg is
  still using it (asyncpg's own cancellation then runs as it does on asyncio: a cancel
  request to the server; `Pool.release` is shielded inside asyncpg).
- LISTEN and termination callbacks fire on the loop thread; they are handed to the Trio run
  that registered them (`run_sync_soon`), so subscribers run on their own loop as before.

Why a thread rather than trio-asyncio (an asyncio loop hosted inside Trio): measured on this
machine, pinned to one core, a trio-asyncio call cost ~260-330 us more than plain asyncio,
the thread hop ~70-90 us (README, "Event loops"); and a thread replaces no global asyncio
policy and needs no extra package (trio-asyncio does not import on Python 3.14 yet).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import asyncpg
import outcome
import trio


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # e.g. Windows: plain asyncio
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class LoopThread:
    """An asyncio loop running forever in a daemon thread, and the hop to it from Trio."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop, started on first use (callbacks scheduled before it runs wait for it)."""
        if self._loop is None:
            loop = self._loop = _new_loop()
            threading.Thread(target=loop.run_forever, name="asyncpg loop", daemon=True).start()
        return self._loop

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`await fn(*args, **kwargs)` on the loop thread (the coroutine is created there)."""
        loop = self.loop
        token = trio.lowlevel.current_trio_token()
        waiter = trio.lowlevel.current_task()
        started: list[asyncio.Future[Any]] = []
        cancelled = False

        def deliver(result: outcome.Outcome[Any]) -> None:  # on the loop thread
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, waiter, result)
            except trio.RunFinishedError:
                pass  # the Trio run is gone: nobody is waiting any more

        def done(task: asyncio.Future[Any]) -> None:
            if task.cancelled():
                deliver(outcome.Error(asyncio.CancelledError()))
            elif (error := task.exception()) is not None:
                deliver(outcome.Error(error))
            else:
                deliver(outcome.Value(task.result()))

        def start() -> None:  # on the loop thread
            try:
                task = asyncio.ensure_future(fn(*args, **kwargs))
            except BaseException as e:
                deliver(outcome.Error(e))
                return
            started.append(task)
            task.add_done_callback(done)

        def cancel() -> None:  # on the loop thread, always after `start` (FIFO)
            if started:
                started[0].cancel()

        def abort(_raise_cancel: object) -> trio.lowlevel.Abort:
            nonlocal cancelled
            cancelled = True
            loop.call_soon_threadsafe(cancel)
            return trio.lowlevel.Abort.FAILED  # we are woken once the task has ended

        loop.call_soon_threadsafe(start)
        try:
            return await trio.lowlevel.wait_task_rescheduled(abort)
        except asyncio.CancelledError:
            if cancelled:
                await trio.lowlevel.checkpoint()  # raises trio.Cancelled: the scope still is
            raise

    def on_trio(self, callback: Callable[..., None]) -> Callable[..., None]:
        """`callback` wrapped to run on the calling Trio run when called from the loop."""
        token = trio.lowlevel.current_trio_token()

        def hand_over(*args: Any) -> None:
            try:
                token.run_sync_soon(callback, *args)
            except trio.RunFinishedError:
                pass

        return hand_over


#: The process's one loop thread: every Trio pool and connection lives on it.
LOOP = LoopThread()


async def _create_pool(dsn: str, kwargs: dict[str, Any]) -> asyncpg.Pool:
    return await asyncpg.create_pool(dsn, **kwargs)


async def _acquire(pool: asyncpg.Pool, kwargs: dict[str, Any]) -> asyncpg.Connection:
    return await pool.acquire(**kwargs)


async def _cursor(conn: asyncpg.Connection, query: str, args: tuple[Any, ...]) -> Any:
    return await conn.cursor(query, *args)


class TrioTransaction:
    """`async with conn.transaction():` on Trio: start, then commit or roll back, on the loop."""

    __slots__ = ("_tx",)

    def __init__(self, tx: Any) -> None:
        self._tx = tx

    async def __aenter__(self) -> TrioTransaction:
        await LOOP.call(self._tx.__aenter__)
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await LOOP.call(self._tx.__aexit__, *exc)


class TrioCursor:
    __slots__ = ("_cursor",)

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    async def fetch(self, n: int, **kwargs: Any) -> list[Any]:
        return await LOOP.call(self._cursor.fetch, n, **kwargs)


class TrioConnection:
    """An `asyncpg.Connection` on the loop thread, offered as `db.Connection` to Trio."""

    __slots__ = ("raw",)

    def __init__(self, raw: asyncpg.Connection) -> None:
        self.raw = raw

    @classmethod
    async def connect(cls, dsn: str, **kwargs: Any) -> TrioConnection:
        return cls(await LOOP.call(asyncpg.connect, dsn, **kwargs))

    async def fetch(self, *args: Any, **kwargs: Any) -> list[Any]:
        return await LOOP.call(self.raw.fetch, *args, **kwargs)

    async def fetchrow(self, *args: Any, **kwargs: Any) -> Any:
        return await LOOP.call(self.raw.fetchrow, *args, **kwargs)

    async def fetchval(self, *args: Any, **kwargs: Any) -> Any:
        return await LOOP.call(self.raw.fetchval, *args, **kwargs)

    async def execute(self, *args: Any, **kwargs: Any) -> str:
        return await LOOP.call(self.raw.execute, *args, **kwargs)

    async def executemany(self, *args: Any, **kwargs: Any) -> None:
        return await LOOP.call(self.raw.executemany, *args, **kwargs)

    async def copy_to_table(self, *args: Any, **kwargs: Any) -> str:
        return await LOOP.call(self.raw.copy_to_table, *args, **kwargs)

    def transaction(self, **kwargs: Any) -> TrioTransaction:
        return TrioTransaction(self.raw.transaction(**kwargs))

    async def cursor(self, query: str, *args: Any) -> TrioCursor:
        return TrioCursor(await LOOP.call(_cursor, self.raw, query, args))

    async def add_listener(self, channel: str, callback: Callable[..., None]) -> None:
        await LOOP.call(self.raw.add_listener, channel, LOOP.on_trio(callback))

    def add_termination_listener(self, callback: Callable[..., None]) -> None:
        LOOP.loop.call_soon_threadsafe(self.raw.add_termination_listener, LOOP.on_trio(callback))

    def is_closed(self) -> bool:
        return self.raw.is_closed()

    def terminate(self) -> None:
        LOOP.loop.call_soon_threadsafe(self.raw.terminate)

    async def close(self, **kwargs: Any) -> None:
        await LOOP.call(self.raw.close, **kwargs)


class _Acquired:
    __slots__ = ("_conn", "_kwargs", "_pool")

    def __init__(self, pool: asyncpg.Pool, kwargs: dict[str, Any]) -> None:
        self._pool, self._kwargs = pool, kwargs
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> TrioConnection:
        self._conn = await LOOP.call(_acquire, self._pool, self._kwargs)
        return TrioConnection(self._conn)

    async def __aexit__(self, *exc: Any) -> None:
        conn, self._conn = self._conn, None
        await LOOP.call(self._pool.release, conn)


class TrioPool:
    """An `asyncpg.Pool` on the loop thread, offered as `db.Pool` to Trio."""

    __slots__ = ("raw",)

    def __init__(self, raw: asyncpg.Pool) -> None:
        self.raw = raw

    @classmethod
    async def create(cls, dsn: str, **kwargs: Any) -> TrioPool:
        return cls(await LOOP.call(_create_pool, dsn, kwargs))

    async def fetch(self, *args: Any, **kwargs: Any) -> list[Any]:
        return await LOOP.call(self.raw.fetch, *args, **kwargs)

    async def fetchrow(self, *args: Any, **kwargs: Any) -> Any:
        return await LOOP.call(self.raw.fetchrow, *args, **kwargs)

    async def fetchval(self, *args: Any, **kwargs: Any) -> Any:
        return await LOOP.call(self.raw.fetchval, *args, **kwargs)

    async def execute(self, *args: Any, **kwargs: Any) -> str:
        return await LOOP.call(self.raw.execute, *args, **kwargs)

    def acquire(self, **kwargs: Any) -> _Acquired:
        return _Acquired(self.raw, kwargs)

    async def close(self) -> None:
        await LOOP.call(self.raw.close)
