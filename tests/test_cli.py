"""The `analytics` command, run as a subprocess against the test server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import anyio
import asyncpg

from analytics.store.keys import lookup_key


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": dsn}
    return subprocess.run(
        [sys.executable, "-m", "analytics.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


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
    assert set(out) == {"customer", "customer_id", "key", "signing_secret"}
    assert out["customer"] == "acme"
    info = lookup(fresh_dsn, out["key"])
    assert info is not None
    assert info.customer_id == out["customer_id"]
    assert info.scopes == {"write", "read"}
    assert info.signing_secret == bytes.fromhex(out["signing_secret"])

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
