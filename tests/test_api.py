"""The HTTP API end to end: real PostgreSQL, the real app with its lifespan and writer."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg
import pytest
from prometheus_client import REGISTRY
from starlette.testclient import TestClient

from analytics.app import create_app
from analytics.normalize import sign
from analytics.settings import Settings
from analytics.store.bootstrap import create_customer_key
from analytics.store.flag_overrides import set_flag
from dbutil import fetchval

NOW = datetime.now(UTC).replace(second=0, microsecond=0)


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def make_key(dsn: str, customer: str, scopes: set[str], signing: bool = False):
    async def go():
        conn = await asyncpg.connect(dsn)
        try:
            _, key = await create_customer_key(conn, customer, scopes, signing, datetime.now(UTC))
            return key
        finally:
            await conn.close()

    return anyio.run(go)


@pytest.fixture
def env(fresh_dsn) -> Iterator[dict]:
    settings = Settings(database_url=fresh_dsn, max_event_body_bytes=64 * 1024)
    with TestClient(create_app(settings)) as client:
        a_write = make_key(fresh_dsn, "acme", {"write"})
        a_read = make_key(fresh_dsn, "acme", {"read"})
        b_both = make_key(fresh_dsn, "globex", {"read", "write"})
        signed = make_key(fresh_dsn, "signed-co", {"read", "write"}, signing=True)
        yield {
            "client": client,
            "dsn": fresh_dsn,
            "a_write": {"Authorization": f"Bearer {a_write.key}"},
            "a_read": {"Authorization": f"Bearer {a_read.key}"},
            "b": {"Authorization": f"Bearer {b_both.key}"},
            "signed": signed,
        }


def post(env, path, body, headers=None, content_type="application/json", auth="a_write"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    h = {**env[auth], "Content-Type": content_type, **(headers or {})}
    return env["client"].post(path, content=data, headers=h)


def metrics(env, auth="a_read", **params):
    params.setdefault("from", iso(NOW - timedelta(hours=2)))
    params.setdefault("to", iso(NOW + timedelta(minutes=5)))
    return env["client"].get("/v1/metrics", params=params, headers=env[auth])


def events(n, name="signup", **extra):
    ts_ms = int((NOW - timedelta(minutes=30)).timestamp() * 1000)
    return [{"name": name, "event_id": f"{name}-{i}", "ts": ts_ms + i, **extra} for i in range(n)]


def test_single_event_round_trip(env):
    r = post(env, "/v1/events", {"name": "Page View", "properties": {"path": "/home"}})
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    window = {"from": iso(hour - timedelta(hours=2)), "to": iso(hour + timedelta(hours=1))}
    m = metrics(env, event="page view", interval="hour", **window)
    assert m.status_code == 200, m.text
    body = m.json()
    assert sum(p["value"] for p in body["series"][0]["points"]) == 1
    assert len(body["series"][0]["points"]) == 3  # every bucket, empty ones included


def test_batch_is_counted_once_and_retry_reports_duplicates(env):
    batch = {"events": events(50), "sent_at": int(time.time() * 1000)}
    first = post(env, "/v1/batch", batch)
    assert first.json() == {"accepted": 50, "duplicates": 0, "rejected": []}
    second = post(env, "/v1/batch", batch)
    assert second.json() == {"accepted": 0, "duplicates": 50, "rejected": []}
    assert fetchval(env["dsn"], "SELECT count(*) FROM events WHERE name = 'signup'") == 50
    total = metrics(env, event="signup", interval="minute").json()
    assert sum(p["value"] for p in total["series"][0]["points"]) == 50


def test_ndjson_and_gzip(env):
    lines = b"\n".join(json.dumps(e).encode() for e in events(3, name="nd"))
    r = post(env, "/v1/batch", lines + b"\n{oops\n", content_type="application/x-ndjson")
    assert r.json()["accepted"] == 3
    assert [(x["index"], x["code"], x["retryable"]) for x in r.json()["rejected"]] == [
        (3, "invalid_json", False)
    ]
    gz = gzip.compress(json.dumps({"events": events(4, name="gz")}).encode())
    r = post(env, "/v1/batch", gz, headers={"Content-Encoding": "gzip"})
    assert r.json()["accepted"] == 4


def test_metrics_match_raw_events(env):
    paths = ["/a", "/b", "/a", "/c", "/a", "/b"]
    evs = [
        {**e, "value": i, "user_id": f"u{i % 3}", "properties": {"path": p, "country": "DE"}}
        for i, (e, p) in enumerate(zip(events(6, name="buy"), paths, strict=True))
    ]
    assert post(env, "/v1/batch", {"events": evs}).json()["accepted"] == 6
    grouped = metrics(env, event="buy", interval="hour", group_by="path").json()
    totals = {s["group"]: sum(p["value"] for p in s["points"]) for s in grouped["series"]}
    assert totals == {"/a": 3, "/b": 2, "/c": 1}
    assert [s["group"] for s in grouped["series"]] == ["/a", "/b", "/c"]
    summed = metrics(env, event="buy", agg="sum", filter="path:/a").json()
    assert sum(p["value"] for p in summed["series"][0]["points"]) == 0 + 2 + 4
    users = metrics(env, event="buy", agg="unique_users", filter=["path:/a", "country:DE"]).json()
    assert sum(p["value"] for p in users["series"][0]["points"]) == 3  # u0, u2, u1
    sql = "SELECT count(*) FROM events WHERE name = 'buy' AND properties->>'path' = '/a'"
    by_raw = fetchval(env["dsn"], sql)
    by_rollup = metrics(env, event="buy", filter="path:/a").json()
    assert sum(p["value"] for p in by_rollup["series"][0]["points"]) == by_raw == 3


def test_customers_are_isolated(env):
    post(env, "/v1/events", {"name": "secret"})
    post(env, "/v1/events", {"name": "secret"}, auth="b")
    post(env, "/v1/events", {"name": "secret"}, auth="b")
    mine = metrics(env, event="secret").json()
    theirs = metrics(env, auth="b", event="secret").json()
    assert sum(p["value"] for p in mine["series"][0]["points"]) == 1
    assert sum(p["value"] for p in theirs["series"][0]["points"]) == 2


def test_signed_keys(env):
    key = env["signed"]
    body = json.dumps({"name": "signed"}).encode()
    auth = {"Authorization": f"Bearer {key.key}", "Content-Type": "application/json"}
    client = env["client"]
    assert client.post("/v1/events", content=body, headers=auth).json()["code"] == (
        "missing_signature"
    )
    secret = key.signing_secret.encode()
    good = sign(secret, body, int(time.time()))
    r = client.post("/v1/events", content=body, headers={**auth, "X-Signature": good})
    assert r.status_code == 200
    stale = sign(secret, body, int(time.time()) - 3600)
    r = client.post("/v1/events", content=body, headers={**auth, "X-Signature": stale})
    assert (r.status_code, r.json()["code"]) == (401, "stale_signature")
    r = client.post("/v1/events", content=body + b" ", headers={**auth, "X-Signature": good})
    assert (r.status_code, r.json()["code"]) == (401, "bad_signature")


def test_a_replayed_signed_request_counts_once(env):
    """An event with neither event_id nor ts would count at every receipt; in a signed
    request it is told apart by the signature, so a captured request sent again is a
    duplicate, while the same body signed anew is a new event."""
    key = env["signed"]
    auth = {"Authorization": f"Bearer {key.key}", "Content-Type": "application/json"}
    secret = key.signing_secret.encode()
    body = json.dumps({"events": [{"name": "replayed"}, {"name": "replayed"}]}).encode()
    captured = {**auth, "X-Signature": sign(secret, body, int(time.time()) - 10)}
    answers = [env["client"].post("/v1/batch", content=body, headers=captured) for _ in range(3)]
    assert [(r.json()["accepted"], r.json()["duplicates"]) for r in answers] == [
        (2, 0),
        (0, 2),
        (0, 2),
    ]
    anew = {**auth, "X-Signature": sign(secret, body, int(time.time()))}
    r = env["client"].post("/v1/batch", content=body, headers=anew)
    assert (r.json()["accepted"], r.json()["duplicates"]) == (2, 0)


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "code"),
    [
        ("/v1/events", b"{", {}, 400, "invalid_json"),
        ("/v1/events", b"[1]", {}, 400, "invalid_shape"),
        ("/v1/events", b"", {}, 400, "empty_body"),
        ("/v1/events", b"x" * (64 * 1024 + 1), {}, 413, "body_too_large"),
        ("/v1/events", b"{}", {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ("/v1/events", b"{}", {"Content-Encoding": "br"}, 415, "unsupported_encoding"),
        ("/v1/events", b"{}", {"Authorization": ""}, 401, "missing_key"),
        ("/v1/events", b"{}", {"Authorization": "Bearer ak_1_x_y"}, 401, "invalid_key"),
        ("/v1/batch", gzip.compress(b" " * (6 << 20)), {"Content-Encoding": "gzip"}, 413, None),
        ("/v1/batch", json.dumps({"events": [{"name": "x"}] * 5001}).encode(), {}, 413, None),
    ],
)
def test_error_codes(env, path, body, headers, status, code):
    r = post(env, path, body, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json()["code"] == (code or r.json()["code"])


def test_scopes(env):
    r = env["client"].get("/v1/metrics", params={"event": "x"}, headers=env["a_write"])
    assert (r.status_code, r.json()["code"]) == (403, "wrong_scope")
    r = post(env, "/v1/events", {"name": "x"}, auth="a_read")
    assert (r.status_code, r.json()["code"]) == (403, "wrong_scope")


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"event": "x", "interval": "minute", "from": "2023-01-01T00:00:00Z"}, "range_too_large"),
        (
            {"event": "x", "interval": "minute", "from": iso(NOW - timedelta(days=3))},
            "too_many_buckets",
        ),
        ({"event": "x", "group_by": "email"}, "unknown_dimension"),
        ({"event": "x", "filter": "path"}, "invalid_filter"),
        ({"event": "x", "interval": "week"}, "invalid_interval"),
        ({"event": "x", "agg": "avg"}, "invalid_agg"),
        ({"event": "x", "from": "yesterday"}, "invalid_time"),
        ({"interval": "hour"}, "missing_event"),
        ({"event": "x", "bogus": "1"}, "unknown_parameter"),
    ],
)
def test_query_errors(env, params, code):
    r = metrics(env, **params)
    assert (r.status_code, r.json()["code"]) == (400, code), r.text


def test_health_and_readiness(env):
    assert env["client"].get("/healthz").json() == {"status": "ok"}
    assert env["client"].get("/readyz").json() == {"status": "ready"}
    assert env["client"].get("/nope").json()["code"] == "not_found"


def test_metrics_exposition_and_request_ids(env):
    r = post(env, "/v1/events", {"name": "m"}, headers={"X-Request-ID": "req-42"})
    assert r.headers["x-request-id"] == "req-42"
    assert len(env["client"].get("/healthz").headers["x-request-id"]) == 32  # generated
    time.sleep(0.1)  # a few watchdog ticks
    text = env["client"].get("/metrics").text
    for series in (
        'analytics_http_requests_total{method="POST",route="/v1/events",scenario="none",'
        'status="200"}',
        "analytics_loop_lag_seconds_count",
        'analytics_limiter_capacity{limiter="billing_sdk"}',
        "analytics_writer_commit_seconds_count",
    ):
        assert series in text, series


def test_cached_closed_ranges_never_serve_stale_counts_across_workers(fresh_dsn):
    """Two app instances on one database stand for two worker processes: B caches a closed
    range, A acknowledges a late event inside it, and B's very next read counts it."""
    write = make_key(fresh_dsn, "acme", {"write"})
    read = make_key(fresh_dsn, "acme", {"read"})
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    params = {"event": "late", "interval": "hour", "from": iso(hour - timedelta(hours=3))}
    params["to"] = iso(hour)  # only closed buckets
    late = {"name": "late", "ts": int((hour - timedelta(hours=2)).timestamp() * 1000)}
    headers = {"Authorization": f"Bearer {write.key}", "Content-Type": "application/json"}
    settings = Settings(database_url=fresh_dsn)
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:

        def hits() -> float:  # both apps share this process's Prometheus registry
            return REGISTRY.get_sample_value("analytics_cache_hits_total") or 0.0

        def total() -> int:
            r = b.get("/v1/metrics", params=params, headers={"Authorization": f"Bearer {read.key}"})
            return sum(p["value"] for p in r.json()["series"][0]["points"])

        for expected in range(1, 4):
            r = a.post("/v1/events", json=late | {"event_id": str(expected)}, headers=headers)
            assert r.json()["accepted"] == 1
            before = hits()
            assert total() == expected
            assert total() == expected
            assert hits() == before + 1  # the second read came from the cache


