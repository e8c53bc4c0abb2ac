"""A customer's raw events as NDJSON, in the shape `POST /v1/batch` reads back.

Each line is one event: `name`, `event_id`, `ts` (RFC 3339, UTC, µs), `user_id`, `value`,
`properties` (as stored: flattened, so dotted keys). An event stored without an `event_id` was
deduplicated on its content fingerprint; it is exported with its dedup key (`fp:<hex>`) as
its `event_id`, so the same export sent twice (to any customer) is stored once.

Memory stays flat however many events match: rows come from a server-side cursor (which
lives in a transaction) in chunks of `chunk_rows`. The rows come in index order (event name,
then time; ties by exported id, so two exports of the same events are the same bytes), so
PostgreSQL sorts only among events of the same name and time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

import asyncpg
import orjson

#: Rows fetched per round trip.
CHUNK_ROWS = 1000

# `properties` as its JSON text, embedded in the line as is (asyncpg decodes jsonb to text).
_EXPORT_SQL = """
SELECT name, coalesce(event_id, dedup_key) AS event_id, ts, user_id, value,
       properties::text AS properties
FROM events
WHERE customer_id = $1 AND ts >= $2 AND ts < $3 AND ($4::text IS NULL OR name = $4)
ORDER BY name, ts, 2
"""


def ndjson_line(row: asyncpg.Record) -> bytes:
    """One exported row as an NDJSON line (with its newline)."""
    event = {
        "name": row["name"],
        "event_id": row["event_id"],
        "ts": row["ts"],
        "user_id": row["user_id"],
        "value": row["value"],
        "properties": orjson.Fragment(row["properties"]),
    }
    return orjson.dumps(event, option=orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE)


async def export_events(
    conn: asyncpg.Connection,
    customer_id: int,
    start: datetime,
    end: datetime,
    name: str | None = None,
    *,
    chunk_rows: int = CHUNK_ROWS,
) -> AsyncIterator[bytes]:
    """The customer's events with `start <= ts < end` (named `name`, if given), as NDJSON,
    one chunk of up to `chunk_rows` lines at a time. The cursor's transaction stays open
    until the iterator is exhausted or closed (use `contextlib.aclosing`)."""
    async with conn.transaction(readonly=True):
        cursor = await conn.cursor(_EXPORT_SQL, customer_id, start, end, name)
        while rows := await cursor.fetch(chunk_rows):
            yield b"".join(ndjson_line(r) for r in rows)
