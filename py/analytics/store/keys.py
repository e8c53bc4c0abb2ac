"""Customers and API keys.

A key reads `ak_<customer_id>_<key_id>_<secret>`: the customer and the random 8-hex key id make
a lookup one primary-key hit (and carry the shard key under Citus); the secret is 43 urlsafe
characters (256 bits). Only sha256(key) is stored. A key may carry a signing secret (32 random
bytes, given to the user hex-encoded); it is stored raw because the server needs it to verify
request HMACs. Times come from the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

#: The scopes a key may hold: "write" to send events, "read" to query metrics.
SCOPES = frozenset({"write", "read"})

_KEY = re.compile(r"ak_([1-9][0-9]{0,18})_([0-9a-f]{8})_[A-Za-z0-9_-]{32,}")
_MAX_BIGINT = 2**63 - 1


@dataclass(frozen=True)
class CreatedKey:
    """A new key, as shown to the user once; `signing_secret` is hex, or None if unsigned."""

    customer_id: int
    key: str
    signing_secret: str | None
    scopes: frozenset[str]


@dataclass(frozen=True)
class KeyInfo:
    """A valid, unrevoked key; `signing_secret` (raw bytes) is set when requests must be signed."""

    customer_id: int
    key_id: str
    scopes: frozenset[str]
    signing_secret: bytes | None


def _hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _parse(key: str) -> tuple[int, str] | None:
    match = _KEY.fullmatch(key)
    if match is None or int(match[1]) > _MAX_BIGINT:
        return None
    return int(match[1]), match[2]


def validate_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """`scopes` as a frozenset; ValueError if empty or holding a scope not in SCOPES."""
    result = frozenset(scopes)
    if not result:
        raise ValueError("a key needs at least one scope")
    if unknown := result - SCOPES:
        raise ValueError(f"unknown scopes: {', '.join(sorted(unknown))}")
    return result


async def create_customer(conn: asyncpg.Connection, name: str, now: datetime) -> int:
    """The id of the customer named `name`, created (at `now`) if missing."""
    customer_id = await conn.fetchval(
        "INSERT INTO customers (name, created_at) VALUES ($1, $2)"
        " ON CONFLICT (name) DO NOTHING RETURNING customer_id",
        name,
        now,
    )
    if customer_id is None:
        customer_id = await conn.fetchval("SELECT customer_id FROM customers WHERE name = $1", name)
    return customer_id


async def create_key(
    conn: asyncpg.Connection,
    customer_id: int,
    scopes: Iterable[str],
    signing: bool,
    now: datetime,
) -> CreatedKey:
    """A new key for an existing customer, with `scopes` (see `validate_scopes`) and, if
    `signing`, a signing secret."""
    scope_set = validate_scopes(scopes)
    signing_secret = secrets.token_bytes(32) if signing else None
    while True:  # a fresh key id on the (1 in 4 billion) clash with one of the customer's keys
        key_id = secrets.token_hex(4)
        key = f"ak_{customer_id}_{key_id}_{secrets.token_urlsafe(32)}"
        inserted = await conn.fetchval(
            "INSERT INTO api_keys"
            " (customer_id, key_id, key_hash, scopes, signing_secret, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6)"
            " ON CONFLICT (customer_id, key_id) DO NOTHING RETURNING true",
            customer_id,
            key_id,
            _hash(key),
            sorted(scope_set),
            signing_secret,
            now,
        )
        if inserted:
            return CreatedKey(
                customer_id, key, signing_secret.hex() if signing_secret else None, scope_set
            )


async def lookup_key(
    db: asyncpg.Connection | asyncpg.Pool, key: str, *, acquire_timeout_s: float | None = None
) -> KeyInfo | None:
    """The key's info, or None if it is malformed, unknown, wrong or revoked. A malformed key
    is refused before any connection is taken from a pool."""
    parsed = _parse(key)
    if parsed is None:
        return None
    customer_id, key_id = parsed
    sql = (
        "SELECT key_hash, scopes, signing_secret FROM api_keys"
        " WHERE customer_id = $1 AND key_id = $2 AND revoked_at IS NULL"
    )
    if isinstance(db, asyncpg.Pool):
        async with db.acquire(timeout=acquire_timeout_s) as conn:
            row = await conn.fetchrow(sql, customer_id, key_id)
    else:
        row = await db.fetchrow(sql, customer_id, key_id)
    if row is None or not hmac.compare_digest(row["key_hash"], _hash(key)):
        return None
    return KeyInfo(customer_id, key_id, frozenset(row["scopes"]), row["signing_secret"])


async def revoke_key(conn: asyncpg.Connection, key: str, now: datetime) -> bool:
    """Revoke the key (as of `now`); False if it is malformed, unknown or already revoked."""
    parsed = _parse(key)
    if parsed is None:
        return False
    revoked = await conn.fetchval(
        "UPDATE api_keys SET revoked_at = $3"
        " WHERE customer_id = $1 AND key_id = $2 AND key_hash = $4 AND revoked_at IS NULL"
        " RETURNING true",
        *parsed,
        now,
        _hash(key),
    )
    return bool(revoked)
