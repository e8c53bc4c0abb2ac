"""The `analytics` command.

Subcommands are added by registrars: functions taking the subparsers object, each adding its
parsers and setting `handler` (a sync `fn(args) -> int`, the exit code) as a parser default.
`build_parser` runs every function in `REGISTRARS`; to add a command, write a registrar (one
module per command group in `analytics.commands`) and list it there. Commands that need the
database wrap an async `fn(conn, args) -> int` with `commands.runner.with_connection`, which
starts the embedded server first when `DATABASE_URL` is unset.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from analytics.commands.access import add_access_commands
from analytics.commands.configuration import add_configuration_commands
from analytics.commands.database import add_database_commands
from analytics.commands.feature_flags import add_flag_commands
from analytics.commands.governance import add_governance_commands
from analytics.commands.runner import Subparsers
from analytics.settings import SettingError


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
    add_serve,
    add_database_commands,
    add_access_commands,
    add_governance_commands,
    add_flag_commands,
    add_configuration_commands,
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
    try:
        return args.handler(args)
    except SettingError as e:
        print(f"analytics: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
