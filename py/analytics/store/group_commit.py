"""The group-commit writer's database side: staging table, the one commit statement, and
the transaction that runs them.

The statement is built once (text only); `write_group` is
the only database call of a commit: COPY into staging, then the statement, in one
transaction. The writer (pipeline/writer.py) owns batching, lanes and their connections.
"""

from __future__ import annotations

import re
import struct
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from analytics.normalize import COPY_COLUMNS, COPY_SCHEMA, copy_columns
from analytics.store.dimensions import UNENRICHED
from analytics.store.notify import INVALIDATE

#: Binary COPY file framing around the Rust tuples (which carry neither).
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
COPY_TRAILER = struct.pack("!h", -1)


#: Text compares as bytes, as in the tables (migration 0010): the dedup sorts then use memcmp
#: instead of strcoll.
_COLLATE = {"text": ' COLLATE "C"'}
_STAGING_COLUMNS = ", ".join(
    f"{column} {pg_type}{_COLLATE.get(pg_type, '')}" for column, pg_type in COPY_SCHEMA
)

# temp_buffers only takes effect before the session's first temp table: it comes first, so a
# staging load stays in memory instead of spilling to temp files. The columns are the Rust
# encoder's (`COPY_SCHEMA`, in the order it writes them), then the load order `ord`.
CREATE_STAGING = f"""
SET temp_buffers = '128MB';
SET work_mem = '64MB';
CREATE TEMP TABLE IF NOT EXISTS staging (
    {_STAGING_COLUMNS},
    ord bigint GENERATED ALWAYS AS IDENTITY
) ON COMMIT DELETE ROWS
"""


#: Commits of at most this many rows pass their rows as column arrays to one statement (one
#: round trip, no staging table to fill and truncate: a 1-row commit costs PostgreSQL a
#: quarter of the CPU, see benches/writer_bench.py); larger ones COPY into the staging table,
#: where the fixed cost is shared by many rows and no Python objects are made per row.
ARRAY_ROWS_MAX = 128

#: How each COPY type travels as an array parameter, and how the statement reads it back.
_ARRAY_OF = {
    "text": ("text[]", '{} COLLATE "C"'),
    "timestamptz": ("int8[]", "TIMESTAMPTZ 'epoch' + {} * INTERVAL '1 microsecond'"),
    "double precision": ("float8[]", "{}"),
    "jsonb": ("text[]", "{}::jsonb"),
    "smallint": ("int2[]", "{}"),
}


#: The columns the arrays form's `staging` CTE carries: what the dedup, the winners' sort and
#: the notifications read (`ts` as it travels, µs since the epoch: `ts_us`, the range the
#: notifications send, with no timestamptz to convert back). The winners take the others
#: straight from their arrays (by `ord`), so the wide ones (the properties) are neither
#: copied into the CTE nor hashed for a join back to it, and jsonb is parsed for inserted
#: rows only.
_ARRAYS_STAGED = ("customer_id", "dedup_key", "name", "ts")


def _from_array(column: str, at: str | None = None) -> str:
    """How the arrays form reads `column`: its whole array (for `unnest`), or the element at
    `at`, as the staging table's type."""
    pg_type = dict(COPY_SCHEMA)[column]
    array = f"${4 + COPY_COLUMNS.index(column)}::{_ARRAY_OF[pg_type][0]}"
    return array if at is None else _ARRAY_OF[pg_type][1].format(f"({array})[{at}]")


def _staging_from_arrays() -> str:
    """A `staging` CTE of the `_ARRAYS_STAGED` columns and `ord` (from 1), over `unnest` of
    their parameters (one array per COPY column from $4, as `copy_columns` gives them)."""
    params = ", ".join(_from_array(column) for column in _ARRAYS_STAGED)
    names = ", ".join(_ARRAYS_STAGED)
    reads = ", ".join(
        "u.ts AS ts_us"
        if column == "ts"
        else f"{_ARRAY_OF[dict(COPY_SCHEMA)[column]][1].format('u.' + column)} AS {column}"
        for column in _ARRAYS_STAGED
    )
    return (
        f"staging AS MATERIALIZED (\n    SELECT {reads}, u.ord\n"
        f"    FROM unnest({params}) WITH ORDINALITY AS u({names}, ord)\n)"
    )


#: The events columns the statement inserts, in the order of its INSERT.
_EVENT_COLUMNS = (
    "customer_id", "ts", "name", "dedup_key", "event_id", "received_at", "user_id", "value",
    "properties", "flags",
)  # fmt: skip


