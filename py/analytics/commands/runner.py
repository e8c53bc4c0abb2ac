"""What the subcommands share: one database connection per command, argument types, output.

A handler is a sync `fn(args) -> int` (the exit code) set as a parser default. Commands that
need the database are async `fn(conn, args) -> int` wrapped by `with_connection`, which starts
the embedded server first when `DATABASE_URL` is unset (a blocking step, done before the
event loop starts) and then runs the command with `anyio.run`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import asyncpg
import orjson

from analytics.settings import Settings
from analytics.store.embedded import resolve_database
from analytics.store.keys import validate_customer_name
from analytics.store.pool import connect

Subparsers = Any  # argparse's _SubParsersAction, which is private
ConnCommand = Callable[[asyncpg.Connection, argparse.Namespace], Awaitable[int]]


def run_with_connection(command: ConnCommand, args: argparse.Namespace) -> int:
    """Run `command` on one connection to the configured database; return its exit code.

    Resolves the database (starting the embedded server, a blocking step, before the event
    loop) and then runs the async part with `anyio.run`.
    """
    settings = resolve_database(Settings.from_env())

    async def run() -> int:
        conn = await connect(settings.database_url, settings)
        try:
            return await command(conn, args)
        finally:
            await conn.close()

    return anyio.run(run)


def with_connection(command: ConnCommand) -> Callable[[argparse.Namespace], int]:
    """A `handler` running `command` through `run_with_connection`."""
    return partial(run_with_connection, command)


def fail(message: str, code: int = 1) -> int:
    """Print `message` as the command's error (to stderr); return `code`."""
    print(f"analytics: {message}", file=sys.stderr)
    return code


def customer_name(value: str) -> str:
    """argparse type: a valid customer name, trimmed (`keys.validate_customer_name`)."""
    try:
        return validate_customer_name(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def timestamp(value: str) -> datetime:
    """argparse type: an RFC 3339 / ISO 8601 time or date (`2026-01-31`, `2026-01-31T12:00Z`,
    with any offset); one without an offset is UTC."""
    try:
        t = datetime.fromisoformat(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time: {value!r}") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def print_json(value: object) -> None:
    """`value` as one line of JSON (times in RFC 3339, UTC as `Z`)."""
    print(orjson.dumps(value, option=orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS).decode())


def when(t: datetime | None) -> str:
    """A time as the tables show it: UTC to the second, `-` for none."""
    return "-" if t is None else t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Rows under headers, each column as wide as its widest cell."""
    cells = [list(headers), *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def mask_dsn(dsn: str) -> str:
    """`dsn` with its password (in the user info or a `password` parameter) replaced by
    `***`; anything that is not a URL is returned as is, unless it holds `password=`."""
    if "://" not in dsn:
        return "***" if "password" in dsn.lower() else dsn
    parts = urlsplit(dsn)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, sep, password = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if sep and password else netloc
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() == "password" for k, _ in pairs):
            masked = [(k, "***" if k.lower() == "password" else v) for k, v in pairs]
            query = urlencode(masked, safe="/*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))
