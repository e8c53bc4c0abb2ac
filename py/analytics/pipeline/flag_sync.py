"""Keeps this worker's feature flags equal to the `feature_flags` table.

Reloads when `analytics flags set` notifies (`store.notify.FLAGS`), whenever the listener
(re)connects (a notification may have been missed while it was away), and every `refresh_s`
as a safety net.
"""

from __future__ import annotations

import functools

import anyio
from anyio.abc import TaskStatus

from analytics.runtime.flags import Flags
from analytics.store import db
from analytics.store.flag_overrides import load_overrides
from analytics.store.notify import FLAGS, Connect, listen


async def follow_flags(
    flags: Flags,
    listen_connect: Connect,
    pool: db.Pool,
    *,
    refresh_s: float = 30.0,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Until cancelled: reload `flags` from the table on every change notice; started once
    the listener is in place and the flags were loaded (or the first attempt failed)."""
    reload = anyio.Event()

    def on_notice(_payload: str) -> None:
        reload.set()

    async def load() -> None:
        flags.apply(await load_overrides(pool))

    async with anyio.create_task_group() as tg:
        await tg.start(functools.partial(listen, listen_connect, FLAGS, on_notice, on_up=load))
        task_status.started()
        while True:
            with anyio.move_on_after(refresh_s):
                await reload.wait()
            reload = anyio.Event()
            await load()
