"""`analytics keys create|list|revoke` and `analytics customers list|delete`: who may send and
read, and the customers themselves.

A key is shown once, when created; afterwards it is named by its key id (the 8 hex digits
after the customer id: `ak_<customer>_<key id>_<secret>`), which `keys list` shows.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

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


async def _keys_create(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    customer_id, created = await create_customer_key(
        conn, args.customer, args.scopes, args.signing, datetime.now(UTC)
    )
    if args.json:
        print_json(
            {
                "customer": args.customer,
                "customer_id": customer_id,
                "key": created.key,
                "signing_secret": created.signing_secret,
            }
        )
    else:
        scopes = ",".join(sorted(created.scopes))
        print(f"customer {args.customer} (id {customer_id}), scopes {scopes}: {created.key}")
        if created.signing_secret:
            print(f"signing secret: {created.signing_secret}")
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
                "yes" if k.signing else "no",
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
