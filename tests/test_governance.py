"""Data governance against the real app: `analytics export` read back through
`POST /v1/batch`, and `analytics erase` seen through `GET /v1/metrics`.

The commands run as subprocesses on the test database while the app (TestClient, with its
writer and cache listener) serves the same database.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import asyncpg
import pytest
from starlette.testclient import TestClient

from analytics.app import create_app
from analytics.settings import DEFAULT_DIMENSIONS, Settings
from analytics.store.bootstrap import create_customer_key
from analytics.store.dimensions import dimension_expr
from analytics.store.export import export_events
from cliproc import cli
from dbutil import fetch, settle

NOW = datetime.now(UTC).replace(second=0, microsecond=0)
# The events without `ts` are stored at their receive time: in a long session (the Citus run
# takes minutes before this module's tests) that is well after NOW, the time of import.
START, END = NOW - timedelta(hours=2), NOW + timedelta(hours=6)


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def bearer(dsn: str, customer: str, scopes: set[str]) -> dict[str, str]:
    async def run():
        conn = await asyncpg.connect(dsn)
        try:
            _, key = await create_customer_key(conn, customer, scopes, False, NOW)
            return key.key
        finally:
            await conn.close()

    return {"Authorization": f"Bearer {anyio.run(run)}"}


@pytest.fixture
def app(fresh_dsn: str) -> Iterator[dict]:
    with TestClient(create_app(Settings(database_url=fresh_dsn))) as client:
        yield {
            "client": client,
            "dsn": fresh_dsn,
            "acme": bearer(fresh_dsn, "acme", {"read", "write"}),
            "copy": bearer(fresh_dsn, "copy", {"read", "write"}),
        }


def send(app: dict, who: str, body: bytes, ndjson: bool = False) -> dict:
    kind = "application/x-ndjson" if ndjson else "application/json"
    r = app["client"].post("/v1/batch", content=body, headers={**app[who], "Content-Type": kind})
    assert r.status_code == 200, r.text
    return r.json()


def series(app: dict, who: str = "acme", **params) -> dict[str | None, float]:
    """The metric's total per group over the test's window (None: ungrouped)."""
    params = {"from": iso(START), "to": iso(END), "interval": "hour", **params}
    r = app["client"].get("/v1/metrics", params=params, headers=app[who])
    assert r.status_code == 200, r.text
    return {s["group"]: sum(p["value"] for p in s["points"]) for s in r.json()["series"]}


# Users, pages, countries and browsers mixed so that some rollup rows hold only u1's events
# (they must disappear) and others hold u1's and someone else's (they must shrink).
EVENTS = [
    {"name": "Page View", "event_id": f"pv-{i}", "ts": iso(NOW - timedelta(minutes=10 + i % 7)),
     "user_id": f"u{i % 3}", "value": i * 0.5,
     "properties": {"path": f"/p{i % 4}", "country": ["DE", "FR"][i % 2],
                    "user_agent": ["Mozilla/5.0 Firefox/120.0", "Chrome/119.0 Safari/537"][i % 2],
                    "utm": {"source": ["mail", "ads", "web"][i % 3]}}}
    for i in range(30)
] + [  # no event_id, no ts: deduplicated on a fingerprint, stored at receive time
    {"name": "signup", "user_id": "u1", "value": 3, "properties": {"path": "/join"}},
    {"name": "signup", "user_id": 7, "value": 4, "properties": {"plan": {"tier": "pro"}}},
]  # fmt: skip


#: Every kind of answer: totals, sums, unique users, each dimension grouped (counts and sums)
#: from rollups, filtered from rollups, a filter with another grouping (raw events), and
#: closed ranges (cached).
QUERIES = [
    {"event": "page view"},
    {"event": "page view", "agg": "sum"},
    {"event": "signup"},
    {"event": "signup", "agg": "sum"},
    {"event": "page view", "agg": "unique_users"},
    *({"event": "page view", "group_by": d} for d in DEFAULT_DIMENSIONS),
    *({"event": "page view", "group_by": d, "agg": "sum"} for d in DEFAULT_DIMENSIONS),
    {"event": "page view", "filter": "country:DE"},
    {"event": "page view", "group_by": "path", "filter": "country:FR"},
    # Closed ranges, served from the query cache once answered: a change must invalidate them.
    {"event": "page view", "interval": "minute", "to": iso(NOW)},
    {"event": "page view", "interval": "minute", "to": iso(NOW), "group_by": "country"},
]


def ingest(app: dict) -> None:
    result = send(app, "acme", json.dumps({"events": EVENTS}).encode())
    assert result == {"accepted": len(EVENTS), "duplicates": 0, "rejected": []}


def test_an_export_reads_back_into_another_customer_once(app: dict, tmp_path: Path) -> None:
    ingest(app)
    out = tmp_path / "acme.ndjson"
    exported = cli(app["dsn"], "export", "--customer", "acme", "--from", iso(START),
                   "--to", iso(END), "--out", str(out))  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert f"exported {len(EVENTS)} events" in exported.stderr
    lines = out.read_bytes().splitlines()
    assert len(lines) == len(EVENTS)
    first = json.loads(lines[0])
    assert list(first) == ["name", "event_id", "ts", "user_id", "value", "properties"]
    fingerprinted = [json.loads(x) for x in lines if json.loads(x)["name"] == "signup"]
    assert all(e["event_id"].startswith("fp:") for e in fingerprinted)  # the dedup key
    assert {e["user_id"] for e in fingerprinted} == {"u1", "7"}

    body = out.read_bytes()
    assert send(app, "copy", body, ndjson=True) == {
        "accepted": len(EVENTS), "duplicates": 0, "rejected": []}  # fmt: skip
    assert send(app, "copy", body, ndjson=True) == {
        "accepted": 0, "duplicates": len(EVENTS), "rejected": []}  # fmt: skip

    # The copy holds the same events: its export (to stdout) is line for line the same, and
    # every answer about them is the same.
    again = cli(app["dsn"], "export", "--customer", "copy", "--from", iso(START),
                "--to", iso(END))  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert again.stdout.encode() == body
    for params in QUERIES:
        assert series(app, "copy", **params) == series(app, "acme", **params), params


def test_export_filters_by_event_and_time(app: dict) -> None:
    ingest(app)
    only = cli(app["dsn"], "export", "--customer", "acme", "--event", "  PAGE   View ",
               "--from", iso(NOW - timedelta(minutes=12)), "--to", iso(NOW))  # fmt: skip
    assert only.returncode == 0, only.stderr
    got = [json.loads(line) for line in only.stdout.splitlines()]
    assert {e["name"] for e in got} == {"page view"}
    expected = [e for e in EVENTS if "ts" in e and e["ts"] >= iso(NOW - timedelta(minutes=12))]
    assert sorted(e["event_id"] for e in got) == sorted(e["event_id"] for e in expected)
    assert got == sorted(got, key=lambda e: e["ts"])  # in index order: name, then time

    none = cli(app["dsn"], "export", "--customer", "nobody", "--from", "2020-01-01",
               "--to", "2020-01-02")  # fmt: skip
    assert none.returncode == 1 and "no such customer: nobody" in none.stderr
    backwards = cli(app["dsn"], "export", "--customer", "acme", "--from", "2020-01-02",
                    "--to", "2020-01-01")  # fmt: skip
    assert backwards.returncode == 2 and "--to must be after --from" in backwards.stderr


@pytest.mark.anyio
async def test_export_streams_in_chunks(fresh_dsn: str) -> None:
    conn = await asyncpg.connect(fresh_dsn)
    try:
        await conn.execute(
            "INSERT INTO events (customer_id, ts, name, dedup_key, received_at, properties,"
            " flags) SELECT 1, $1::timestamptz + i * interval '1 ms', 'e', 'fp:' || i, $1,"
            " '{}', 0 FROM generate_series(1, 25) AS i",
            datetime(2024, 1, 1, tzinfo=UTC),
        )
        chunks = [
            c
            async for c in export_events(
                conn, 1, datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC),
                chunk_rows=10,
            )
        ]  # fmt: skip
        assert [c.count(b"\n") for c in chunks] == [10, 10, 5]
        assert not conn.is_in_transaction()
    finally:
        await conn.close()


def rollups(dsn: str) -> set[tuple]:
    settle(dsn)
    rows = fetch(
        dsn, "SELECT customer_id, name, dim, dim_value, bucket, count, sum_value FROM rollup_minute"
    )
    return {tuple(r) for r in rows}


def sketches(dsn: str, customer: str) -> dict[tuple, bytes]:
    settle(dsn)
    rows = fetch(dsn, """
        SELECT s.name, s.dim, s.dim_value, s.bucket, s.sketch FROM rollup_users_hour s
        JOIN customers c USING (customer_id) WHERE c.name = $1""", customer)  # fmt: skip
    return {tuple(r[:4]): bytes(r[4]) for r in rows}


def rollups_from_raw(dsn: str) -> set[tuple]:
    """The minute rollups recomputed from the raw events, as the writer computes them."""
    dims = ", ".join(["('', '')", *(f"('{d}', {dimension_expr(d)})" for d in DEFAULT_DIMENSIONS)])
    rows = fetch(dsn, f"""
        SELECT customer_id, name, d.dim, d.val, date_trunc('minute', ts, 'UTC'), count(*),
               coalesce(sum(value), 0)
        FROM events CROSS JOIN LATERAL (VALUES {dims}) AS d(dim, val)
        WHERE d.val IS NOT NULL GROUP BY 1, 2, 3, 4, 5""")  # fmt: skip
    return {tuple(r) for r in rows}


def test_erase_takes_a_users_events_out_of_every_answer(app: dict) -> None:
    ingest(app)
    kept = [e for e in EVENTS if e["user_id"] != "u1"]
    erased = [e for e in EVENTS if e["user_id"] == "u1"]
    # What the answers must become: those of a customer that never had u1's events.
    control = send(app, "copy", json.dumps({"events": kept}).encode())
    assert control["accepted"] == len(kept)
    before = [series(app, **q) for q in QUERIES]  # answered once: cached where closed

    done = cli(app["dsn"], "erase", "--customer", "acme", "--user-id", "u1")
    assert done.returncode == 0, done.stderr
    assert f"{len(erased)} events" in done.stdout and "dedup records kept" in done.stdout

    after = [series(app, **q) for q in QUERIES]
    assert after == [series(app, "copy", **q) for q in QUERIES]
    # By exactly the erased events: counts and sums, ungrouped.
    for name in ("page view", "signup"):
        gone = [e for e in erased if e["name"].lower() == name]
        count = series(app, event=name)[None]
        assert before[QUERIES.index({"event": name})][None] - count == len(gone)
        total = series(app, event=name, agg="sum")[None]
        lost = before[QUERIES.index({"event": name, "agg": "sum"})][None] - total
        assert lost == pytest.approx(sum(e["value"] for e in gone))

    # The rollups are exactly what the remaining raw events make, no row left at zero.
    assert fetch(app["dsn"], "SELECT count(*) FROM events WHERE user_id = 'u1'")[0][0] == 0
    # The unique users' sketches, rebuilt for the hours u1 was in, are byte for byte those of
    # the customer that never had u1's events.
    copy = sketches(app["dsn"], "copy")
    assert copy and sketches(app["dsn"], "acme") == copy
    assert rollups(app["dsn"]) == rollups_from_raw(app["dsn"])
    assert fetch(app["dsn"], "SELECT count(*) FROM rollup_minute WHERE count <= 0")[0][0] == 0

    # Idempotent, and a retry of an erased event does not bring it back (dedup kept).
    state = rollups(app["dsn"])
    again = cli(app["dsn"], "erase", "--customer", "acme", "--user-id", "u1")
    assert again.returncode == 0 and "0 events, 0 rollup rows" in again.stdout
    assert rollups(app["dsn"]) == state
    with_ids = [e for e in erased if "event_id" in e]
    retry = send(app, "acme", json.dumps({"events": with_ids}).encode())
    assert (retry["accepted"], retry["duplicates"]) == (0, len(with_ids))
    assert [series(app, **q) for q in QUERIES] == after


def test_erase_of_an_unknown_customer_or_user(app: dict) -> None:
    ingest(app)
    state = rollups(app["dsn"])
    nobody = cli(app["dsn"], "erase", "--customer", "nobody", "--user-id", "u1")
    assert nobody.returncode == 1 and "no such customer: nobody" in nobody.stderr
    other = cli(app["dsn"], "erase", "--customer", "copy", "--user-id", "u1")  # not copy's user
    assert other.returncode == 0 and "0 events" in other.stdout
    assert rollups(app["dsn"]) == state
