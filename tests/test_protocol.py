"""HTTP/1.1 framing at the edge, over raw sockets to a real `analytics serve`: smuggling
(CL.TE), oversized heads, h2c and HTTP/2 prior knowledge, responses sent before the body
was read, and slow request heads (`analytics.api.protocol`)."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator

import httpx2 as httpx
import pytest

from conftest import _temporary_database
from dbutil import fetch
from serverproc import RawResponse, Server, read_responses, running_server


@pytest.fixture(scope="module")
def server(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module (every test leaves it as it found it)."""
    data_dir = str(tmp_path_factory.mktemp("data"))
    for dsn in _temporary_database(pg_server, "template0"):
        with running_server(dsn, ANALYTICS_DATA_DIR=data_dir) as server:
            server.dsn = dsn  # type: ignore[attr-defined]
            yield server


def connect(server: Server) -> socket.socket:
    port = int(server.base.rsplit(":", 1)[1])
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def exchange(server: Server, data: bytes, **read) -> tuple[list[RawResponse], bool]:
    """Sends `data` in one `sendall` on a new connection; the responses, and whether the
    server closed the connection after them (within `timeout_s`, 3 s by default)."""
    with connect(server) as sock:
        sock.sendall(data)
        return read_responses(sock, **{"timeout_s": 3, **read})


def event() -> tuple[str, bytes]:
    event_id = uuid.uuid4().hex
    return event_id, json.dumps({"name": "protocol", "event_id": event_id}).encode()


def post_head(server: Server, length: int, *extra: str, key: str | None = None) -> bytes:
    lines = [
        "POST /v1/events HTTP/1.1",
        "Host: 127.0.0.1",
        f"Authorization: Bearer {key or server.keys['write']}",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def stored(server: Server, *event_ids: str) -> list[str]:
    rows = fetch(
        server.dsn,  # type: ignore[attr-defined]
        "SELECT event_id FROM events WHERE event_id = ANY($1::text[])",
        list(event_ids),
    )
    return [r["event_id"] for r in rows]


def code(response: RawResponse) -> tuple[int, str | None]:
    """Status and error code (None for a response that is not an error body)."""
    body = json.loads(response.body) if response.body else {}
    return response.status, body.get("code") if isinstance(body, dict) else None


def test_a_keep_alive_connection_serves_request_after_request(server):
    """The baseline the guards must keep: no body, no `Connection: close`."""
    get = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    responses, closed = exchange(server, get * 3, count=3)
    assert [r.status for r in responses] == [200, 200, 200]
    assert all("connection" not in r.headers for r in responses)
    assert not closed


def test_content_length_with_chunked_is_refused_and_nothing_is_smuggled(server):
    """CL.TE: h11 reads the chunked body (event a) and would then run the bytes that only
    the Content-Length covered as a second request (event b)."""
    a_id, a = event()
    b_id, b = event()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(a), a)
    smuggled = post_head(server, len(b)) + b
    body = chunked + smuggled
    head = post_head(server, len(body), "Transfer-Encoding: chunked")
    responses, closed = exchange(server, head + body)
    assert [code(r) for r in responses] == [(400, "ambiguous_length")]
    assert responses[0].headers["connection"] == "close"
    assert closed  # the smuggled request never runs
    assert stored(server, a_id, b_id) == []


def test_a_64_kb_head_in_one_packet_is_refused(server):
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 64_000 + b"\r\n\r\n"
    responses, closed = exchange(server, head)
    assert [code(r) for r in responses] == [(431, "headers_too_large")]
    assert responses[0].headers["connection"] == "close"
    assert closed


def test_a_head_just_under_16_kib_is_served(server):
    padding = b"a" * (16 * 1024 - 200)
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + padding + b"\r\n\r\n"
    responses, _ = exchange(server, head, count=1)
    assert [r.status for r in responses] == [200]


H2C = (
    b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
)


def test_an_h2c_upgrade_is_ignored_and_served_as_http_1_1(server):
    responses, closed = exchange(server, H2C + b"\r\n", count=1)
    assert [r.status for r in responses] == [200]  # no 101 Switching Protocols
    assert json.loads(responses[0].body) == {"status": "ok"}
    assert not closed


def test_an_h2c_upgrade_gets_the_http_1_1_header_cap(server):
    responses, closed = exchange(server, H2C + b"X-Big: " + b"a" * 60_000 + b"\r\n\r\n")
    assert [code(r) for r in responses] == [(431, "headers_too_large")]
    assert closed


def test_http2_prior_knowledge_is_refused(server):
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame
    responses, closed = exchange(server, preface + settings)
    assert [r.status for r in responses] == [400]
    assert closed


def test_a_response_before_the_body_was_read_says_connection_close(server):
    """A 401 decided on the headers, 1 KB of a 100 KB body sent: the server will not read
    the rest, so it closes the connection, and says so."""
    with connect(server) as sock:
        sock.sendall(post_head(server, 100_000, key="ak_bad") + b"x" * 1000)
        responses, closed = read_responses(sock)
    assert [r.status for r in responses] == [401]
    assert responses[0].headers["connection"] == "close"
    assert closed


def test_a_keep_alive_client_refused_before_its_body_goes_on_with_its_next_request(server):
    headers = {"Content-Type": "application/json"}
    body = json.dumps({"name": "protocol", "properties": {"pad": "x" * 500_000}}).encode()
    with httpx.Client(base_url=server.base, timeout=10) as client:
        r = client.post(
            "/v1/events", content=body, headers={**headers, "Authorization": "Bearer ak_bad"}
        )
        assert r.status_code == 401
        assert r.headers["connection"] == "close"
        event_id, ok = event()
        r = client.post("/v1/events", content=ok, headers={**headers, **server.headers("write")})
        assert (r.status_code, r.json()["accepted"]) == (200, 1)
    assert stored(server, event_id) == [event_id]


def test_a_request_whose_body_was_read_keeps_the_connection(server):
    event_id, body = event()
    responses, closed = exchange(server, post_head(server, len(body)) + body, count=1)
    assert stored(server, event_id) == [event_id]
    assert [r.status for r in responses] == [200]
    assert "connection" not in responses[0].headers
    assert not closed


def test_a_slow_request_head_is_answered_408_and_logged(server):
    """Slowloris: half a head, then nothing. Hypercorn's keep-alive timer (5 s) ends it."""
    started = time.monotonic()
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        responses, closed = read_responses(sock, timeout_s=20)
    elapsed = time.monotonic() - started
    assert [r.status for r in responses] == [408]
    assert responses[0].headers["connection"] == "close"
    assert closed
    assert 4 < elapsed < 20, elapsed  # the 5 s timer; 20 s would be the read timeout's 30
    deadline = time.monotonic() + 5
    while "request head timed out" not in "".join(server.output):
        assert time.monotonic() < deadline, "no log line for the 408"
        time.sleep(0.05)
