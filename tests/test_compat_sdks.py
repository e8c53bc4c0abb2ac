"""Segment's and PostHog's own Python SDKs against a real `analytics serve`: what they send is
stored once per message id, mapped to our fields, and counted by `GET /v1/metrics`."""

from __future__ import annotations

import base64
import gzip
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import httpx2 as httpx
import pytest
from posthog import Posthog
from segment.analytics import Client as SegmentClient

from dbutil import fetch, fetchval
from serverproc import Server, running_server


def create_key(dsn: str, customer: str, *extra: str) -> dict[str, object]:
    argv = [sys.executable, "-m", "analytics.cli", "keys", "create", "--customer", customer]
    out = subprocess.run(
        [*argv, "--scopes", "write,read", *extra, "--json"],
        env={**os.environ, "DATABASE_URL": dsn},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def server(pg_dsn: str) -> Iterator[Server]:
    with running_server(pg_dsn) as server:
        yield server


def metrics(server: Server, key: str, **params: str) -> float:
    r = httpx.get(
        f"{server.base}/v1/metrics",
        params={"interval": "day", **params},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 200, r.text
    return sum(point["value"] for point in r.json()["series"][0]["points"])


def stored(dsn: str, customer_id: int) -> list:
    return fetch(
        dsn,
        "SELECT event_id, name, user_id, value, properties FROM events"
        " WHERE customer_id = $1 ORDER BY received_at, event_id",
        customer_id,
    )


def test_segment_sdk_events_are_stored_once_with_their_fields(server, pg_dsn):
    key = create_key(pg_dsn, "segment-sdk")
    errors: list[object] = []
    client = SegmentClient(
        str(key["key"]), host=server.base, gzip=True, on_error=lambda e, b: errors.append(e)
    )
    context = {
        "userAgent": "Mozilla/5.0 (X11) Firefox/128.0",
        "page": {"path": "/pricing", "referrer": "https://www.google.com/search"},
        "campaign": {"source": "newsletter"},
    }
    for i in range(20):
        client.track("u1", "Order Completed", {"revenue": 10}, context, message_id=f"seg-{i}")
    client.flush()
    # Sent again, in another request: the same messageIds are counted once.
    for i in range(5):
        client.track("u1", "Order Completed", {"revenue": 10}, context, message_id=f"seg-{i}")
    client.track(event="Order Completed", anonymous_id="anon-7", message_id="seg-anon")
    client.identify("u2", {"email": "x@example.com"}, anonymous_id="anon-7")
    client.page("u1", "Docs", "Intro", {"path": "/docs"}, message_id="seg-page")
    client.flush()
    client.shutdown()
    assert errors == []

    rows = stored(pg_dsn, key["customer_id"])
    ids = [r["event_id"] for r in rows]
    assert sorted(ids) == sorted([f"seg-{i}" for i in range(20)] + ["seg-anon", "seg-page"])
    first = next(r for r in rows if r["event_id"] == "seg-0")
    assert (first["name"], first["user_id"], first["value"]) == ("order completed", "u1", 10)
    props = json.loads(first["properties"])
    assert props["path"] == "/pricing"
    assert props["utm.source"] == "newsletter"
    assert props["user_agent"].startswith("Mozilla")
    anon = next(r for r in rows if r["event_id"] == "seg-anon")
    assert anon["user_id"] == "anon-7"
    assert fetch(
        pg_dsn,
        "SELECT anonymous_id, user_id FROM identities WHERE customer_id = $1",
        key["customer_id"],
    ) == [("anon-7", "u2")]

    read = str(key["key"])
    assert metrics(server, read, event="order completed") == 21
    assert metrics(server, read, event="order completed", agg="sum") == 200
    # anon-7 was identified as u2: two users, not an anonymous third.
    assert metrics(server, read, event="order completed", agg="unique_users") == 2
    by_ref = metrics(server, read, event="order completed", filter="referrer_host:www.google.com")
    assert by_ref == 20
    assert metrics(server, read, event="order completed", filter="browser:Firefox") == 20
    assert metrics(server, read, event="page view", filter="path:/docs") == 1


def test_posthog_sdk_events_are_stored_once_with_their_fields(server, pg_dsn):
    key = create_key(pg_dsn, "posthog-sdk")
    errors: list[object] = []
    client = Posthog(
        str(key["key"]),
        host=server.base,
        gzip=True,
        enable_local_evaluation=False,
        on_error=lambda e, b: errors.append(e),
    )
    ids = [str(uuid.uuid4()) for _ in range(10)]
    props = {"$current_url": "https://shop.example/cart?x=1", "$referrer": "https://bing.com/"}
    for event_id in ids:
        client.capture("Checkout", distinct_id="d1", properties=props, uuid=event_id)
    client.flush()
    for event_id in ids[:3]:  # resent: counted once
        client.capture("Checkout", distinct_id="d1", properties=props, uuid=event_id)
    client.alias(previous_id="user-1", distinct_id="d1")
    # A feature-flag call goes to /flags, which this service does not serve: the SDK gets a
    # 404, answers None and keeps capturing.
    assert client.evaluate_flags("d1").get_flag("beta") is None
    client.capture("Checkout", distinct_id="d2", properties=props, uuid=str(uuid.uuid4()))
    client.flush()
    client.shutdown()
    assert errors == []

    rows = stored(pg_dsn, key["customer_id"])
    checkouts = [r for r in rows if r["name"] == "checkout"]
    assert len(checkouts) == 11
    assert {r["event_id"] for r in checkouts} >= set(ids)
    first = json.loads(checkouts[0]["properties"])
    assert (first["path"], first["url"]) == ("/cart", "https://shop.example/cart?x=1")
    assert "token" not in first
    assert [r["name"] for r in rows].count("$create_alias") == 1
    links = "SELECT anonymous_id, user_id FROM identities WHERE customer_id = $1"
    assert fetch(pg_dsn, links, key["customer_id"]) == [("d1", "user-1")]
    read = str(key["key"])
    assert metrics(server, read, event="checkout") == 11
    assert metrics(server, read, event="checkout", filter="referrer_host:bing.com") == 11
    assert metrics(server, read, event="checkout", agg="unique_users") == 2  # user-1, d2


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def test_compatible_answers_and_errors(server, pg_dsn):
    key = create_key(pg_dsn, "compat-errors")
    k, cid = str(key["key"]), key["customer_id"]
    with httpx.Client(base_url=server.base) as http:
        r = http.post("/v1/track", json={"event": "a", "userId": "u", "messageId": "t1"},
                      headers=basic(k))  # fmt: skip
        assert (r.status_code, r.json()["success"], r.json()["accepted"]) == (200, True, 1)
        # One message refused: 400 with its code.
        r = http.post("/v1/track", json={"event": "a"}, headers=basic(k))
        assert (r.status_code, r.json()["code"]) == (400, "invalid_user_id")
        r = http.post("/v1/identify", json={"userId": "u", "anonymousId": "a"}, headers=basic(k))
        assert r.json() == {"success": True, "accepted": 0, "duplicates": 0, "rejected": []}
        # The key in the body, as analytics.js sends it.
        r = http.post("/v1/batch", json={"batch": [{"type": "track", "event": "b", "userId": 1,
                      "messageId": "t2"}], "writeKey": k})  # fmt: skip
        assert r.json()["accepted"] == 1
        # Our own /v1/batch is unchanged with a Bearer key.
        r = http.post("/v1/batch", json={"events": [{"name": "c", "event_id": "t3"}]},
                      headers={"Authorization": f"Bearer {k}"})  # fmt: skip
        assert r.json()["accepted"] == 1
        r = http.post("/v1/batch", json={"events": []}, headers=basic(k))
        assert (r.status_code, r.json()["code"]) == (400, "invalid_shape")
        r = http.post("/v1/track", json={"event": "a", "userId": "u"}, headers=basic("nope"))
        assert (r.status_code, r.json()["code"]) == (401, "invalid_key")
        r = http.post("/v1/track", json={"event": "a"}, headers={"Authorization": "Basic %%"})
        assert (r.status_code, r.json()["code"]) == (401, "invalid_key")
        r = http.post("/v1/batch", json={"batch": []})
        assert (r.status_code, r.json()["code"]) == (401, "missing_key")

        body = gzip.compress(json.dumps({"api_key": k, "event": "e", "distinct_id": "d",
                             "uuid": "p1"}).encode())  # fmt: skip
        for path in ("/i/v0/e/?compression=gzip-js", "/capture/"):
            headers = {} if "gzip" in path else {"Content-Encoding": "gzip"}
            r = http.post(path, content=body, headers=headers)
            assert r.status_code == 200, r.text
            assert r.json()["status"] == 1
        assert r.json()["duplicates"] == 1
        r = http.post("/capture", content=b"data=eyJ9", headers={"Content-Type":
                      "application/x-www-form-urlencoded"})  # fmt: skip
        assert (r.status_code, r.json()["code"]) == (415, "unsupported_media_type")
        r = http.post("/batch", json={"batch": [{"event": "e"}]})
        assert (r.status_code, r.json()["code"]) == (401, "missing_key")
        r = http.post("/capture?compression=lz64", content=b"xx")
        assert (r.status_code, r.json()["code"]) == (415, "unsupported_encoding")
    assert fetchval(pg_dsn, "SELECT count(*) FROM events WHERE customer_id = $1", cid) == 4


def test_keys_that_require_signing_are_refused_with_a_code(server, pg_dsn):
    signed = str(create_key(pg_dsn, "compat-signed", "--signing")["key"])
    event = {"event": "a", "userId": "u"}
    r = httpx.post(f"{server.base}/v1/track", json=event, headers=basic(signed))
    assert (r.status_code, r.json()["code"]) == (403, "signed_key_unsupported")
    r = httpx.post(f"{server.base}/capture/", json={"api_key": signed, **event})
    assert (r.status_code, r.json()["code"]) == (403, "signed_key_unsupported")