def test_enrichment_flag_switches_user_agent_parsing_at_run_time(env):
    ua = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"
    evs = [{"name": "visit", "properties": {"user_agent": ua}}]
    assert post(env, "/v1/batch", {"events": evs}).json()["accepted"] == 1
    flags = env["client"].app.state.services.flags

    async def switch_off():
        conn = await asyncpg.connect(env["dsn"])
        try:
            await set_flag(conn, "enrichment", False, datetime.now(UTC))
        finally:
            await conn.close()

    anyio.run(switch_off)
    deadline = time.monotonic() + 10
    while flags.enabled("enrichment") and time.monotonic() < deadline:
        time.sleep(0.05)  # every worker picks the change up from NOTIFY
    assert not flags.enabled("enrichment")
    evs = [{"name": "visit", "properties": {"user_agent": ua}}, {"name": "visit"}]
    assert post(env, "/v1/batch", {"events": evs}).json()["accepted"] == 2
    grouped = metrics(env, event="visit", group_by="browser").json()
    totals = {s["group"]: sum(p["value"] for p in s["points"]) for s in grouped["series"]}
    # Only the event written while enrichment was on has a browser; the two written after
    # it are the events without one (the None group), so the groups add up to the total.
    assert totals == {"Firefox": 1, None: 2}


@pytest.mark.parametrize(
    ("declared", "status", "code"),
    [
        ("\u00b2".encode("latin-1"), 400, "invalid_content_length"),  # str.isdigit() says yes
        (b"-1", 400, "invalid_content_length"),
        (b"12a", 400, "invalid_content_length"),
        (b"1" * 5000, 413, "body_too_large"),  # a number, too long for int() to parse
    ],
    ids=["superscript", "negative", "suffix", "5000-digits"],
)
def test_content_length_that_is_no_ascii_number_is_refused(env, declared, status, code):
    r = post(env, "/v1/events", b'{"name": "x"}', headers={"Content-Length": declared})
    assert (r.status_code, r.json()["code"]) == (status, code)
