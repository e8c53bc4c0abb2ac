"""Leased token buckets: per-key rate limits shared by every worker process and host.

A worker takes a batch of tokens (a lease) from the key's row with one atomic statement and
spends them locally (runtime/leases.py), so PostgreSQL sees one call per lease, not one per
request. The statement refills the bucket by the time elapsed since its last refill (up to
`burst`), grants `min(want, whole tokens available)` and stores what is left; a key's first
lease creates its row with a full bucket. The time comes from the caller (Citus refuses
non-immutable functions such as `now()` in `DO UPDATE SET` on a distributed table); the
bucket's clock never goes back (`refilled_at` only moves forward), so hosts whose clocks
differ by up to d seconds can add at most `rate * d` tokens between them.

Tokens leased are gone from the bucket whether or not they are spent, so over all time a key
is admitted at most `burst + rate * t`; over any interval, at most that plus the tokens that
were leased before the interval and are still unspent (at most one lease per worker).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from analytics.store import db

#: Tokens available: the stored ones plus the refill since the last lease, at most `burst`.
_AVAILABLE = (
    "least($3::float8, b.tokens"
    " + greatest(0, extract(epoch FROM $6::timestamptz - b.refilled_at)) * $4::float8)"
)

_LEASE_SQL = f"""
INSERT INTO rate_buckets AS b (customer_id, key_id, tokens, refilled_at, granted)
VALUES ($1, $2, $3::float8 - least($5::int, floor($3::float8)::int), $6::timestamptz,
        least($5::int, floor($3::float8)::int))
ON CONFLICT (customer_id, key_id) DO UPDATE SET
    granted = least($5::int, floor({_AVAILABLE})::int),
    tokens = {_AVAILABLE} - least($5::int, floor({_AVAILABLE})::int),
    refilled_at = greatest(b.refilled_at, $6::timestamptz)
RETURNING granted, tokens
"""


@dataclass(frozen=True)
class Lease:
    """Tokens granted (0 when the bucket holds less than one), and what the bucket holds
    after the grant."""

    granted: int
    left: float

    def wait_s(self, rate_per_s: float) -> float:
        """Seconds until the bucket holds a whole token again (0 if this lease granted)."""
        if self.granted:
            return 0.0
        return (1.0 - self.left) / rate_per_s if rate_per_s > 0 else float("inf")


async def lease_tokens(
    pool: db.Pool,
    customer_id: int,
    key_id: str,
    want: int,
    *,
    rate_per_s: float,
    burst: float,
    acquire_timeout_s: float | None = None,
    now: datetime | None = None,
) -> Lease:
    """Up to `want` tokens from the key's shared bucket (refilled at `rate_per_s` up to
    `burst`) as of `now` (default: the current time), in one statement."""
    args = (customer_id, key_id, burst, rate_per_s, want, now or datetime.now(UTC))
    async with pool.acquire(timeout=acquire_timeout_s) as conn:
        row = await conn.fetchrow(_LEASE_SQL, *args)
    return Lease(row["granted"], row["tokens"])
