"""A database outage: requests that need the database get 503 `database_unavailable`.

Real PostgreSQL and the real app in-process. The outage is the database refusing
connections (`ALLOW_CONNECTIONS false`) with every session to it terminated, which is what
clients see while PostgreSQL shuts down or is taken out for maintenance.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import asyncpg
import httpx2 as httpx
import pytest
from starlette.testclient import TestClient

from analytics.api.dberrors import database_errors, unavailable
from analytics.api.errors import ApiError
from analytics.app import create_app
from analytics.settings import Settings
from conftest import _admin
from serverproc import running_server
from test_api import make_key


@contextmanager
def database_down(pg_server: str, dsn: str) -> Iterator[None]:
    """The database of `dsn` refuses new connections and its sessions are ended; restored
    on exit (before the fixture drops it)."""
    name = urlsplit(dsn).path.lstrip("/")
    _admin(
        pg_server,
        f"ALTER DATABASE {name} ALLOW_CONNECTIONS false",
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'",
    )
    try:
        yield
    finally:
        _admin(pg_server, f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")


@pytest.fixture
def outage(pg_server: str, fresh_dsn: str):
    settings = Settings(database_url=fresh_dsn, connect_timeout_s=1.0, acquire_timeout_s=1.0)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client, fresh_dsn, lambda: database_down(pg_server, fresh_dsn)


def _auth(key) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.key}"}


def _assert_unavailable(r) -> None:
    assert (r.status_code, r.json()["code"]) == (503, "database_unavailable"), r.text
    assert 1 <= int(r.headers["retry-after"]) <= 2


def _outage_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Records from the request path (not the background jobs, which log their own retries)."""
    return [r for r in caplog.records if r.name.startswith("analytics.api")]


def test_a_key_looked_up_during_an_outage_gets_503_database_unavailable(outage, caplog):
    client, dsn, down = outage
    read = make_key(dsn, "acme", {"read"})
    write = make_key(dsn, "acme", {"write"})
    with down(), caplog.at_level(logging.INFO):
        _assert_unavailable(client.get("/v1/metrics", params={"event": "x"}, headers=_auth(read)))
        _assert_unavailable(client.post("/v1/events", json={"name": "x"}, headers=_auth(write)))
    logged = _outage_logs(caplog)
    assert [(r.levelno, r.exc_info) for r in logged] == [(logging.WARNING, None)] * 2
    assert all("key lookup" in r.getMessage() for r in logged)


def test_a_query_during_an_outage_gets_503_database_unavailable(outage, caplog):
    client, dsn, down = outage
    read = make_key(dsn, "acme", {"read"})
    params = {"event": "x", "interval": "minute"}
    assert client.get("/v1/metrics", params=params, headers=_auth(read)).status_code == 200
    with down(), caplog.at_level(logging.INFO):  # the key is cached: the query needs the database
        _assert_unavailable(client.get("/v1/metrics", params=params, headers=_auth(read)))
    logged = _outage_logs(caplog)
    assert [(r.levelno, r.exc_info) for r in logged] == [(logging.WARNING, None)]
    assert "query" in logged[0].getMessage()


def test_requests_succeed_again_once_the_database_is_back(outage):
    client, dsn, down = outage
    read = make_key(dsn, "acme", {"read"})
    with down():
        _assert_unavailable(client.get("/v1/metrics", params={"event": "x"}, headers=_auth(read)))
    deadline = time.monotonic() + 10
    while True:
        r = client.get("/v1/metrics", params={"event": "x"}, headers=_auth(read))
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        _assert_unavailable(r)
        time.sleep(0.1)
    assert r.status_code == 200, r.text


def test_an_outage_through_hypercorn_is_503s_and_one_warning_each(pg_server, blank_dsn):
    """A real server: its pooled connections die with their sessions, which asyncpg may
    only notice on the next statement (an `InternalClientError`, depending on timing)."""
    unknown = {"Authorization": "Bearer ak_1_deadbeef_" + "a" * 43}
    with running_server(blank_dsn) as server:
        with httpx.Client(base_url=server.base, timeout=10) as client:
            read = server.headers("read")
            assert client.get("/v1/metrics", params={"event": "x"}, headers=read).is_success
            with database_down(pg_server, blank_dsn):
                query = {"params": {"event": "x"}}
                requests = [
                    ("GET", "/v1/metrics", unknown, query),  # an uncached key
                    ("GET", "/v1/metrics", read, query),  # a cached key: the query
                    ("POST", "/v1/events", server.headers("write"), {"json": {"name": "x"}}),
                ]
                for method, path, headers, kwargs in requests:
                    _assert_unavailable(client.request(method, path, headers=headers, **kwargs))
        server.stop()
    output = "".join(server.output)
    assert output.count("database unavailable during") == len(requests), output
    # Nothing of ours logs a traceback (asyncpg's pool logs its own reconnect attempts).
    ours = [json.loads(line) for line in server.output if line.startswith('{"ts"')]
    ours = [r for r in ours if r["logger"].startswith("analytics")]
    assert not [r for r in ours if "Traceback" in r["msg"] or r["level"] == "error"], output
    assert "Error in ASGI Framework" not in output, output


def _server_error(severity: str, sqlstate: str, message: str) -> asyncpg.PostgresError:
    return asyncpg.PostgresError.new({"S": severity, "V": severity, "C": sqlstate, "M": message})


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConnectionRefusedError(111, "Connection refused"), True),
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (TimeoutError(), True),  # pool acquire, connect, command timeouts
        (asyncpg.CannotConnectNowError("the database system is shutting down"), True),
        (asyncpg.InterfaceError("pool is closing"), True),
        (asyncpg.ConnectionDoesNotExistError("connection was closed in the middle"), True),
        (asyncpg.InternalClientError("cannot switch to state 11; another operation (2)"), True),
        (_server_error("FATAL", "57P01", "terminating connection"), True),
        (_server_error("FATAL", "55000", 'database "x" is not currently accepting'), True),
        (_server_error("FATAL", "53300", "sorry, too many clients already"), True),
        (_server_error("ERROR", "55000", "currval is not yet defined"), False),
        (_server_error("ERROR", "23505", "duplicate key value"), False),
        (_server_error("ERROR", "42601", "syntax error"), False),
        (ValueError("a bug"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_what_counts_as_the_database_being_unavailable(exc, expected):
    assert unavailable(exc) is expected
    if expected:
        with pytest.raises(ApiError) as raised, database_errors("test"):
            raise exc
        assert (raised.value.status, raised.value.code) == (503, "database_unavailable")
        assert raised.value.headers["Retry-After"] == "1"
    else:
        with pytest.raises(type(exc)), database_errors("test"):
            raise exc
