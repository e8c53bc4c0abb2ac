"""Answers that say what to do: a refused single event is a 400 with its code, a batch sent
to /v1/events points to /v1/batch, and wrong endpoints name the right ones."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from analytics.app import create_app
from analytics.settings import Settings
from test_api import make_key


@pytest.fixture
def client(fresh_dsn: str) -> Iterator[tuple[TestClient, dict[str, str]]]:
    with TestClient(create_app(Settings(database_url=fresh_dsn))) as c:
        key = make_key(fresh_dsn, "acme", {"write"})
        yield c, {"Authorization": f"Bearer {key.key}", "Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("event", "code"),
    [
        ({"properties": {}}, "missing_name"),
        ({"name": "x", "value": "ten"}, "invalid_value"),
        ({"name": "x", "ts": "yesterday"}, "invalid_ts"),
        ({"name": "x", "properties": {"big": "y" * 40_000}}, "event_too_large"),
    ],
)
def test_a_refused_single_event_is_a_400_with_its_code(client, event, code) -> None:
    c, headers = client
    r = c.post("/v1/events", content=json.dumps(event), headers=headers)
    assert (r.status_code, r.json()["code"]) == (400, code), r.text
    assert r.json()["message"]
    # The same event in a batch is listed, and the batch answers 200.
    batch = c.post("/v1/batch", content=json.dumps({"events": [event]}), headers=headers)
    assert batch.status_code == 200
    assert [x["code"] for x in batch.json()["rejected"]] == [code]


def test_a_batch_sent_to_v1_events_is_pointed_to_v1_batch(client) -> None:
    c, headers = client
    body = {"events": [{"name": "a"}, {"name": "b"}]}
    r = c.post("/v1/events", content=json.dumps(body), headers=headers)
    assert r.json()["code"] == "too_many_events"
    assert "POST /v1/batch" in r.json()["message"]
    array = c.post("/v1/events", content=json.dumps([{"name": "a"}]), headers=headers)
    assert array.json()["code"] == "invalid_shape"
    assert "POST /v1/batch" in array.json()["message"]
    ndjson = c.post(
        "/v1/events",
        content=b'{"name": "a"}\n',
        headers={**headers, "Content-Type": "application/x-ndjson"},
    )
    assert (ndjson.status_code, ndjson.json()["code"]) == (415, "unsupported_media_type")
    assert "POST /v1/batch" in ndjson.json()["message"]


@pytest.mark.parametrize(
    ("method", "path", "near"),
    [
        ("POST", "/v1/event", "POST /v1/events"),
        ("POST", "/v1/batch/", "POST /v1/batch"),
        ("GET", "/v1/metric", "GET /v1/metrics"),
        ("POST", "/track", "POST /v1/track"),  # Segment's path is /v1/track
        ("POST", "/nothing/like/it", None),
    ],
)
def test_a_wrong_path_names_the_nearest_route_and_lists_them(client, method, path, near) -> None:
    c, headers = client
    r = c.request(method, path, headers=headers)
    assert (r.status_code, r.json()["code"]) == (404, "not_found")
    message = r.json()["message"]
    if near:
        assert f"did you mean {near}?" in message
    else:
        assert "did you mean" not in message
    assert "POST /v1/events, POST /v1/batch, GET /v1/metrics" in message
    assert "/openapi.json" in message


def test_a_wrong_method_says_which_the_route_takes(client) -> None:
    c, headers = client
    r = c.get("/v1/events", headers=headers)
    assert (r.status_code, r.json()["code"]) == (405, "method_not_allowed")
    assert r.json()["message"] == "/v1/events takes POST, not GET"
    assert r.headers["allow"] == "POST"
