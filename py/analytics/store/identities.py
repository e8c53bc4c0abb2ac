"""Identity links (0006_identities.sql): an anonymous id to the user it was identified as.

Written by the Segment and PostHog compatible endpoints; read by `unique_users` queries
(store/series.py), which count an anonymous id's events as its user's.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg


def identity_join(alias: str) -> str:
    """`IDENTITY_JOIN` for events under another alias (`alias` has customer_id, user_id)."""
    return (
        f"LEFT JOIN identities i ON i.customer_id = {alias}.customer_id"
        f" AND i.anonymous_id = {alias}.user_id"
    )


def identified_user(alias: str) -> str:
    """`IDENTIFIED_USER` for events under another alias."""
    return f"coalesce(i.user_id, {alias}.user_id)"


#: An event's user as identified, in SQL over `events e` joined with `IDENTITY_JOIN`: the
#: user its anonymous id is linked to, else its own `user_id`. The sketches the rollup job
#: writes and the unfolded events a unique-users estimate reads must count users alike.
IDENTITY_JOIN = identity_join("e")
IDENTIFIED_USER = identified_user("e")

# The first link of an anonymous id wins: a retry, or a second identify of the same device
# as someone else, changes nothing already counted.
_LINK_SQL = """
INSERT INTO identities (customer_id, anonymous_id, user_id, first_seen)
SELECT $1, a, u, $4 FROM unnest($2::text[], $3::text[]) AS t(a, u)
ORDER BY a
ON CONFLICT (customer_id, anonymous_id) DO NOTHING
"""


async def link_identities(
    pool: asyncpg.Pool,
    customer_id: int,
    links: list[tuple[str, str]],
    now: datetime,
    *,
    acquire_timeout_s: float,
    timeout_s: float,
) -> None:
    """Store (anonymous id, user id) links, committed when this returns (one statement)."""
    if not links:
        return
    anonymous = [a for a, _ in links]
    users = [u for _, u in links]
    async with pool.acquire(timeout=acquire_timeout_s) as conn:
        await conn.execute(_LINK_SQL, customer_id, anonymous, users, now, timeout=timeout_s)
