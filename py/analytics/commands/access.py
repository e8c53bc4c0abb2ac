"""`analytics keys create|list|revoke|rotate-signing|retire-signing` and `analytics customers
list|delete`: who may send and read, and the customers themselves.

A key is shown once, when created; afterwards it is named by its key id (the 8 hex digits
after the customer id: `ak_<customer>_<key id>_<secret>`), which `keys list` shows.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import asyncpg

from analytics.commands.runner import (
    Subparsers,
    customer_name,
    fail,
    print_json,
    print_table,
    when,
    with_connection,
)
from analytics.store.bootstrap import create_customer_key
from analytics.store.customers import delete_customer, find_customer, list_customers
from analytics.store.keys import (
    SCOPES,
    AmbiguousKeyId,
    is_key_id,
    list_keys,
    revoke_key,
    revoke_key_id,
    validate_scopes,
)
from analytics.store.rotation import RotationRefused, retire_signing, rotate_signing
from analytics.store.signing import validate_origin

#: How long the previous signing secret stays accepted after `keys rotate-signing` by default.
DEFAULT_OVERLAP = timedelta(days=7)


async def _keys_create(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    if args.origins and not args.publishable:
        return fail("--origin is for publishable keys: add --publishable", code=2)
    if args.publishable and not args.origins:
        return fail("a publishable key needs at least one --origin", code=2)
    try:
        customer_id, created = await create_customer_key(
            conn, args.customer, args.scopes, args.signing, datetime.now(UTC), origins=args.origins
        )
    except ValueError as e:
        return fail(str(e), code=2)
    if args.json:
        print_json(
            {
                "customer": args.customer,
                "customer_id": customer_id,
                "key": created.key,
                "signing_secret": created.signing_secret,
                "publishable": bool(created.origins),
                "origins": list(created.origins),
            }
        )
    else:
        scopes = ",".join(sorted(created.scopes))
        print(f"customer {args.customer} (id {customer_id}), scopes {scopes}: {created.key}")
        if created.signing_secret:
            print(f"signing secret (the HMAC-SHA256 key, as printed): {created.signing_secret}")
        if created.origins:
            print(f"publishable from: {' '.join(created.origins)}")
    return 0


async def _keys_rotate_signing(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    try:
        rotation = await rotate_signing(
            conn,
            args.key_id,
            now,
            now + timedelta(hours=args.overlap_hours),
            customer=args.customer,
        )
    except AmbiguousKeyId as e:
        return fail(f"{e}; say which with --customer")
    except RotationRefused as e:
        return fail(str(e))
    if args.json:
        print_json(
            {
                "key_id": args.key_id,
                "customer": rotation.customer,
                "signing_secret": rotation.secret,
                "previous_accepted_until": rotation.previous_until,
            }
        )
    else:
        print(f"new signing secret of key {args.key_id} ({rotation.customer}): {rotation.secret}")
        print(
            f"the previous secret is accepted too until {when(rotation.previous_until)};"
            f" after moving every producer run `analytics keys retire-signing {args.key_id}`"
        )
    return 0


async def _keys_retire_signing(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    try:
        customer = await retire_signing(
            conn, args.key_id, datetime.now(UTC), customer=args.customer
        )
    except AmbiguousKeyId as e:
        return fail(f"{e}; say which with --customer")
    except RotationRefused as e:
        return fail(str(e))
    print(
        f"previous signing secret of key {args.key_id} ({customer}) retired"
        " (workers that cached the key accept it for up to 10 s more)"
    )
    return 0


async def _keys_list(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    keys = await list_keys(conn, args.customer)
    if args.json:
        print_json(
            [
                {
                    "key_id": k.key_id,
                    "customer": k.customer,
                    "customer_id": k.customer_id,
                    "scopes": sorted(k.scopes),
                    "signing": k.signing,
                    "previous_signing_until": k.previous_signing_until,
                    "publishable": bool(k.origins),
                    "origins": list(k.origins),
                    "created_at": k.created_at,
                    "last_used_at": k.last_used_at,
                    "revoked_at": k.revoked_at,
                }
                for k in keys
            ]
        )
        return 0
    if not keys:
        print("no keys" + (f" for customer {args.customer}" if args.customer else ""))
        return 0
    print_table(
        ("KEY ID", "CUSTOMER", "SCOPES", "SIGNING", "CREATED", "LAST USED", "REVOKED"),
        [
            (
                k.key_id,
                k.customer,
                ",".join(sorted(k.scopes)),
                _signing_cell(k.signing, k.previous_signing_until, k.origins),
                when(k.created_at),
                when(k.last_used_at),
                when(k.revoked_at),
            )
            for k in keys
        ],
    )
    print("(last used: to the hour)")
    return 0


async def _keys_revoke(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    if not is_key_id(args.key):  # a whole key, as printed by `keys create`
        if args.customer is not None:
            owner = await find_customer(conn, args.customer)
            if owner is None or not args.key.startswith(f"ak_{owner}_"):
                return fail(f"no such active key of customer {args.customer}")
        if await revoke_key(conn, args.key, now):
            print("key revoked")
            return 0
        return fail("no such active key")
    try:
        customer = await revoke_key_id(conn, args.key, now, customer=args.customer)
    except AmbiguousKeyId as e:
        return fail(f"{e}; say which with --customer")
    if customer is None:
        scope = f" of customer {args.customer}" if args.customer else ""
        return fail(f"no such active key{scope}: {args.key}")
    print(f"key {args.key} of customer {customer} revoked")
    return 0


async def _customers_list(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    customers = await list_customers(conn)
    if args.json:
        print_json(
            [
                {
                    "customer": c.name,
                    "customer_id": c.customer_id,
                    "created_at": c.created_at,
                    "active_keys": c.active_keys,
                    "revoked_keys": c.revoked_keys,
                }
                for c in customers
            ]
        )
        return 0
    if not customers:
        print("no customers")
        return 0
    print_table(
        ("CUSTOMER", "ID", "CREATED", "ACTIVE KEYS", "REVOKED KEYS"),
        [
            (c.name, c.customer_id, when(c.created_at), c.active_keys, c.revoked_keys)
            for c in customers
        ],
    )
    return 0


async def _customers_delete(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    deleted = await delete_customer(conn, args.name)
    if deleted is None:
        return fail(f"no such customer: {args.name}")
    rows = ", ".join(f"{table} {n}" for table, n in deleted.items())
    print(f"customer {args.name} deleted; rows deleted: {rows}")
    return 0


def _refuse_without_yes(args: argparse.Namespace) -> int:
    return fail(
        f"`customers delete` removes every row of customer {args.name} (events, rollups,"
        " billing usage, keys) for good; add --yes to do it",
        code=2,
    )


def _signing_cell(signing: bool, previous_until: datetime | None, origins: tuple[str, ...]) -> str:
    if origins:
        return "publishable: " + " ".join(origins)
    if previous_until is not None:
        return f"yes (previous until {when(previous_until)})"
    return "yes" if signing else "no"


def _hours(value: str) -> float:
    try:
        hours = float(value)
    except ValueError:
        hours = -1.0
    if not 0 < hours <= 24 * 90:
        raise argparse.ArgumentTypeError("hours between 0 and 2160 (90 days)")
    return hours


def _origin(value: str) -> str:
    try:
        return validate_origin(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _scopes(value: str) -> frozenset[str]:
    try:
        return validate_scopes(s.strip() for s in value.split(",") if s.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_access_commands(subparsers: Subparsers) -> None:
    """Registrar of `keys create|list|revoke` and `customers list|delete`."""
    keys = subparsers.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION"
    )
    p = keys.add_parser("create", help="create a key (and the customer if new)")
    p.add_argument(
        "--customer", required=True, type=customer_name, help="customer name (1-100 characters)"
    )
    p.add_argument(
        "--scopes",
        type=_scopes,
        required=True,
        help=f"comma-separated, from: {','.join(sorted(SCOPES))}",
    )
    p.add_argument("--signing", action="store_true", help="require signed requests")
    p.add_argument(
        "--publishable",
        action="store_true",
        help="a browser key: write-only, unsigned, usable from the --origin pages (CORS)",
    )
    p.add_argument(
        "--origin",
        dest="origins",
        action="append",
        default=[],
        type=_origin,
        metavar="ORIGIN",
        help="an origin (scheme://host[:port]) a publishable key may send from; repeatable",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=with_connection(_keys_create))

    p = keys.add_parser("list", help="every key: id, customer, scopes, created, last used")
    p.add_argument("--customer", help="only this customer's keys")
    p.add_argument("--json", action="store_true", help="print the keys as JSON")
    p.set_defaults(handler=with_connection(_keys_list))

    p = keys.add_parser("revoke", help="revoke a key, by its key id (or the whole key)")
    p.add_argument("key", metavar="KEY_ID", help="the 8-hex key id `keys list` shows, or the key")
    p.add_argument("--customer", help="the key's customer (when several hold the same key id)")
    p.set_defaults(handler=with_connection(_keys_revoke))

    p = keys.add_parser(
        "rotate-signing",
        help="a new signing secret; the previous one stays accepted until retired or expired",
    )
    p.add_argument("key_id", metavar="KEY_ID", help="the 8-hex key id `keys list` shows")
    p.add_argument("--customer", help="the key's customer (when several hold the same key id)")
    p.add_argument(
        "--overlap-hours",
        type=_hours,
        default=DEFAULT_OVERLAP.total_seconds() / 3600,
        help="how long the previous secret stays accepted at most (default: 168, 7 days)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=with_connection(_keys_rotate_signing))

    p = keys.add_parser("retire-signing", help="stop accepting a key's previous signing secret")
    p.add_argument("key_id", metavar="KEY_ID", help="the 8-hex key id `keys list` shows")
    p.add_argument("--customer", help="the key's customer (when several hold the same key id)")
    p.set_defaults(handler=with_connection(_keys_retire_signing))

    customers = subparsers.add_parser("customers", help="list and delete customers")
    actions = customers.add_subparsers(dest="customers_command", required=True, metavar="ACTION")
    p = actions.add_parser("list", help="every customer, with its key counts")
    p.add_argument("--json", action="store_true", help="print the customers as JSON")
    p.set_defaults(handler=with_connection(_customers_list))

    p = actions.add_parser(
        "delete", help="delete a customer and every row it owns, in one transaction"
    )
    p.add_argument("name", help="the customer's name")
    p.add_argument("--yes", action="store_true", help="really delete (required)")
    p.set_defaults(
        handler=lambda args: (
            with_connection(_customers_delete)(args) if args.yes else _refuse_without_yes(args)
        )
    )
