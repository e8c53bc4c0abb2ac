"""Signed requests as integrators make them, against a real server: the printed `ansk_`
secret is the HMAC key (Python `secret.encode()`, `openssl dgst -hmac "$S"`, the README's
snippets as written), legacy hex secrets still work, rotation overlaps until retired, and
answers outside the window say what the window and the server's clock are."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import asyncpg
import httpx2 as httpx
import pytest

from analytics.store.keys import lookup_key
from analytics.store.migrations import load_migrations, migrate
from analytics.store.rotation import RotationRefused, retire_signing, rotate_signing
from cliproc import cli
from conftest import _temporary_database
from dbutil import apply_migrations
from serverproc import Server, running_server

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
BODY = b'{"name": "signup", "properties": {"plan": "pro"}}'


def signed_key(dsn: str, customer: str) -> dict:
    r = cli(dsn, "keys", "create", "--customer", customer, "--scopes", "write", "--signing",
            "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def key_id(key: str) -> str:
    return key.split("_")[2]


def hmac_header(secret: bytes, body: bytes, t: int) -> str:
    return f"t={t},v1={hmac.new(secret, f'{t}.'.encode() + body, hashlib.sha256).hexdigest()}"


@pytest.fixture(scope="module")
def server(pg_server: str, pg_template: str) -> Iterator[tuple[Server, str]]:
    for dsn in _temporary_database(pg_server, pg_template):
        with running_server(dsn) as srv:
            yield srv, dsn


def send(srv: Server, key: str, signature: str | None, body: bytes = BODY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if signature is not None:
        headers["X-Signature"] = signature
    return httpx.post(f"{srv.base}/v1/events", content=body, headers=headers, timeout=10)


def test_the_printed_secret_is_the_hmac_key(server) -> None:
    srv, dsn = server
    created = signed_key(dsn, "py-signer")
    secret = created["signing_secret"]
    assert re.fullmatch(r"ansk_[A-Za-z0-9_-]{43}", secret)
    r = send(srv, created["key"], hmac_header(secret.encode(), BODY, int(time.time())))
    assert (r.status_code, r.json()["accepted"]) == (200, 1), r.text
    wrong = send(srv, created["key"], hmac_header(b"not the secret", BODY, int(time.time())))
    assert (wrong.status_code, wrong.json()["code"]) == (401, "bad_signature")
    assert "as printed" in wrong.json()["message"]


def test_openssl_in_a_shell_signs_with_the_secret_as_printed(server) -> None:
    srv, dsn = server
    created = signed_key(dsn, "shell-signer")
    script = (
        'T=$(date +%s); SIG=$(printf "%s.%s" "$T" "$BODY" | openssl dgst -sha256 -hmac "$S"'
        " | sed 's/^.*= //'); printf 't=%s,v1=%s' \"$T\" \"$SIG\""
    )
    env = {**os.environ, "S": created["signing_secret"], "BODY": BODY.decode()}
    header = subprocess.run(
        ["sh", "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", header), header
    r = send(srv, created["key"], header)
    assert (r.status_code, r.json()["accepted"]) == (200, 1), r.text


def _snippet(language: str, marker: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", README, re.S)
    (found,) = [b for b in blocks if marker in b]
    return found


@pytest.mark.parametrize(
    ("language", "marker", "run"),
    [
        ("python", "hmac.new(secret.encode()", [sys.executable, "-c"]),
        ("sh", "openssl dgst", ["sh", "-c"]),
    ],
)
def test_the_readme_signed_request_works_as_written(server, language, marker, run) -> None:
    srv, dsn = server
    created = signed_key(dsn, f"readme-{language}")
    code = _snippet(language, marker).replace("http://127.0.0.1:8000", srv.base)
    env = {**os.environ, "SIGNING_SECRET": created["signing_secret"], "WRITE_KEY": created["key"]}
    out = subprocess.run([*run, code], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"accepted": 1, "duplicates": 0, "rejected": []}


def test_stale_and_future_signatures_name_the_window_and_the_clock(server) -> None:
    srv, dsn = server
    created = signed_key(dsn, "clock-skew")
    secret = created["signing_secret"].encode()
    before = int(time.time())
    stale = send(srv, created["key"], hmac_header(secret, BODY, before - 3600))
    after = int(time.time())
    assert (stale.status_code, stale.json()["code"]) == (401, "stale_signature")
    message = stale.json()["message"]
    assert "within 300 s" in message
    clock = int(re.search(r"server's clock \(unix (\d+)\)", message)[1])
    assert before <= clock <= after
    future = send(srv, created["key"], hmac_header(secret, BODY, before + 3600))
    assert (future.status_code, future.json()["code"]) == (401, "future_signature")
    assert "within 300 s" in future.json()["message"]
    assert "server's clock (unix " in future.json()["message"]


def test_rotation_accepts_both_secrets_until_the_old_one_is_retired(server) -> None:
    srv, dsn = server
    # Each key is first used after the change, so no worker's key cache hides it.
    overlapping, retired = signed_key(dsn, "rotating"), signed_key(dsn, "retiring")
    new = {}
    for created in (overlapping, retired):
        r = cli(dsn, "keys", "rotate-signing", key_id(created["key"]), "--json")
        assert r.returncode == 0, r.stderr
        new[created["key"]] = json.loads(r.stdout)["signing_secret"]
        assert new[created["key"]].startswith("ansk_")
        assert new[created["key"]] != created["signing_secret"]
    again = cli(dsn, "keys", "rotate-signing", key_id(overlapping["key"]))
    assert again.returncode == 1 and "retire it first" in again.stderr

    now = int(time.time())
    for secret in (overlapping["signing_secret"], new[overlapping["key"]]):
        r = send(srv, overlapping["key"], hmac_header(secret.encode(), BODY, now))
        assert r.status_code == 200, r.text

    r = cli(dsn, "keys", "retire-signing", key_id(retired["key"]))
    assert r.returncode == 0, r.stderr
    old = send(srv, retired["key"], hmac_header(retired["signing_secret"].encode(), BODY, now))
    assert (old.status_code, old.json()["code"]) == (401, "bad_signature")
    fresh = send(srv, retired["key"], hmac_header(new[retired["key"]].encode(), BODY, now))
    assert fresh.status_code == 200, fresh.text
    listed = json.loads(cli(dsn, "keys", "list", "--json").stdout)
    by_id = {k["key_id"]: k for k in listed}
    assert by_id[key_id(overlapping["key"])]["previous_signing_until"] is not None
    assert by_id[key_id(retired["key"])]["previous_signing_until"] is None


def test_the_previous_secret_expires_and_unsigned_keys_do_not_rotate(fresh_dsn: str) -> None:
    created = signed_key(fresh_dsn, "expiring")
    unsigned = json.loads(
        cli(fresh_dsn, "keys", "create", "--customer", "x", "--scopes", "write", "--json").stdout
    )

    async def run() -> None:
        conn = await asyncpg.connect(fresh_dsn)
        try:
            now = datetime.now(UTC)
            rotation = await rotate_signing(
                conn, key_id(created["key"]), now, now + timedelta(hours=1)
            )
            info = await lookup_key(conn, created["key"], now=now)
            assert info.signing_keys == (
                rotation.secret.encode(),
                created["signing_secret"].encode(),
            )
            later = await lookup_key(conn, created["key"], now=now + timedelta(hours=2))
            assert later.signing_keys == (rotation.secret.encode(),)
            with pytest.raises(RotationRefused, match="no previous signing secret"):
                await retire_signing(conn, key_id(created["key"]), now + timedelta(hours=2))
            with pytest.raises(RotationRefused, match="no signing secret"):
                await rotate_signing(conn, key_id(unsigned["key"]), now, now)
        finally:
            await conn.close()

    anyio.run(run)


def test_a_hex_secret_from_before_migration_0005_keeps_working(blank_dsn: str) -> None:
    """A database at migration 0003 with a signing key as it was stored then (32 raw bytes,
    printed hex): migrated, the key signs with the raw bytes as before and with the hex
    text as printed, and rotates to an `ansk_` secret."""
    raw = os.urandom(32)
    key = "ak_1_0badc0de_" + "A" * 43
    before_0005 = [m for m in load_migrations() if m.version <= 3]

    async def run() -> None:
        conn = await asyncpg.connect(blank_dsn)
        try:
            await apply_migrations(conn, before_0005)
            await conn.execute("INSERT INTO customers (name, created_at) VALUES ('old', now())")
            await conn.execute(
                "INSERT INTO api_keys (customer_id, key_id, key_hash, scopes, signing_secret,"
                " created_at) VALUES (1, '0badc0de', $1, '{write}', $2, now())",
                hashlib.sha256(key.encode()).digest(),
                raw,
            )
            assert "0005_signing_and_cors" in await migrate(conn)
            info = await lookup_key(conn, key)
            assert info.signing_keys == (raw, raw.hex().encode())
        finally:
            await conn.close()

    anyio.run(run)
    with running_server(blank_dsn) as srv:
        now = int(time.time())
        for secret in (raw, raw.hex().encode()):  # bytes.fromhex(printed), printed.encode()
            r = send(srv, key, hmac_header(secret, BODY, now))
            assert (r.status_code, r.json()["accepted"]) == (200, 1), r.text
            now += 1  # another signing time: another receipt of the id-less event
    rotated = cli(blank_dsn, "keys", "rotate-signing", "0badc0de", "--json")
    assert rotated.returncode == 0, rotated.stderr
    assert json.loads(rotated.stdout)["signing_secret"].startswith("ansk_")
