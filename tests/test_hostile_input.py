"""Hostile requests get a 4xx with a stable code, never a 500, and cannot grow the metrics.

Real PostgreSQL and the real app in-process; the cases are what probing a running
`analytics serve` turned up, and a property test keeps probing the query parameters.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from analytics.app import create_app
from analytics.settings import DEFAULT_DIMENSIONS, Settings
from benches.harness.plan import SCENARIOS
from benches.harness.probes import probe_request
from test_api import make_key

PARAMS = ("event", "from", "to", "interval", "group_by", "filter", "agg", "limit")


@pytest.fixture
def app(fresh_dsn: str) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """The app (500s answered, not raised) and a read key's headers; a few events stored."""
    with TestClient(
        create_app(Settings(database_url=fresh_dsn)), raise_server_exceptions=False
    ) as c:
        read = make_key(fresh_dsn, "acme", {"read"})
        write = make_key(fresh_dsn, "acme", {"write"})
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        for i, path in enumerate(("/", "/a", "/b")):
            event = {"name": "view", "ts": now_ms - i * 3_600_000, "properties": {"path": path}}
            r = c.post("/v1/events", json=event, headers={"Authorization": f"Bearer {write.key}"})
            assert r.status_code == 200, r.text
        yield c, {"Authorization": f"Bearer {read.key}"}


def _get(app, **params: str):
    client, headers = app
    return client.get("/v1/metrics", params={"event": "view", **params}, headers=headers)


# -- GET /v1/metrics: each case a former 500 ------------------------------------------------

EXTREME_INSTANTS = (
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00+14:00",  # converting to UTC underflows
    "-62135596800000",
    "253402300799999",
    "9999-12-31T23:59:59+00:00",
    "9999-12-31T23:59:59-14:00",
    "1" + "0" * 5000,
    "²",
    "1969-12-31T23:59:59Z",
)


@pytest.mark.parametrize("raw", EXTREME_INSTANTS)
@pytest.mark.parametrize("which", ["from", "to"])
def test_instants_outside_the_supported_range_are_invalid_time(app, which, raw):
    r = _get(app, **{which: raw})
    assert (r.status_code, r.json()["code"]) == (400, "invalid_time"), r.text


@pytest.mark.parametrize("interval", ["minute", "hour", "day"])
def test_instants_at_the_edges_of_the_supported_range_are_answered(app, interval):
    for start in (datetime(1970, 1, 1, tzinfo=UTC), datetime(9998, 12, 31, 11, tzinfo=UTC)):
        end = start + timedelta(hours=12, minutes=1)
        r = _get(app, interval=interval, **{"from": start.isoformat(), "to": end.isoformat()})
        assert r.status_code == 200, r.text
    r = _get(app, to="1970-01-01T00:00:00Z")  # from defaults to a day earlier
    assert (r.status_code, r.json()["code"]) == (400, "invalid_time"), r.text


@pytest.mark.parametrize(
    "raw", ["path:\x00", "path:a\x00b", "country:\x00\x00"], ids=["nul", "inner", "two"]
)
def test_nul_in_a_filter_value_is_invalid_filter(app, raw):
    r = _get(app, filter=raw)
    assert (r.status_code, r.json()["code"]) == (400, "invalid_filter"), r.text


def test_nul_in_the_event_name_is_invalid_event(app):
    r = _get(app, event="vi\x00ew")
    assert (r.status_code, r.json()["code"]) == (400, "invalid_event"), r.text


@pytest.mark.parametrize(
    "raw", ["²", "1²", "٣", "1" * 5000, "0", "101", "-1", "+5", " 5", "", "1e1"]
)
def test_limits_that_are_not_1_to_100_in_ascii_digits_are_invalid_limit(app, raw):
    r = _get(app, limit=raw)
    assert (r.status_code, r.json()["code"]) == (400, "invalid_limit"), r.text


def test_a_limit_in_range_is_answered(app):
    r = _get(app, group_by="path", limit="2")
    assert r.status_code == 200, r.text
    # The top two, then `other` with the rest, so the series still add up to the total.
    series = r.json()["series"]
    assert len(series) == 3 and [s.get("other") for s in series][:2] == [None, None]
    assert series[-1]["other"] >= 1 and series[-1]["group"] is None


# -- the query parameters, probed ------------------------------------------------------------

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)  # no lone surrogates
_HOSTILE = st.one_of(
    _TEXT,
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(["", "\x00", "a\x00", "²", "٣", "1" * 5000, "-0", "nan", "1e309", " "]),
)
_OFFSETS = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda m: timezone(timedelta(minutes=m))
)
#: Instants anywhere in datetime's range, and often near its ends and the epoch.
_INSTANTS = st.builds(
    lambda t, tz: t.replace(tzinfo=tz),
    st.one_of(
        st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(1, 4, 1)),
        st.datetimes(min_value=datetime(1969, 10, 1), max_value=datetime(1970, 4, 1)),
        st.datetimes(min_value=datetime(9998, 10, 1), max_value=datetime(9999, 12, 31)),
        st.datetimes(),
    ),
    _OFFSETS,
)


