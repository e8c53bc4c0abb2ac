"""Rotating a key's signing secret with an overlap, and the origins preflights may come from.

`rotate_signing` keeps the current secret as the previous one (accepted until `expires_at`)
and sets a new `ansk_` secret; `retire_signing` stops accepting the previous one at once. One
rotation at a time: a key whose previous secret is still accepted refuses another rotation,
so a producer still on the oldest secret is never cut off silently.

`origin_listed` answers CORS preflights, which carry an `Origin` but no key: is that origin
listed by any active publishable key? (The key itself is checked on the request that follows.)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from analytics.store.keys import AmbiguousKeyId, is_key_id
from analytics.store.signing import new_signing_secret


class RotationRefused(Exception):
    """The key cannot be rotated or retired as asked; the message says why."""


@dataclass(frozen=True)
class Rotation:
    customer: str
    #: The new secret as printed (and as used as the HMAC key).
    secret: str
    #: Until when the previous secret is accepted too.
    previous_until: datetime


_FIND_SQL = """
SELECT k.customer_id, c.name, k.signing_secret IS NOT NULL AS signing,
       k.previous_signing_secret IS NOT NULL AND k.previous_signing_expires_at > $2 AS overlapping,
       k.previous_signing_expires_at
FROM api_keys k JOIN customers c USING (customer_id)
WHERE k.key_id = $1 AND k.revoked_at IS NULL AND ($3::text IS NULL OR c.name = $3)
ORDER BY c.name
FOR UPDATE OF k
"""


async def _find(
    conn: asyncpg.Connection, key_id: str, now: datetime, customer: str | None
) -> asyncpg.Record:
    if not is_key_id(key_id):
        raise RotationRefused(f"not a key id (8 hex digits, as `keys list` shows): {key_id}")
    rows = await conn.fetch(_FIND_SQL, key_id, now, customer)
    if len(rows) > 1:
        raise AmbiguousKeyId(key_id, [r["name"] for r in rows])
    if not rows:
        scope = f" of customer {customer}" if customer else ""
        raise RotationRefused(f"no such active key{scope}: {key_id}")
    row = rows[0]
    if not row["signing"]:
        raise RotationRefused(f"key {key_id} has no signing secret (it was created unsigned)")
    return row


async def rotate_signing(
    conn: asyncpg.Connection,
    key_id: str,
    now: datetime,
    expires_at: datetime,
    *,
    customer: str | None = None,
) -> Rotation:
    """A new signing secret for the active key `key_id`; the current one stays accepted
    until `expires_at` (or `retire_signing`). Raises RotationRefused or AmbiguousKeyId."""
    async with conn.transaction():
        row = await _find(conn, key_id, now, customer)
        if row["overlapping"]:
            raise RotationRefused(
                f"key {key_id} is mid-rotation: its previous secret is accepted until"
                f" {row['previous_signing_expires_at']:%Y-%m-%d %H:%M:%S %Z}; retire it first"
                f" (`analytics keys retire-signing {key_id}`)"
            )
        secret = new_signing_secret()
        await conn.execute(
            "UPDATE api_keys SET previous_signing_secret = signing_secret,"
            " previous_signing_format = signing_format, previous_signing_expires_at = $3,"
            " signing_secret = $4, signing_format = 'text'"
            " WHERE customer_id = $1 AND key_id = $2",
            row["customer_id"],
            key_id,
            expires_at,
            secret.encode(),
        )
    return Rotation(row["name"], secret, expires_at)


async def retire_signing(
    conn: asyncpg.Connection, key_id: str, now: datetime, *, customer: str | None = None
) -> str:
    """Stop accepting the previous signing secret of `key_id` (as of `now`); the customer's
    name. Raises RotationRefused (no rotation in progress, ...) or AmbiguousKeyId."""
    async with conn.transaction():
        row = await _find(conn, key_id, now, customer)
        if not row["overlapping"]:
            raise RotationRefused(f"key {key_id} has no previous signing secret to retire")
        await conn.execute(
            "UPDATE api_keys SET previous_signing_secret = NULL, previous_signing_format = NULL,"
            " previous_signing_expires_at = NULL WHERE customer_id = $1 AND key_id = $2",
            row["customer_id"],
            key_id,
        )
    return row["name"]


async def origin_listed(pool: asyncpg.Pool, origin: str, *, acquire_timeout_s: float) -> bool:
    """Whether an active publishable key lists `origin` (a preflight's question)."""
    async with pool.acquire(timeout=acquire_timeout_s) as conn:
        found = await conn.fetchval(
            "SELECT true FROM api_keys WHERE publishable AND revoked_at IS NULL"
            " AND allowed_origins @> ARRAY[$1::text] LIMIT 1",
            origin,
        )
    return bool(found)
