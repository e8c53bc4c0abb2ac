"""The `analytics` command.

Subcommands are added by registrars: functions taking the subparsers object, each adding its
parsers and setting `handler` (a sync `fn(args) -> int`, the exit code) as a parser default.
`build_parser` runs every function in `REGISTRARS`; to add a command, write a registrar and
list it there. Commands that need the database wrap an async `fn(conn, args) -> int` with
`with_connection`, which starts the embedded server first when `DATABASE_URL` is unset.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

import anyio
import asyncpg

from analytics.settings import FLAG_NAMES, Settings
from analytics.store.bootstrap import create_customer_key, prepare
from analytics.store.embedded import resolve_database
from analytics.store.flag_overrides import list_overrides, set_flag
from analytics.store.keys import SCOPES, revoke_key, validate_scopes
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


async def _migrate(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    done = await prepare(conn, datetime.now(UTC))
    print(f"applied: {', '.join(done.migrations)}" if done.migrations else "schema up to date")
    if done.partitions:
        print(f"partitions created: {', '.join(done.partitions)}")
    return 0


async def _keys_create(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    customer_id, created = await create_customer_key(
        conn, args.customer, args.scopes, args.signing, datetime.now(UTC)
    )
    if args.json:
        print(
            json.dumps(
                {
                    "customer": args.customer,
                    "customer_id": customer_id,
                    "key": created.key,
                    "signing_secret": created.signing_secret,
                }
            )
        )
    else:
        scopes = ",".join(sorted(created.scopes))
        print(f"customer {args.customer} (id {customer_id}), scopes {scopes}: {created.key}")
        if created.signing_secret:
            print(f"signing secret: {created.signing_secret}")
    return 0


async def _keys_revoke(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    if await revoke_key(conn, args.key, datetime.now(UTC)):
        print("key revoked")
        return 0
    print("no such active key", file=sys.stderr)
    return 1


async def _flags_list(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    defaults = Settings.from_env().flag_defaults()
    overrides = await list_overrides(conn)
    for name in FLAG_NAMES:
        if name not in overrides:
            print(f"{name:24s} {'on' if defaults[name] else 'off':4s} (default)")
        else:
            enabled, since = overrides[name]
            print(f"{name:24s} {'on' if enabled else 'off':4s} (set {since:%Y-%m-%d %H:%M:%S})")
    return 0


async def _flags_set(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    await set_flag(conn, args.name, args.state == "on", datetime.now(UTC))
    print(f"{args.name} {args.state}")
    return 0


def _scopes(value: str) -> frozenset[str]:
    try:
        return validate_scopes(s.strip() for s in value.split(",") if s.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_commands(subparsers: Subparsers) -> None:
    """Registrar of the store commands: `migrate`, `keys create|revoke`, `flags list|set`."""
    p = subparsers.add_parser("migrate", help="apply migrations and create event partitions")
    p.set_defaults(handler=with_connection(_migrate))

    keys = subparsers.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION"
    )
    p = keys.add_parser("create", help="create a key (and the customer if new)")
    p.add_argument("--customer", required=True, help="customer name")
    p.add_argument(
        "--scopes",
        type=_scopes,
        required=True,
        help=f"comma-separated, from: {','.join(sorted(SCOPES))}",
    )
    p.add_argument("--signing", action="store_true", help="require signed requests")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=with_connection(_keys_create))

    p = keys.add_parser("revoke", help="revoke a key")
    p.add_argument("key")
    p.set_defaults(handler=with_connection(_keys_revoke))

    flags = subparsers.add_parser("flags", help="feature flags").add_subparsers(
        dest="flags_command", required=True, metavar="ACTION"
    )
    p = flags.add_parser("list", help="show every flag and where its value comes from")
    p.set_defaults(handler=with_connection(_flags_list))
    p = flags.add_parser("set", help="switch a flag in every worker (takes effect at once)")
    p.add_argument("name", choices=FLAG_NAMES)
    p.add_argument("state", choices=["on", "off"])
    p.set_defaults(handler=with_connection(_flags_set))


def add_serve(subparsers: Subparsers) -> None:
    """`analytics serve`, imported only when the parser is built (it pulls in Hypercorn)."""
    from analytics.serve import add_serve_command

    add_serve_command(subparsers)


def add_billing_stub(subparsers: Subparsers) -> None:
    """`analytics billing-stub`, the development billing service."""
    from analytics.billing.stub import add_billing_stub_command

    add_billing_stub_command(subparsers)


#: Every registrar of subcommands, in the order `--help` lists them.
REGISTRARS: tuple[Callable[[Subparsers], None], ...] = (
    add_commands,
    add_serve,
    add_billing_stub,
)


def build_parser() -> argparse.ArgumentParser:
    """The `analytics` parser with the commands of every registrar in `REGISTRARS`."""
    parser = argparse.ArgumentParser(prog="analytics", description="real-time event analytics")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in REGISTRARS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `analytics` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
