"""Customers and API keys.

A key reads `ak_<customer_id>_<key_id>_<secret>`: the customer and the random 8-hex key id make
a lookup one primary-key hit (and carry the shard key under Citus); the secret is 43 urlsafe
characters (256 bits). Only sha256(key) is stored. A key may carry a signing secret
(`ansk_` + 43 urlsafe characters: the secret as printed is the HMAC key); it is stored as
the HMAC key's bytes because the server needs it to verify request HMACs (store/signing.py:
formats, legacy hex secrets, rotation). A publishable key (write-only, never signing) lists
the browser origins it may be used from. Times come from the caller.

Customer names are what operators type (`keys create --customer NAME`): trimmed, 1 to 100
printable characters. Each key records when it was last used, to the hour (`lookup_key` sets
it in its one statement only when the stored time is older than `LAST_USED_RESOLUTION`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from analytics.store.signing import hmac_keys, new_signing_secret, validate_origins

#: The scopes a key may hold: "write" to send events, "read" to query metrics.
SCOPES = frozenset({"write", "read"})

#: Longest customer name, in characters (after trimming).
MAX_CUSTOMER_NAME_CHARS = 100

#: `last_used_at` is written when the stored time is older than this: at most one row update
#: per key and hour, whatever the request rate.
LAST_USED_RESOLUTION = timedelta(hours=1)

_KEY_ID = re.compile(r"[0-9a-f]{8}")
_KEY = re.compile(r"ak_([1-9][0-9]{0,18})_([0-9a-f]{8})_[A-Za-z0-9_-]{32,}")
_MAX_BIGINT = 2**63 - 1


@dataclass(frozen=True)
class CreatedKey:
    """A new key, as shown to the user once; `signing_secret` (`ansk_...`, the HMAC key as
    text) or None if unsigned; `origins` are set for a publishable key."""

    customer_id: int
    key: str
    signing_secret: str | None
    scopes: frozenset[str]
    origins: tuple[str, ...] = ()


@dataclass(frozen=True)
class KeyInfo:
    """A valid, unrevoked key. `signing_keys`, when not empty, are the HMAC keys a request's
    signature may be made with (requests must be signed): the current secret's, then, while
    a rotation overlaps, the previous one's. A publishable key may be used by browsers at
    `origins` (and by nothing that reads)."""

    customer_id: int
    key_id: str
    scopes: frozenset[str]
    signing_keys: tuple[bytes, ...] = ()
    publishable: bool = False
    origins: frozenset[str] = frozenset()


@dataclass(frozen=True)
class KeyListing:
    """A key as `keys list` shows it: never the key itself, which is not stored."""

    key_id: str
    customer: str
    customer_id: int
    scopes: frozenset[str]
    signing: bool
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    #: When the previous signing secret of a rotation stops being accepted (None: none).
    previous_signing_until: datetime | None = None
    origins: tuple[str, ...] = ()


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


def validate_customer_name(name: str) -> str:
    """`name` trimmed; ValueError if that is empty, longer than `MAX_CUSTOMER_NAME_CHARS`, or
    holds a character that is not printable (control characters, line breaks, other
    separators than the space, unassigned or private-use code points)."""
    trimmed = name.strip()
    if not trimmed:
        raise ValueError("a customer name must not be empty")
    if len(trimmed) > MAX_CUSTOMER_NAME_CHARS:
        raise ValueError(f"a customer name has at most {MAX_CUSTOMER_NAME_CHARS} characters")
    if not trimmed.isprintable():
        bad = next(c for c in trimmed if not c.isprintable())
        raise ValueError(f"a customer name must be printable (found U+{ord(bad):04X})")
    return trimmed


async def create_customer(conn: asyncpg.Connection, name: str, now: datetime) -> int:
    """The id of the customer named `name` (see `validate_customer_name`, which may raise
    ValueError; the trimmed name is stored), created (at `now`) if missing."""
    name = validate_customer_name(name)
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
    *,
    origins: Iterable[str] = (),
) -> CreatedKey:
    """A new key for an existing customer, with `scopes` (see `validate_scopes`) and, if
    `signing`, a signing secret. With `origins` the key is publishable (browsers at those
    origins may send with it): ValueError unless it is write-only and unsigned, or if an
    origin is not `scheme://host[:port]`."""
    scope_set = validate_scopes(scopes)
    allowed = validate_origins(origins)
    if allowed and (signing or scope_set != {"write"}):
        raise ValueError(
            "a publishable key is write-only and never signing: browsers cannot keep a"
            " secret, and anyone may read what a web page holds"
        )
    signing_secret = new_signing_secret() if signing else None
    while True:  # a fresh key id on the (1 in 4 billion) clash with one of the customer's keys
        key_id = secrets.token_hex(4)
        key = f"ak_{customer_id}_{key_id}_{secrets.token_urlsafe(32)}"
        inserted = await conn.fetchval(
            "INSERT INTO api_keys (customer_id, key_id, key_hash, scopes, signing_secret,"
            " signing_format, created_at, publishable, allowed_origins)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            " ON CONFLICT (customer_id, key_id) DO NOTHING RETURNING true",
            customer_id,
            key_id,
            _hash(key),
            sorted(scope_set),
            signing_secret.encode() if signing_secret else None,
            "text" if signing_secret else None,
            now,
            bool(allowed),
            list(allowed),
        )
        if inserted:
            return CreatedKey(customer_id, key, signing_secret, scope_set, allowed)


# One round trip: the row, and `last_used_at` moved forward when it is older than the
# resolution (an UPDATE in a WITH runs whether or not the query reads it). Only the right
# key marks itself used; an unknown, wrong or revoked key matches no row in either part.
_LOOKUP_SQL = """
WITH touched AS (
    UPDATE api_keys SET last_used_at = $4
    WHERE customer_id = $1 AND key_id = $2 AND key_hash = $3 AND revoked_at IS NULL
      AND (last_used_at IS NULL OR last_used_at < $4::timestamptz - $5::interval)
)
SELECT key_hash, scopes, signing_secret, signing_format, publishable, allowed_origins,
       CASE WHEN previous_signing_expires_at > $4 THEN previous_signing_secret END AS previous,
       previous_signing_format
