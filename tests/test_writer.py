"""The group-commit writer: its backpressure estimate (pure functions), and what it does when
PostgreSQL refuses one request's rows (a real database)."""

from __future__ import annotations

import functools
import json
import random
import string
import time
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg
import pytest

from analytics.normalize import Limits, normalize_batch
from analytics.pipeline.writer import (
    BLIND_RETRY_AFTER_S,
    MAX_RETRY_AFTER_S,
    GroupCommitWriter,
    Unstorable,
    commit_rate,
    retry_after,
)
from analytics.settings import Settings
from analytics.store.bootstrap import customer_with_keys
from analytics.store.group_commit import refuses_rows
from analytics.store.pool import connect
from analytics.store.rollups import Folder


def test_commit_rate_counts_only_recent_commits():
    commits = [(0.0, 10_000), (9.0, 1_000), (10.0, 1_000)]
    # The commit at t=0 is older than the window; two commits of 1,000 rows in 1 s, but a
    # span under half a second counts as half a second.
    assert commit_rate(commits, now=10.0) == 2_000 / 1.0
    assert commit_rate([(10.0, 500)], now=10.0) == 500 / 0.5
    assert commit_rate(commits, now=100.0) is None


def test_retry_after_is_the_time_to_commit_what_is_queued():
    recent = [(9.0, 2_000), (10.0, 2_000)]  # 4,000 rows/s
    assert retry_after(20_000, recent, now=10.0, saturation=1.0) == 5
    # A full inbox of small requests drains in well under a second: come back in 1 s...
    assert retry_after(256, recent, now=10.0, saturation=1.0) == 1
    # ...and a slow database makes the wait longer, up to the cap.
    assert retry_after(20_000, [(10.0, 100)], now=10.0, saturation=1.0) == MAX_RETRY_AFTER_S


def test_retry_after_without_recent_commits_grows_with_the_fill():
    assert retry_after(5, [], now=10.0, saturation=0.1) < retry_after(5, [], 10.0, 1.0)
    assert retry_after(5, [], now=10.0, saturation=1.0) == BLIND_RETRY_AFTER_S
    assert retry_after(5, [], now=10.0, saturation=0.0) == 1


# --- Against a real PostgreSQL: one request whose rows cannot be stored ---------------------

#: A user id PostgreSQL cannot index (random letters compress too little to fit a btree
#: entry's 2,704 bytes). The normalizer's default limit (256 characters) keeps such ids out, so
#: the poison is made with a looser limit than the service's.
UNINDEXABLE = "".join(random.Random(7).choices(string.ascii_letters, k=6000))


def _payload(customer_id: int, names: list[str], *, user_id: str = "u") -> tuple[bytes, int]:
    events = [{"name": n, "value": 1.0, "user_id": user_id} for n in names]
    result = normalize_batch(
        json.dumps({"events": events}).encode(),
        time.time_ns() // 1000,
        customer_id=str(customer_id),
        limits=Limits(max_events=100, max_user_id_chars=10_000),
    )
    assert result.accepted == len(names)
    return result.copy_data, len(names)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_request_postgres_refuses_fails_alone(fresh_dsn):
    settings = Settings(database_url=fresh_dsn)
    conn = await connect(fresh_dsn, settings)
    try:
        a = (await customer_with_keys(conn, "a", datetime.now(UTC))).customer_id
        b = (await customer_with_keys(conn, "b", datetime.now(UTC))).customer_id
        writer = GroupCommitWriter(
            functools.partial(connect, fresh_dsn, settings),
            window_s=0.5,  # long enough for the three submits below to share one commit
            connections=1,
        )
        outcomes: dict[str, object] = {}

        async def submit(label: str, payload: tuple[bytes, int]) -> None:
            try:
                outcomes[label] = await writer.submit(*payload)
            except Unstorable as e:
                outcomes[label] = e

        async with anyio.create_task_group() as tg:
            await tg.start(writer.run)
            async with anyio.create_task_group() as requests:
                requests.start_soon(submit, "a", _payload(a, ["ok_a"]))
                requests.start_soon(submit, "poison", _payload(a, ["big"], user_id=UNINDEXABLE))
                requests.start_soon(submit, "b", _payload(b, ["ok_b"]))
            writer.close()
        assert outcomes["a"] == (1, 0)
        assert outcomes["b"] == (1, 0)
        assert isinstance(outcomes["poison"], Unstorable)
        stored = await conn.fetch("SELECT name, count(*) AS n FROM events GROUP BY name")
        assert {r["name"]: r["n"] for r in stored} == {"ok_a": 1, "ok_b": 1}
    finally:
        await conn.close()