@dataclass(frozen=True)
class CommitStatements:
    """The commit statement in its two forms: over the staging table, and over arrays."""

    staged: str
    arrays: str

    @classmethod
    def build(cls, *, enrich: bool = True) -> CommitStatements:
        return cls(commit_sql(enrich=enrich), commit_sql(enrich=enrich, arrays=True))


def commit_sql(*, enrich: bool = True, arrays: bool = False) -> str:
    """One statement: dedup, insert the new events, count per request. (The rollup job folds
    the committed events into the rollups afterwards: store/rollups.py.)

    Parameters: $1 now (timestamptz), $2 request row offsets (bigint[], ascending, starting
    at 0), $3 the billing usage window (interval); in the arrays form (`arrays`, see
    `CommitStatements`), $4.. the column arrays. Rows of one load come from requests in
    order (`ord`); a key seen twice in the load is kept for its first row only (`DISTINCT
    ON` in `ord` order: one sort of the load, where an index on staging cost every COPYed
    row a btree insert and every commit its truncation; 9-14 % of PostgreSQL's CPU per row
    at 1,000-5,000 rows a commit, `python -m benches.writer_bench`). Dedup rows are inserted
    in key order, so concurrent writers (lanes, worker processes) lock them in the same
    order and cannot deadlock. Returns (req, inserted) for each request that inserted at
    least one row, and a row with req -1 (the count of cache-invalidation notifications sent);
    the arrays form returns (req) for each inserted row instead (see `write_group`).

    The arrays form is the same statement with fewer nodes for its few rows (each node costs
    every execution its setup): its `ord` starts at 1, so it needs no `base`; its winners
    carry the narrow columns and read the wide ones from the arrays, so no join back to
    staging; a key repeated in the load is left to ON CONFLICT instead of a DISTINCT; and
    it counts nothing (no aggregates to set up: the caller counts its few rows).
    """
    if arrays:
        head = _staging_from_arrays()
        distinct, rel, winners_from = (
            "",
            "s.ord - 1 AS rel, s.dedup_key, s.name, s.ts_us",
            "staging s",
        )
        row = {
            c: f"w.{c}" if c in _ARRAYS_STAGED else _from_array(c, "w.ord") for c in COPY_COLUMNS
        }
        row["ts"] = _ARRAY_OF["timestamptz"][1].format("w.ts_us")
        row["customer_id"], ins_from = "w.customer_id", "winners w"
        ts_range = "min(ts_us), max(ts_us)"
        counts = """SELECT width_bucket(rel, $2::bigint[]) - 1 AS req FROM winners
UNION ALL  -- a SELECT in a CTE runs only when read: this makes it run (pg_notify reads as '')
SELECT -1 FROM notified WHERE sent IS NULL"""
    else:
        head = (
            "base AS MATERIALIZED (  -- once, not again for every row as inlined\n"
            "    SELECT min(ord) AS ord FROM staging\n)"
        )
        distinct, rel, winners_from = (
            "DISTINCT ",
            "s.ord - base.ord AS rel",
            "staging s CROSS JOIN base",
        )
        row = {c: f"s.{c}" for c in COPY_COLUMNS} | {"customer_id": "w.customer_id"}
        ins_from = "winners w JOIN staging s ON s.ord = w.ord"
        ts_range = (
            "(extract(epoch FROM min(ts)) * 1e6)::bigint,\n"
            "               (extract(epoch FROM max(ts)) * 1e6)::bigint"
        )
        counts = """SELECT width_bucket(rel, $2::bigint[]) - 1 AS req, count(*) AS inserted
FROM winners GROUP BY 1
UNION ALL  -- a SELECT in a CTE runs only when read: this row (req -1) makes it run
SELECT -1, count(*) FROM notified"""
    # The enrichment flag as it stands at this commit, kept with the events (see UNENRICHED).
    if not enrich:
        row["flags"] = f"{row['flags']} | {UNENRICHED}"
    values = ", ".join(row[c] for c in _EVENT_COLUMNS)
    return f"""
WITH {head}, fresh AS (
    INSERT INTO dedup (customer_id, dedup_key, first_seen)
    SELECT {distinct}customer_id::bigint, dedup_key, $1::timestamptz FROM staging
    ORDER BY 1, 2
    ON CONFLICT DO NOTHING
    RETURNING customer_id, dedup_key
), winners AS MATERIALIZED (
    -- Narrow rows (which row won, for whom): sorting and keeping the wide ones (the
    -- properties) cost the commit ~2 us a row.
    SELECT DISTINCT ON (f.customer_id, s.dedup_key)
           f.customer_id, s.ord, {rel}
    FROM {winners_from}
    JOIN fresh f ON f.customer_id = s.customer_id::bigint AND f.dedup_key = s.dedup_key
    ORDER BY f.customer_id, s.dedup_key, s.ord
), ins AS (
    INSERT INTO events (customer_id, ts, name, dedup_key, event_id, received_at, user_id,
                        value, properties, flags)
    SELECT {values}
    FROM {ins_from}
), usage AS (
    -- Billing usage, in the same transaction as the events it counts (the outbox).
    INSERT INTO usage_outbox (customer_id, window_start, count)
    SELECT customer_id, date_bin($3::interval, $1::timestamptz, 'epoch'::timestamptz), count(*)
    FROM winners GROUP BY customer_id ORDER BY customer_id
), notified AS (
    -- Cache invalidation: one notification per (customer, event name) loaded, with the
    -- event-time range it covers; delivered only on commit, in commit order. (As text: Citus
    -- materializes the CTE, and a column cannot be of type void.)
    SELECT pg_notify('{INVALIDATE}', json_build_array(
               customer_id::bigint, name,
               {ts_range})::text)::text AS sent
    FROM staging GROUP BY customer_id, name
)
{counts}
"""


