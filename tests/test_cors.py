"""Browser producers against a real server: publishable keys with an origin allowlist,
preflights answered (or refused with a code) on the ingest routes, Access-Control-Allow-Origin
only for allowed origins, and publishable keys that cannot read or sign."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx2 as httpx
import pytest

from cliproc import cli
from conftest import _temporary_database
from serverproc import Server, running_server

ALLOWED, OTHER = "https://app.example", "https://evil.example"


@pytest.fixture(scope="module")
def browser(pg_server: str, pg_template: str) -> Iterator[tuple[Server, str, dict]]:
    for dsn in _temporary_database(pg_server, pg_template):
        r = cli(dsn, "keys", "create", "--customer", "web", "--scopes", "write", "--publishable",
                "--origin", ALLOWED, "--origin", "http://localhost:3000", "--json")  # fmt: skip
        assert r.returncode == 0, r.stderr
        with running_server(dsn) as srv:
            yield srv, dsn, json.loads(r.stdout)


def preflight(srv: Server, path: str, origin: str, method: str = "POST", headers: str = ""):
    h = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers:
        h["Access-Control-Request-Headers"] = headers
    return httpx.options(f"{srv.base}{path}", headers=h, timeout=10)


@pytest.mark.parametrize("path", ["/v1/events", "/v1/batch"])
def test_a_preflight_from_a_listed_origin_is_answered(browser, path) -> None:
    srv, _, _ = browser
    r = preflight(srv, path, ALLOWED, headers="authorization, content-type, content-encoding")
    assert r.status_code == 204, r.text
    assert r.headers["access-control-allow-origin"] == ALLOWED
    assert r.headers["access-control-allow-methods"] == "POST"
    allowed = {h.strip() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "content-encoding", "x-signature"} <= allowed
    assert int(r.headers["access-control-max-age"]) > 0
    assert "Origin" in r.headers["vary"]


@pytest.mark.parametrize(
    ("origin", "method", "headers", "code"),
    [
        (OTHER, "POST", "", "cors_origin_not_allowed"),
        (ALLOWED + ":8443", "POST", "", "cors_origin_not_allowed"),
        (ALLOWED, "DELETE", "", "cors_method_not_allowed"),
        (ALLOWED, "POST", "authorization, x-custom", "cors_header_not_allowed"),
    ],
)
def test_other_preflights_are_refused_with_a_code(browser, origin, method, headers, code) -> None:
    srv, _, _ = browser
    r = preflight(srv, "/v1/events", origin, method, headers)
    assert (r.status_code, r.json()["code"]) == (403, code)
    assert "access-control-allow-origin" not in r.headers


def test_a_listed_origin_may_read_the_answer_and_others_may_not(browser) -> None:
    srv, _, key = browser
    auth = {"Authorization": f"Bearer {key['key']}"}
    ok = httpx.post(
        f"{srv.base}/v1/events", json={"name": "page view"}, headers={**auth, "Origin": ALLOWED}
    )
    assert (ok.status_code, ok.json()["accepted"]) == (200, 1)
    assert ok.headers["access-control-allow-origin"] == ALLOWED
    assert "Retry-After" in ok.headers["access-control-expose-headers"]

    other = httpx.post(
        f"{srv.base}/v1/events", json={"name": "page view"}, headers={**auth, "Origin": OTHER}
    )
    assert (other.status_code, other.json()["code"]) == (403, "origin_not_allowed")
    assert "access-control-allow-origin" not in other.headers

    # A 401 from a listed origin is readable by the page (it says what is wrong).
    nokey = httpx.post(f"{srv.base}/v1/events", json={"name": "x"}, headers={"Origin": ALLOWED})
    assert (nokey.status_code, nokey.json()["code"]) == (401, "missing_key")
    assert nokey.headers["access-control-allow-origin"] == ALLOWED

    # Without an Origin (a server, a script) nothing of CORS is added.
    plain = httpx.post(f"{srv.base}/v1/events", json={"name": "page view"}, headers=auth)
    assert plain.status_code == 200
    assert "access-control-allow-origin" not in plain.headers and "vary" not in plain.headers


def test_a_secret_key_from_a_browser_gets_no_cors_headers(browser) -> None:
    srv, dsn, _ = browser
    secret = json.loads(
        cli(dsn, "keys", "create", "--customer", "web", "--scopes", "write", "--json").stdout
    )
    r = httpx.post(
        f"{srv.base}/v1/events",
        json={"name": "x"},
        headers={"Authorization": f"Bearer {secret['key']}", "Origin": ALLOWED},
    )
    assert r.status_code == 200
    assert "access-control-allow-origin" not in r.headers


def test_a_publishable_key_cannot_read(browser) -> None:
    srv, _, key = browser
    r = httpx.get(
        f"{srv.base}/v1/metrics",
        params={"event": "page view"},
        headers={"Authorization": f"Bearer {key['key']}", "Origin": ALLOWED},
    )
    assert (r.status_code, r.json()["code"]) == (403, "publishable_key_cannot_read")


def test_an_options_request_without_origin_is_not_a_preflight(browser) -> None:
    srv, _, _ = browser
    r = httpx.options(f"{srv.base}/v1/events")
    assert (r.status_code, r.json()["code"]) == (405, "method_not_allowed")
    assert "takes POST" in r.json()["message"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--scopes", "write", "--publishable", "--origin", ALLOWED, "--signing"], "never signing"),
        (["--scopes", "write,read", "--publishable", "--origin", ALLOWED], "write-only"),
        (["--scopes", "write", "--publishable"], "at least one --origin"),
        (["--scopes", "write", "--origin", ALLOWED], "add --publishable"),
        (["--scopes", "write", "--publishable", "--origin", "https://a.example/path"], "origin"),
        (["--scopes", "write", "--publishable", "--origin", "*"], "no wildcard"),
    ],
)
def test_publishable_keys_are_write_only_unsigned_and_list_origins(fresh_dsn, args, says) -> None:
    r = cli(fresh_dsn, "keys", "create", "--customer", "web", *args)
    assert r.returncode == 2, r.stdout
    assert says in r.stderr