FROM api_keys
WHERE customer_id = $1 AND key_id = $2 AND revoked_at IS NULL
"""


async def lookup_key(
    db: asyncpg.Connection | asyncpg.Pool,
    key: str,
    *,
    acquire_timeout_s: float | None = None,
    now: datetime | None = None,
) -> KeyInfo | None:
    """The key's info, or None if it is malformed, unknown, wrong or revoked. A malformed key
    is refused before any connection is taken from a pool. A valid key's `last_used_at` is
    set to `now` (default: the current time) when older than `LAST_USED_RESOLUTION`, in the
    same statement."""
    parsed = _parse(key)
    if parsed is None:
        return None
    customer_id, key_id = parsed
    digest = _hash(key)
    args = (customer_id, key_id, digest, now or datetime.now(UTC), LAST_USED_RESOLUTION)
    if isinstance(db, asyncpg.Pool):
        async with db.acquire(timeout=acquire_timeout_s) as conn:
            row = await conn.fetchrow(_LOOKUP_SQL, *args)
    else:
        row = await db.fetchrow(_LOOKUP_SQL, *args)
    if row is None or not hmac.compare_digest(row["key_hash"], digest):
        return None
    signing = hmac_keys(row["signing_secret"], row["signing_format"])
    signing += hmac_keys(row["previous"], row["previous_signing_format"])
    return KeyInfo(
        customer_id,
        key_id,
        frozenset(row["scopes"]),
        signing,
        row["publishable"],
        frozenset(row["allowed_origins"]),
    )


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


def is_key_id(text: str) -> bool:
    """Whether `text` is a key id (8 lowercase hex digits) rather than a whole key."""
    return _KEY_ID.fullmatch(text) is not None


class AmbiguousKeyId(Exception):
    """Several customers hold an active key with this id: name the customer."""

    def __init__(self, key_id: str, customers: list[str]) -> None:
        super().__init__(f"key id {key_id} is held by several customers: {', '.join(customers)}")
        self.customers = customers


# Matches the active keys with the id (of the named customer), and revokes only if exactly
# one matches; returns every match's customer name.
_REVOKE_ID_SQL = """
WITH found AS (
    SELECT k.customer_id, c.name FROM api_keys k JOIN customers c USING (customer_id)
    WHERE k.key_id = $1 AND k.revoked_at IS NULL AND ($3::text IS NULL OR c.name = $3)
), revoked AS (
    UPDATE api_keys SET revoked_at = $2
    WHERE key_id = $1 AND revoked_at IS NULL
      AND customer_id = (SELECT customer_id FROM found WHERE (SELECT count(*) FROM found) = 1)
)
SELECT name FROM found ORDER BY name
"""


async def revoke_key_id(
    conn: asyncpg.Connection, key_id: str, now: datetime, *, customer: str | None = None
) -> str | None:
    """Revoke the active key with this id (of the customer named `customer`, if given), as of
    `now`; the customer's name, or None if no active key matches. Raises `AmbiguousKeyId`,
    revoking nothing, when keys of several customers match (ids are unique per customer)."""
    if not is_key_id(key_id):
        return None
    names = [r["name"] for r in await conn.fetch(_REVOKE_ID_SQL, key_id, now, customer)]
    if len(names) > 1:
        raise AmbiguousKeyId(key_id, names)
    return names[0] if names else None


async def list_keys(conn: asyncpg.Connection, customer: str | None = None) -> list[KeyListing]:
    """Every key (revoked ones too), of the customer named `customer` if given, by customer
    name then creation time."""
    rows = await conn.fetch(
        "SELECT k.key_id, c.name, k.customer_id, k.scopes, k.signing_secret IS NOT NULL AS signing,"
        " k.created_at, k.last_used_at, k.revoked_at, k.allowed_origins,"
        " CASE WHEN k.previous_signing_secret IS NOT NULL"
        "  THEN k.previous_signing_expires_at END AS previous_until"
        " FROM api_keys k JOIN customers c USING (customer_id)"
        " WHERE $1::text IS NULL OR c.name = $1"
        " ORDER BY c.name, k.created_at, k.key_id",
        customer,
    )
    return [
        KeyListing(
            r["key_id"],
            r["name"],
            r["customer_id"],
            frozenset(r["scopes"]),
            r["signing"],
            r["created_at"],
            r["last_used_at"],
            r["revoked_at"],
            r["previous_until"],
            tuple(r["allowed_origins"]),
        )
        for r in rows
    ]
