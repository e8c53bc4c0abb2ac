"""The `analytics` command, run as a subprocess against the test server."""

from __future__ import annotations

import json

import anyio
import asyncpg
import pytest

from analytics.store.customers import CUSTOMER_TABLES
from analytics.store.keys import lookup_key
from cliproc import cli
from dbutil import fetch


def lookup(dsn: str, key: str):
    async def run():
        conn = await asyncpg.connect(dsn)
        try:
            return await lookup_key(conn, key)
        finally:
            await conn.close()

    return anyio.run(run)


def test_migrate_is_idempotent(blank_dsn: str) -> None:
    first = cli(blank_dsn, "migrate")
    assert first.returncode == 0, first.stderr
    assert "applied: 0001_init" in first.stdout
    assert "partitions created: events_y" in first.stdout
    second = cli(blank_dsn, "migrate")
    assert second.returncode == 0, second.stderr
    assert second.stdout == "schema up to date\n"


def test_keys_create_json_gives_a_working_key(fresh_dsn: str) -> None:
    result = cli(fresh_dsn, "keys", "create", "--customer", "acme", "--scopes", "write,read",
                 "--signing", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert set(out) == {
        "customer",
        "customer_id",
        "key",
        "signing_secret",
        "publishable",
        "origins",
    }
    assert out["customer"] == "acme"
    info = lookup(fresh_dsn, out["key"])
    assert info is not None
    assert info.customer_id == out["customer_id"]
    assert info.scopes == {"write", "read"}
    assert info.signing_keys == (out["signing_secret"].encode(),)

    again = cli(fresh_dsn, "keys", "create", "--customer", "acme", "--scopes", "read", "--json")
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert second["customer_id"] == out["customer_id"]
    assert second["signing_secret"] is None


def test_keys_create_human_output(fresh_dsn: str) -> None:
    result = cli(fresh_dsn, "keys", "create", "--customer", "acme", "--scopes", "read")
    assert result.returncode == 0, result.stderr
    key = result.stdout.split()[-1]
    assert key.startswith("ak_")
    assert lookup(fresh_dsn, key) is not None


def test_keys_create_rejects_unknown_scopes(fresh_dsn: str) -> None:
    result = cli(fresh_dsn, "keys", "create", "--customer", "acme", "--scopes", "write,admin")
    assert result.returncode == 2
    assert "unknown scopes: admin" in result.stderr


def test_keys_revoke(fresh_dsn: str) -> None:
    created = cli(fresh_dsn, "keys", "create", "--customer", "acme", "--scopes", "write", "--json")
    key = json.loads(created.stdout)["key"]
    revoked = cli(fresh_dsn, "keys", "revoke", key)
    assert revoked.returncode == 0, revoked.stderr
    assert lookup(fresh_dsn, key) is None
    again = cli(fresh_dsn, "keys", "revoke", key)
    assert again.returncode == 1
    assert "no such active key" in again.stderr


def test_revoking_an_unknown_key_exits_1(fresh_dsn: str) -> None:
    result = cli(fresh_dsn, "keys", "revoke", "ak_1_deadbeef_" + "x" * 43)
    assert result.returncode == 1
    assert "no such active key" in result.stderr


def create(dsn: str, customer: str, scopes: str = "write", *extra: str) -> dict:
    result = cli(
        dsn, "keys", "create", "--customer", customer, "--scopes", scopes, "--json", *extra
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("   ", "must not be empty"),
        ("x" * 101, "at most 100 characters"),
        ("tab\there", "must be printable (found U+0009)"),
        ("line\nbreak", "must be printable (found U+000A)"),
        ("bell\x07", "must be printable (found U+0007)"),
        ("rtl\u202eoverride", "must be printable (found U+202E)"),
    ],
)
def test_keys_create_refuses_bad_customer_names(fresh_dsn: str, name: str, message: str) -> None:
    result = cli(fresh_dsn, "keys", "create", "--customer", name, "--scopes", "read")
    assert result.returncode == 2
    assert message in result.stderr
    assert fetch(fresh_dsn, "SELECT name FROM customers") == []


def test_keys_create_trims_the_customer_name(fresh_dsn: str) -> None:
    out = create(fresh_dsn, "  Acme Inc.  ", "read")
    assert out["customer"] == "Acme Inc."
    assert [r["name"] for r in fetch(fresh_dsn, "SELECT name FROM customers")] == ["Acme Inc."]
    assert create(fresh_dsn, "x" * 100, "read")["customer"] == "x" * 100  # the longest


