"""LISTEN/NOTIFY: the channels, sending, and one listener loop for every subscriber.

A worker has one listener for all its channels (see `listen`). It owns a direct connection
(a pooled one runs `UNLISTEN *` on release, and transaction-mode poolers cannot LISTEN at
all), reconnects with backoff when it is lost, and tells its subscribers when it goes deaf,
because notifications sent meanwhile are gone: the query cache drops everything then, the
flags reload. NOTIFY is sent by the app (never by a trigger), so under Citus it goes to the
coordinator, where the listeners are.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

import anyio
import asyncpg
from anyio.abc import TaskStatus

from analytics.store import db

log = logging.getLogger(__name__)

#: Commits announce the (customer, event, time range) they touched, for the query cache.
INVALIDATE = "analytics_invalidate"
#: `analytics flags set` announces a changed flag.
FLAGS = "analytics_flags"

Connect = Callable[[], Awaitable[db.Connection]]


async def notify(db: db.Pool | db.Connection, channel: str, payload: str) -> None:
    await db.execute("SELECT pg_notify($1, $2)", channel, payload)


async def listen(
    connect: Connect,
    channels: Mapping[str, Callable[[str], None]],
    *,
    on_up: Callable[[], Awaitable[None] | None] = lambda: None,
    on_down: Callable[[], None] = lambda: None,
    max_backoff_s: float = 5.0,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """LISTEN on every channel of `channels` until cancelled, on one connection, calling
    `channels[channel](payload)` on the loop for each notification. One connection for all a
    worker's channels: PostgreSQL wakes every listening backend of the database for every
    NOTIFY, whatever its channels, so each listening connection costs the database CPU on
    every commit (measured at 500 single events/s: ~12 µs per event per listener).

    `on_up` runs (awaited if it returns an awaitable) each time LISTEN is in place, before
    `task_status.started()` the first time; `on_down` runs each time the connection is lost or
    closed. Started once the first LISTEN is in place, or once the first attempt failed (the
    subscriber then knows from `on_up` not having run that it is deaf).
    """
    started = False
    backoff = 0.1
    names = ", ".join(channels)
    while True:
        try:
            conn = await connect()
        except (OSError, asyncpg.PostgresError, TimeoutError) as e:
            log.warning("LISTEN %s cannot connect: %r", names, e)
        else:
            closed = anyio.Event()
            conn.add_termination_listener(lambda _conn, closed=closed: closed.set())
            try:
                for channel, on_payload in channels.items():
                    await conn.add_listener(
                        channel, lambda _c, _pid, _ch, payload, f=on_payload: f(payload)
                    )
                up = on_up()
                if up is not None:
                    await up
                backoff = 0.1
                if not started:
                    started = True
                    task_status.started()
                await closed.wait()
            except (OSError, asyncpg.PostgresError, TimeoutError) as e:
                log.warning("LISTEN %s lost: %r", names, e)
            finally:
                on_down()
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    await conn.close()
        if not started:
            started = True
            task_status.started()
        await anyio.sleep(backoff)
        backoff = min(backoff * 2, max_backoff_s)
