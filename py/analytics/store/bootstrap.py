"""A database made ready to serve: schema, partitions, and a customer with its keys.

One sequence for `analytics serve`, the `migrate` and `keys` commands, the load harness and the
tests, so "a working database" means the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from analytics.store.citus import distribute
from analytics.store.keys import CreatedKey, create_customer, create_key
from analytics.store.migrations import migrate
from analytics.store.partitions import ensure_partitions


@dataclass(frozen=True)
class Prepared:
    """What `prepare` did: migrations applied and partitions created (both may be empty)."""

    migrations: list[str]
    partitions: list[str]
    #: Tables made distributed or reference tables (on a Citus coordinator; store/citus.py).
    distributed: tuple[str, ...] = ()


@dataclass(frozen=True)
class CustomerKeys:
    """A customer and one write and one read key for it (shown to the user once)."""

    customer_id: int
    write: CreatedKey
    read: CreatedKey


async def prepare(conn: asyncpg.Connection, now: datetime) -> Prepared:
    """Apply pending migrations, distribute the tables on Citus, then create the event
    partitions around `now`. Idempotent."""
    applied = await migrate(conn)
    distributed = tuple(await distribute(conn))
    return Prepared(applied, await ensure_partitions(conn, now), distributed)


async def first_start(conn: asyncpg.Connection, now: datetime) -> CustomerKeys | None:
    """`prepare`, then, if the database has no customer yet, a `demo` customer with keys."""
    await prepare(conn, now)
    if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM customers)"):
        return None
    return await customer_with_keys(conn, "demo", now)


async def create_customer_key(
    conn: asyncpg.Connection,
    name: str,
    scopes: Iterable[str],
    signing: bool,
    now: datetime,
    *,
    origins: Iterable[str] = (),
) -> tuple[int, CreatedKey]:
    """A new key for the customer `name` (created if missing), in one transaction; with
    `origins`, a publishable one (`keys.create_key`)."""
    async with conn.transaction():
        customer_id = await create_customer(conn, name, now)
        key = await create_key(conn, customer_id, scopes, signing, now, origins=origins)
        return customer_id, key


async def customer_with_keys(
    conn: asyncpg.Connection, name: str, now: datetime, *, signing: bool = False
) -> CustomerKeys:
    """The customer `name` (created if missing) with a new write key (signed if `signing`)
    and a new read key, in one transaction."""
    async with conn.transaction():
        customer_id = await create_customer(conn, name, now)
        write = await create_key(conn, customer_id, {"write"}, signing, now)
        read = await create_key(conn, customer_id, {"read"}, False, now)
    return CustomerKeys(customer_id, write, read)