def test_keys_list_shows_every_key_and_when_it_was_last_used(fresh_dsn: str) -> None:
    signed = create(fresh_dsn, "acme", "write,read", "--signing")
    unused = create(fresh_dsn, "acme", "read")
    other = create(fresh_dsn, "globex", "write")
    assert lookup(fresh_dsn, signed["key"]) is not None  # marks it used
    assert cli(fresh_dsn, "keys", "revoke", other["key"].split("_")[2]).returncode == 0

    listed = cli(fresh_dsn, "keys", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    keys = {k["key_id"]: k for k in json.loads(listed.stdout)}
    signed_id, unused_id, other_id = (k["key"].split("_")[2] for k in (signed, unused, other))
    assert set(keys) == {signed_id, unused_id, other_id}
    assert keys[signed_id]["customer"] == "acme"
    assert keys[signed_id]["scopes"] == ["read", "write"]
    assert keys[signed_id]["signing"] is True and keys[unused_id]["signing"] is False
    assert keys[signed_id]["last_used_at"] is not None
    assert keys[unused_id]["last_used_at"] is None
    assert keys[other_id]["revoked_at"] is not None and keys[signed_id]["revoked_at"] is None
    assert all(k["created_at"].endswith("Z") for k in keys.values())
    assert not any(signed["key"] in line for line in listed.stdout.splitlines())

    acme = cli(fresh_dsn, "keys", "list", "--customer", "acme")
    assert acme.returncode == 0, acme.stderr
    header, *rows, legend = acme.stdout.splitlines()
    assert header.split() == ["KEY", "ID", "CUSTOMER", "SCOPES", "SIGNING", "CREATED", "LAST",
                              "USED", "REVOKED"]  # fmt: skip
    assert sorted(r.split()[0] for r in rows) == sorted([signed_id, unused_id])
    assert "last used" in legend
    assert cli(fresh_dsn, "keys", "list", "--customer", "nobody").stdout == (
        "no keys for customer nobody\n"
    )


def test_keys_revoke_by_key_id(fresh_dsn: str) -> None:
    key = create(fresh_dsn, "acme")["key"]
    key_id = key.split("_")[2]
    revoked = cli(fresh_dsn, "keys", "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout == f"key {key_id} of customer acme revoked\n"
    assert lookup(fresh_dsn, key) is None
    again = cli(fresh_dsn, "keys", "revoke", key_id)
    assert again.returncode == 1
    assert f"no such active key: {key_id}" in again.stderr


def test_keys_revoke_of_a_whole_key_checks_the_customer_named(fresh_dsn: str) -> None:
    key = create(fresh_dsn, "acme")["key"]
    create(fresh_dsn, "globex")
    wrong = cli(fresh_dsn, "keys", "revoke", key, "--customer", "globex")
    assert wrong.returncode == 1
    assert "no such active key of customer globex" in wrong.stderr
    assert lookup(fresh_dsn, key) is not None
    assert cli(fresh_dsn, "keys", "revoke", key, "--customer", "acme").returncode == 0
    assert lookup(fresh_dsn, key) is None


def test_keys_revoke_asks_which_customer_when_a_key_id_is_shared(fresh_dsn: str) -> None:
    a, b = create(fresh_dsn, "acme"), create(fresh_dsn, "globex")
    shared = a["key"].split("_")[2]
    # Key ids are random per customer: make globex's key collide with acme's.
    fetch(fresh_dsn, "UPDATE api_keys SET key_id = $1 WHERE customer_id = $2", shared,
        b["customer_id"])  # fmt: skip
    ambiguous = cli(fresh_dsn, "keys", "revoke", shared)
    assert ambiguous.returncode == 1
    assert "held by several customers: acme, globex" in ambiguous.stderr
    assert "--customer" in ambiguous.stderr
    assert lookup(fresh_dsn, a["key"]) is not None  # nothing revoked

    wrong = cli(fresh_dsn, "keys", "revoke", shared, "--customer", "initech")
    assert wrong.returncode == 1
    assert "no such active key of customer initech" in wrong.stderr
    done = cli(fresh_dsn, "keys", "revoke", shared, "--customer", "globex")
    assert done.returncode == 0, done.stderr
    revoked = fetch(fresh_dsn, "SELECT c.name, k.revoked_at IS NOT NULL AS revoked FROM api_keys k"
                  " JOIN customers c USING (customer_id) ORDER BY 1")  # fmt: skip
    assert [tuple(r) for r in revoked] == [("acme", False), ("globex", True)]


def test_customers_list(fresh_dsn: str) -> None:
    assert cli(fresh_dsn, "customers", "list").stdout == "no customers\n"
    create(fresh_dsn, "globex")
    acme = create(fresh_dsn, "acme", "read")
    create(fresh_dsn, "acme", "write")
    cli(fresh_dsn, "keys", "revoke", acme["key"])
    listed = json.loads(cli(fresh_dsn, "customers", "list", "--json").stdout)
    assert [(c["customer"], c["active_keys"], c["revoked_keys"]) for c in listed] == [
        ("acme", 1, 1),
        ("globex", 1, 0),
    ]
    assert listed[0]["customer_id"] == acme["customer_id"]
    human = cli(fresh_dsn, "customers", "list").stdout.splitlines()
    assert human[0].split()[:2] == ["CUSTOMER", "ID"]
    assert [line.split()[0] for line in human[1:]] == ["acme", "globex"]


def tables_with_customer_id(dsn: str) -> set[str]:
    rows = fetch(
        dsn,
        "SELECT c.relname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE a.attname = 'customer_id' AND n.nspname = 'public' AND c.relkind IN ('r', 'p')"
        " AND NOT c.relispartition",
    )
    return {r["relname"] for r in rows}


def test_customer_tables_names_every_table_holding_customer_rows(fresh_dsn: str) -> None:
    assert tables_with_customer_id(fresh_dsn) == set(CUSTOMER_TABLES)


def test_citus_distributes_every_customer_table_and_replicates_customers() -> None:
    from analytics.store.citus import DISTRIBUTED_TABLES, REFERENCE_TABLES

    assert set(DISTRIBUTED_TABLES) == set(CUSTOMER_TABLES) - {"customers"}
    assert "customers" in REFERENCE_TABLES


def seed_rows(dsn: str, customer_id: int) -> None:
    """A row of the customer in every table that holds customer rows (keys already exist)."""
    for statement in (
        "INSERT INTO events (customer_id, ts, name, dedup_key, received_at, properties, flags)"
        " VALUES ($1, now(), 'e', 'k', now(), '{}', 0)",
        "INSERT INTO dedup (customer_id, dedup_key, first_seen) VALUES ($1, 'k', now())",
        "INSERT INTO identities VALUES ($1, 'anon', 'user', now())",
        *(
            f"INSERT INTO {t} VALUES ($1, 'e', '', '', date_trunc('minute', now()), 1, 0)"
            for t in ("rollup_minute", "rollup_hour")
        ),
        *(
            f"INSERT INTO {t} VALUES ($1, 'e', 'a', 'b', 'x', 'y', date_trunc('hour', now()), 1, 0)"
            for t in ("rollup_pair_hour",)
        ),
        "INSERT INTO rollup_users_hour VALUES ($1, 'e', '', '', date_trunc('hour', now()), 'x')",
        "INSERT INTO rollup_dirty VALUES ($1, 'e', date_trunc('hour', now()), now())",
        "INSERT INTO usage_outbox (customer_id, window_start, count) VALUES ($1, now(), 1)",
        "INSERT INTO usage_dispatch (customer_id, window_start, window_end, count,"
        " idempotency_key, created_at) VALUES ($1, now(), now(), 1, 'x', now())",
        "INSERT INTO rate_buckets VALUES ($1, 'k', 1, now(), 1)",
    ):
        fetch(dsn, statement, customer_id)


def rows_of(dsn: str, customer_id: int) -> dict[str, int]:
    return {
        t: fetch(dsn, f"SELECT count(*) FROM {t} WHERE customer_id = $1", customer_id)[0][0]
        for t in CUSTOMER_TABLES
    }


def test_customers_delete_removes_every_row_of_that_customer_only(fresh_dsn: str) -> None:
    cli(fresh_dsn, "migrate")  # this month's partition, for the events
    gone, kept = create(fresh_dsn, "acme"), create(fresh_dsn, "globex")
    for c in (gone, kept):
        seed_rows(fresh_dsn, c["customer_id"])
    assert set(rows_of(fresh_dsn, gone["customer_id"]).values()) == {1}

    refused = cli(fresh_dsn, "customers", "delete", "acme")
    assert refused.returncode == 2
    assert "add --yes" in refused.stderr
    assert set(rows_of(fresh_dsn, gone["customer_id"]).values()) == {1}

    deleted = cli(fresh_dsn, "customers", "delete", "acme", "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert "customer acme deleted" in deleted.stdout and "events 1" in deleted.stdout
    assert set(rows_of(fresh_dsn, gone["customer_id"]).values()) == {0}
    assert set(rows_of(fresh_dsn, kept["customer_id"]).values()) == {1}
    assert lookup(fresh_dsn, gone["key"]) is None and lookup(fresh_dsn, kept["key"]) is not None

    again = cli(fresh_dsn, "customers", "delete", "acme", "--yes")
    assert again.returncode == 1
    assert "no such customer: acme" in again.stderr