def _error(sqlstate: str, message: str, function: str = "") -> asyncpg.PostgresError:
    return asyncpg.PostgresError.new({"S": "ERROR", "C": sqlstate, "M": message, "R": function})


def test_what_counts_as_rows_refused_single_node_and_citus():
    """Citus relays a shard's COPY error without its SQLSTATE (XX000 from ReportCopyError):
    a refusal of the rows unless the shard's message is a passing failure."""
    assert refuses_rows(_error("22003", "bigint out of range"))
    assert refuses_rows(_error("54000", "index row size 6040 exceeds btree version 4 maximum"))
    relayed = "index row size 6040 exceeds btree version 4 maximum 2704 for index"
    assert refuses_rows(_error("XX000", relayed, "ReportCopyError"))
    for passing in ("canceling statement due to lock timeout", "deadlock detected",
                    "terminating connection due to administrator command"):  # fmt: skip
        assert not refuses_rows(_error("XX000", passing, "ReportCopyError"))
    assert not refuses_rows(_error("XX000", relayed, "elog_finish"))  # a real internal error
    assert not refuses_rows(_error("40001", "could not serialize access"))
    assert not refuses_rows(_error("57014", "canceling statement due to statement timeout"))


@pytest.mark.anyio
async def test_requests_arriving_during_a_linger_share_one_commit_whatever_the_lanes(fresh_dsn):
    """With two lanes, the requests arriving while one lane lingers all join its batch: the
    other lane waits for its turn to gather instead of lingering beside it with half of them."""
    settings = Settings(database_url=fresh_dsn)
    conn = await connect(fresh_dsn, settings)
    try:
        a = (await customer_with_keys(conn, "a", datetime.now(UTC))).customer_id
        writer = GroupCommitWriter(
            functools.partial(connect, fresh_dsn, settings),
            window_s=0.5,
            linger_requests=1000,  # linger the whole window once requests arrive fast
            connections=2,
        )
        async with anyio.create_task_group() as tg:
            await tg.start(writer.run)
            async with anyio.create_task_group() as requests:
                for i in range(4):  # all at once: the arrival rate says "linger"
                    requests.start_soon(writer.submit, *_payload(a, [f"warm{i}"]))
            primed = len(writer._commits)
            async with anyio.create_task_group() as requests:
                for i in range(6):
                    requests.start_soon(writer.submit, *_payload(a, [f"e{i}"]))
                    await anyio.sleep(0.03)  # six requests well within one linger
            writer.close()
        assert [rows for _, rows in list(writer._commits)[primed:]] == [6]
        assert await conn.fetchval("SELECT count(*) FROM events") == 10
    finally:
        await conn.close()