@st.composite
def _mostly(draw: st.DrawFn, valid: st.SearchStrategy[str]) -> str:
    """Usually `valid` (so the request gets past the other checks), sometimes hostile."""
    return draw(_HOSTILE if draw(st.integers(0, 9)) == 9 else valid)


@st.composite
def _instant(draw: st.DrawFn, t: datetime) -> str:
    if draw(st.booleans()):
        return t.isoformat()
    try:
        return str(int(t.timestamp() * 1000))
    except (OverflowError, ValueError):
        return draw(_HOSTILE)


@st.composite
def _params(draw: st.DrawFn) -> list[tuple[str, str]]:
    """Query parameters: `from`/`to` close enough together that the bucket math runs."""
    params = [("event", draw(_mostly(st.sampled_from(["view", " VIEW "]))))]
    start = draw(_INSTANTS)
    try:
        end = start + draw(st.timedeltas(timedelta(0), timedelta(days=100)))
    except OverflowError:
        end = start
    for name, t in (("from", start), ("to", end)):
        if draw(st.integers(0, 4)):
            params.append((name, draw(_mostly(_instant(t)))))
    for name, known in (
        ("interval", ("minute", "hour", "day")),
        ("agg", ("count", "sum", "unique_users")),
        ("group_by", (*DEFAULT_DIMENSIONS, "")),
        ("limit", ("1", "20", "100")),
    ):
        if draw(st.booleans()):
            params.append((name, draw(_mostly(st.sampled_from(known)))))
    dims = st.sampled_from([*DEFAULT_DIMENSIONS, "email", ""])
    values = _mostly(st.sampled_from(["/", "/a", "\x00", ""]))
    filters = st.builds(lambda d, v: f"{d}:{v}", dims, values)
    params.extend(("filter", f) for f in draw(st.lists(_mostly(filters), max_size=3)))
    if not draw(st.integers(0, 19)):
        params.append((draw(st.sampled_from([*PARAMS, "bogus", ""])), draw(_TEXT)))
    return draw(st.permutations(params))


def test_no_query_parameters_make_a_500(app):
    client, headers = app

    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(_params())
    def probe(params: list[tuple[str, str]]) -> None:
        r = client.get("/v1/metrics", params=params, headers=headers)
        assert r.status_code < 500, (params, r.status_code, r.text)
        if r.status_code != 200:
            assert r.status_code == 400 and r.json()["code"], (params, r.text)

    probe()


# -- metric labels stay bounded ---------------------------------------------------------------

_SERIES = re.compile(r"^analytics_http_requests_total\{(.*)\} ", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _request_series(client: TestClient) -> list[dict[str, str]]:
    text = client.get("/metrics").text
    return [dict(_LABEL.findall(m)) for m in _SERIES.findall(text)]


def test_invented_scenarios_and_methods_do_not_grow_the_metrics(app, caplog):
    client, _ = app
    before = len(_request_series(client))
    with caplog.at_level("INFO", logger="analytics.access"):
        for i in range(300):
            client.get("/healthz", headers={"X-Scenario": f"made_up_{i}"})
        for i in range(60):
            method = "".join(string.ascii_uppercase[(i * 7 + k) % 26] for k in range(5)) + str(i)
            client.request(method, "/healthz", headers={"X-Scenario": f"verb_{i}"})
            client.request(method, f"/nowhere/{i}")
    series = _request_series(client)
    # New series: (/healthz, GET, 200, other), (/healthz, other, 405, other), the 404s,
    # and the /metrics scrape itself: a handful, however many values were invented.
    assert len(series) - before <= 6, sorted(map(str, series))
    assert {s["method"] for s in series} <= {
        "GET",
        "POST",
        "HEAD",
        "OPTIONS",
        "PUT",
        "PATCH",
        "DELETE",
        "other",
    }
    assert not any(s["scenario"].startswith(("made_up_", "verb_")) for s in series)
    # The access log still says what the client sent.
    logged = {getattr(r, "scenario", None) for r in caplog.records}
    assert {"made_up_0", "made_up_299", "verb_59"} <= logged


def test_the_load_harness_scenarios_keep_their_own_label(app):
    client, _ = app
    keys = SimpleNamespace(write=SimpleNamespace(key="k", signing_secret=None))
    probes = [probe_request(keys, s, "n", 0.0)[1]["X-Scenario"] for s in SCENARIOS]  # type: ignore[arg-type]
    sent = [*SCENARIOS, *probes, "loadtest_scrape"]
    for scenario in sent:
        client.get("/healthz", headers={"X-Scenario": scenario})
    client.get("/healthz")
    labels = {s["scenario"] for s in _request_series(client) if s["route"] == "/healthz"}
    assert {*sent, "none"} <= labels


# -- no Host-derived redirects ------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/events/"), ("GET", "/v1/metrics/")])
def test_a_trailing_slash_is_a_plain_404_without_a_location(app, method, path):
    client, headers = app
    r = client.request(
        method, path, headers={**headers, "Host": "evil.example"}, follow_redirects=False
    )
    assert (r.status_code, r.json()["code"]) == (404, "not_found"), r.headers
    assert "location" not in r.headers
