"""`analytics flags list|set`: feature flags, switched in every worker at once (NOTIFY)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import asyncpg

from analytics.commands.runner import Subparsers, with_connection
from analytics.settings import FLAG_NAMES, Settings
from analytics.store.flag_overrides import list_overrides, set_flag


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


def add_flag_commands(subparsers: Subparsers) -> None:
    """Registrar of `flags list|set`."""
    flags = subparsers.add_parser("flags", help="feature flags").add_subparsers(
        dest="flags_command", required=True, metavar="ACTION"
    )
    p = flags.add_parser("list", help="show every flag and where its value comes from")
    p.set_defaults(handler=with_connection(_flags_list))
    p = flags.add_parser("set", help="switch a flag in every worker (takes effect at once)")
    p.add_argument("name", choices=FLAG_NAMES)
    p.add_argument("state", choices=["on", "off"])
    p.set_defaults(handler=with_connection(_flags_set))