class RowsRefused(Exception):
    """PostgreSQL refused the group for what its rows hold (a data exception, class 22, such
    as a sum out of range or a character text cannot store; or a program limit, class 54, such
    as an index row too large): the transaction was rolled back, the connection is fine, and
    the same rows would fail again (`refuses_rows`, Citus included). Any other failure
    (connection, timeout) is not this."""


#: A shard's own failures to take rows that say nothing about the rows: on Citus these come
#: back through the same relay as a refusal (`refuses_rows`), told apart by their message.
_TRANSIENT = re.compile(
    r"canceling statement|deadlock detected|could not serialize|terminating connection"
    r"|could not extend|could not write|out of memory|no space left|connection to the remote"
)


def refuses_rows(e: asyncpg.PostgresError) -> bool:
    """Whether `e` is PostgreSQL refusing the rows themselves (`RowsRefused`). On Citus the
    rows of events reach their shards by COPY, and a shard's refusal comes back without its
    SQLSTATE: an internal error (XX000) raised by Citus' `ReportCopyError` with the shard's
    message (e.g. the index row too large), counted as a refusal unless the message names a
    passing failure of the shard (`_TRANSIENT`)."""
    if isinstance(e, (asyncpg.DataError, asyncpg.ProgramLimitExceededError)):
        return True
    relayed = getattr(e, "server_source_function", None) == "ReportCopyError"
    return relayed and e.sqlstate == "XX000" and not _TRANSIENT.search(str(e))


async def prepare_connection(conn: asyncpg.Connection) -> None:
    """Make a new writer connection ready: its session settings and staging table."""
    await conn.execute(CREATE_STAGING)


async def write_group(
    conn: asyncpg.Connection,
    payloads: list[bytes],
    offsets: list[int],
    rows: int,
    now: datetime,
    usage_window: timedelta,
    statements: CommitStatements,
) -> list[tuple[int, int]]:
    """Commit the COPY tuples of several requests (`rows` in all) in one transaction;
    (request index, rows inserted) for each request that inserted any. `offsets` are each
    request's first row in the concatenated payloads. Up to `ARRAY_ROWS_MAX` rows go as
    column arrays in one statement (its own transaction), more through COPY and the staging
    table. Raises `RowsRefused` when the rows themselves cannot be stored."""
    try:
        if rows <= ARRAY_ROWS_MAX:
            columns = copy_columns(b"".join(payloads))
            result = await conn.fetch(statements.arrays, now, offsets, usage_window, *columns)
            inserted = Counter(r["req"] for r in result if r["req"] >= 0)
            return sorted(inserted.items())
        else:
            # A buffer, not a file-like object: asyncpg reads a file-like source through
            # `loop.run_in_executor` (a thread hop per 512 KB, outside our named limiters);
            # a buffer it sends as it is. (Plain bytes would be taken for a path.)
            data = memoryview(b"".join([COPY_HEADER, *payloads, COPY_TRAILER]))
            async with conn.transaction():
                await conn.copy_to_table(
                    "staging", source=data, columns=list(COPY_COLUMNS), format="binary"
                )
                result = await conn.fetch(statements.staged, now, offsets, usage_window)
    except asyncpg.PostgresError as e:
        if refuses_rows(e):
            raise RowsRefused(f"{type(e).__name__}: {e}") from e
        raise
    return sorted((r["req"], r["inserted"]) for r in result if r["req"] >= 0)