@pytest.mark.anyio
async def test_both_commit_forms_store_the_same(fresh_dsn, monkeypatch):
    """Small commits go as column arrays, large ones through COPY and the staging table: the
    same requests must leave the same events, per-request counts, cache invalidations and
    (once folded) rollups either way."""
    from analytics.store import group_commit
    from analytics.store.notify import INVALIDATE

    settings = Settings(database_url=fresh_dsn)
    conn = await connect(fresh_dsn, settings)
    listener = await connect(fresh_dsn, settings)
    notified: list[list] = []
    both = anyio.Event()  # (customer, name) for the commit's two names

    def on_notification(*args: object) -> None:
        notified.append(json.loads(str(args[-1])))
        if len(notified) == 2:
            both.set()

    await listener.add_listener(INVALIDATE, on_notification)
    try:
        await group_commit.prepare_connection(conn)
        statements = group_commit.CommitStatements.build()
        window = timedelta(seconds=60)
        ts = int(time.time() * 1000)
        body = json.dumps(
            {
                "events": [
                    {
                        "name": "v",
                        "event_id": "1",
                        "ts": ts,
                        "properties": {"path": "/a", "country": "DE"},
                    },
                    {
                        "name": "v",
                        "event_id": "2",
                        "ts": ts - 5,
                        "value": 2.5,
                        "properties": {"path": "/b"},
                    },
                    {
                        "name": "v",
                        "event_id": "1",
                        "ts": ts - 3,
                        "properties": {"path": "/dup"},
                    },  # in-load dup
                    {"name": "w", "user_id": "u", "ts": ts},
                    {"name": "w", "user_id": "u", "ts": ts - 60_000, "value": 1},
                ]
            }
        ).encode()
        results = {}
        for form, limit in (("arrays", 1_000), ("staged", 0)):
            monkeypatch.setattr(group_commit, "ARRAY_ROWS_MAX", limit)
            notified.clear()
            both = anyio.Event()
            customer = (await customer_with_keys(conn, form, datetime.now(UTC))).customer_id
            batch = normalize_batch(body, time.time_ns() // 1000, customer_id=str(customer))
            second = normalize_batch(body, time.time_ns() // 1000, customer_id=str(customer))
            payloads = [batch.copy_data, second.copy_data]  # the retry in the same commit
            counts = await group_commit.write_group(
                conn, payloads, [0, batch.accepted], 2 * batch.accepted, datetime.now(UTC),
                window, statements,
            )  # fmt: skip
            events = await conn.fetch(
                "SELECT name, event_id, user_id, value, properties, flags FROM events"
                " WHERE customer_id = $1 ORDER BY name, event_id, ts",
                customer,
            )
            assert await Folder(settings.dimensions).fold(conn, 5.0) is not None
            rollups = await conn.fetch(
                "SELECT name, dim, dim_value, count, sum_value FROM rollup_minute"
                " WHERE customer_id = $1 ORDER BY 1, 2, 3",
                customer,
            )
            with anyio.fail_after(5):
                await both.wait()
            assert {n[0] for n in notified} == {customer}
            invalidations = sorted(tuple(n[1:]) for n in notified)
            results[form] = (
                counts, [tuple(r) for r in events], [tuple(r) for r in rollups], invalidations
            )  # fmt: skip
        assert results["arrays"] == results["staged"]
        counts, events, rollups, invalidations = results["arrays"]
        assert counts == [(0, 4)]  # the first request's 4 distinct events; the retry adds none
        assert [e[:2] for e in events] == [("v", "1"), ("v", "2"), ("w", None), ("w", None)]
        assert ("v", "path", "/a", 1, 0.0) in rollups and ("v", "", "", 2, 2.5) in rollups
        # One per name loaded, with its event-time range in µs: exact either way.
        assert [n[0] for n in invalidations] == ["v", "w"]
        assert invalidations == [
            ("v", (ts - 5) * 1000, ts * 1000),
            ("w", (ts - 60_000) * 1000, ts * 1000),
        ]
    finally:
        await listener.close()
        await conn.close()


def test_the_writer_lingers_only_while_requests_arrive_fast_enough():
    writer = GroupCommitWriter(lambda: None, window_s=0.005, linger_requests=8)  # type: ignore[arg-type]
    assert writer.linger_s(0.0) == 0.0  # idle: commit at once
    writer._rate, writer._rate_at = 100.0, 0.0  # 0.5 requests expected within 5 ms
    assert writer.linger_s(0.0) == 0.0
    writer._rate = 1_000.0  # 5 within the window: wait it out for more
    assert writer.linger_s(0.0) == 0.005
    writer._rate = 10_000.0  # 7 more arrive within 0.7 ms: no longer than that
    assert writer.linger_s(0.0) == pytest.approx(0.0007)
    assert writer.linger_s(10.0) == 0.0  # the rate decays once requests stop
