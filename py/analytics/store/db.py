"""The one seam every database call passes through: what a pool and a connection offer, and
which implementation the running event loop gets.

asyncpg is the driver, and it runs only on asyncio. So:

- on asyncio and uvloop, `create_pool` and `connect` return asyncpg's own `Pool` and
  `Connection`: no wrapper, no indirection on the hot path, exactly as before this seam;
- on Trio they return `db_trio.TrioPool` and `db_trio.TrioConnection`, which hold the same
  asyncpg objects on an asyncio loop in a dedicated thread and call them through
  `db_trio.LoopThread` (one hop per call; results, errors and cancellation cross it).

The backend is read once, when a pool or connection is opened (`sniffio`), never per query.
Code outside `store/` takes `Pool` and `Connection` (the protocols below) and stays
loop-agnostic; store functions call only the methods listed here, so both implementations
serve them unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import asyncpg
import sniffio

#: A row: asyncpg's Record on every backend (the Trio side returns asyncpg's own results).
Record = asyncpg.Record


class Connection(Protocol):
    """What store functions call on a connection (a subset of `asyncpg.Connection`, with
    asyncpg's arguments, `timeout=` included)."""

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> list[Any]: ...
    async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any: ...
    async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any: ...
    async def execute(self, query: str, *args: Any, **kwargs: Any) -> str: ...
    async def executemany(self, command: str, args: Any, **kwargs: Any) -> None: ...
    async def copy_to_table(self, table_name: str, **kwargs: Any) -> str: ...
    def transaction(self, **kwargs: Any) -> AbstractAsyncContextManager[Any]: ...
    def cursor(self, query: str, *args: Any) -> Any: ...
    async def add_listener(self, channel: str, callback: Callable[..., None]) -> None: ...
    def add_termination_listener(self, callback: Callable[..., None]) -> None: ...
    def is_closed(self) -> bool: ...
    def terminate(self) -> None: ...
    async def close(self, **kwargs: Any) -> None: ...


class Pool(Protocol):
    """What callers use of a pool (a subset of `asyncpg.Pool`)."""

    async def fetch(self, query: str, *args: Any, **kwargs: Any) -> list[Any]: ...
    async def fetchrow(self, query: str, *args: Any, **kwargs: Any) -> Any: ...
    async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any: ...
    async def execute(self, query: str, *args: Any, **kwargs: Any) -> str: ...
    def acquire(self, **kwargs: Any) -> AbstractAsyncContextManager[Any]: ...
    async def close(self) -> None: ...


def on_trio() -> bool:
    """Whether the calling task runs on Trio (else asyncio or uvloop)."""
    return sniffio.current_async_library() == "trio"


async def create_pool(dsn: str, **kwargs: Any) -> Pool:
    """`asyncpg.create_pool(dsn, **kwargs)` for the running backend."""
    if on_trio():
        from analytics.store.db_trio import TrioPool

        return await TrioPool.create(dsn, **kwargs)
    return await asyncpg.create_pool(dsn, **kwargs)


async def connect(dsn: str, **kwargs: Any) -> Connection:
    """`asyncpg.connect(dsn, **kwargs)` for the running backend."""
    if on_trio():
        from analytics.store.db_trio import TrioConnection

        return await TrioConnection.connect(dsn, **kwargs)
    return await asyncpg.connect(dsn, **kwargs)
