"""`analytics export` and `analytics erase`: a customer's data out, and one user's data gone.

`export` writes NDJSON that `POST /v1/batch` (Content-Type `application/x-ndjson`) reads
back: into another customer, or the same one, where every line is then a duplicate (see
store/export.py). A batch holds at most 5,000 events and 5 MiB: split a large export
(`split -l 5000`). `erase` deletes one user's events and their share of the rollups
(store/erase.py); its dedup records stay, so a retry of an erased event is not stored again.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import aclosing
from typing import BinaryIO

import anyio.to_thread
import asyncpg

from analytics.commands.runner import Subparsers, fail, timestamp, with_connection
from analytics.normalize import normalize_event_name
from analytics.settings import Settings
from analytics.store.customers import find_customer
from analytics.store.erase import erase_user
from analytics.store.export import export_events


async def _export(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    customer_id = await find_customer(conn, args.customer)
    if customer_id is None:
        return fail(f"no such customer: {args.customer}")
    if args.end <= args.start:
        return fail("--to must be after --from", code=2)
    name = None
    if args.event is not None:
        try:
            name = normalize_event_name(args.event)
        except ValueError as e:
            return fail(f"--event: {e}", code=2)
    # Writing is blocking I/O: each chunk goes through a worker thread, off the loop.
    raw: BinaryIO = (
        await anyio.to_thread.run_sync(open, args.out, "wb") if args.out else sys.stdout.buffer
    )
    out = anyio.wrap_file(raw)
    lines = 0
    try:
        chunks = export_events(conn, customer_id, args.start, args.end, name)
        async with aclosing(chunks):
            async for chunk in chunks:
                await out.write(chunk)
                lines += chunk.count(b"\n")
        await out.flush()
    finally:
        if args.out:
            await out.aclose()
    print(f"exported {lines} events of customer {args.customer}", file=sys.stderr)
    return 0


async def _erase(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    customer_id = await find_customer(conn, args.customer)
    if customer_id is None:
        return fail(f"no such customer: {args.customer}")
    settings = Settings.from_env()
    # Rollups are subtracted as the rollup job adds them: the configured dimensions, and for
    # `browser` the enrichment flag as it stood when each event was stored (kept in its flags).
    erased = await erase_user(conn, customer_id, args.user_id, settings.dimensions)
    print(
        f"erased user {args.user_id!r} of customer {args.customer}: {erased.events} events,"
        f" {erased.rollup_rows} rollup rows lowered ({erased.rollup_rows_deleted} emptied and"
        " deleted); dedup records kept"
    )
    return 0


def add_governance_commands(subparsers: Subparsers) -> None:
    """Registrar of `export` and `erase`."""
    p = subparsers.add_parser(
        "export", help="a customer's events as NDJSON, readable back by POST /v1/batch"
    )
    p.add_argument("--customer", required=True, help="customer name")
    p.add_argument(
        "--from", dest="start", required=True, type=timestamp, help="first time (RFC 3339)"
    )
    p.add_argument(
        "--to", dest="end", required=True, type=timestamp, help="end time, exclusive (RFC 3339)"
    )
    p.add_argument("--event", help="only events of this name")
    p.add_argument("--out", help="write to this file (default: standard output)")
    p.set_defaults(handler=with_connection(_export))

    p = subparsers.add_parser(
        "erase", help="delete one user's events and subtract them from the rollups"
    )
    p.add_argument("--customer", required=True, help="customer name")
    p.add_argument("--user-id", required=True, help="the user_id the events carry")
    p.set_defaults(handler=with_connection(_erase))
