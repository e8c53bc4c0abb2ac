"""The normalization contract (rust/normalize/README.md), checked on the Rust extension."""

import gzip
import json

import pytest

from analytics.normalize import (
    COPY_COLUMNS,
    COPY_SCHEMA,
    DEDUP_FINGERPRINT,
    ERROR_CODES,
    ERROR_STATUS,
    MAX_ABS_VALUE,
    TS_CLAMPED,
    TS_DEFAULTED,
    TS_SKEW_CORRECTED,
    Limits,
    NormalizeError,
    SignatureError,
    normalize_batch,
    verify_signature,
)
from benches.normalize_reference import decode_copy

NOW_US = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z
HOUR_US = 3_600_000_000


def rows(body, **kw):
    kw.setdefault("customer_id", "cust")
    batch = normalize_batch(
        body if isinstance(body, bytes) else json.dumps(body).encode(), NOW_US, **kw
    )
    return batch, [dict(zip(COPY_COLUMNS, r, strict=True)) for r in decode_copy(batch.copy_data)]


def codes(body, **kw):
    batch, _ = rows(body, **kw)
    return [(i, code) for i, code, _ in batch.rejected]


def body_error(body, **kw) -> str:
    with pytest.raises(NormalizeError) as info:
        normalize_batch(body, NOW_US, **kw)
    assert info.value.args[0] == info.value.code
    return info.value.code


def test_single_event_is_normalized():
    batch, [row] = rows(
        {
            "name": "  Page \t\n  VIEW ",
            "event_id": " e-1 ",
            "ts": "2023-11-14T22:13:19.5+00:00",
            "user_id": 42,
            "value": 3,
            "properties": {
                "Path": " /home ",
                "utm": {"source": "ads", "empty": {}},
                "tags": ["a", 1],
            },
        }
    )
    assert (batch.accepted, batch.total, batch.rejected) == (1, 1, [])
    assert row == {
        "customer_id": "cust",
        "dedup_key": "id:e-1",
        "event_id": "e-1",
        "name": "page view",
        "ts": NOW_US - 500_000,
        "received_at": NOW_US,
        "user_id": "42",
        "value": 3.0,
        "properties": {"Path": "/home", "utm.source": "ads", "tags": ["a", 1]},
        "flags": 0,
    }


def test_customer_comes_from_the_caller_never_the_body():
    _, [row] = rows({"name": "x", "customer_id": "evil"}, customer_id="good")
    assert row["customer_id"] == "good"


def test_batch_with_per_event_rejections_keeps_the_rest():
    body = {
        "events": [
            {"name": "ok"},
            {"nam": "typo"},
            "not an object",
            {"name": ""},
            {"name": 5},
            {"name": "x", "ts": "yesterday"},
            {"name": "x", "user_id": True},
            {"name": "x", "value": "1"},
            {"name": "x", "properties": []},
            {"name": "x", "event_id": "e" * 129},
            {"name": "ok2"},
        ]
    }
    batch, out = rows(body)
    assert [r["name"] for r in out] == ["ok", "ok2"]
    assert codes(body) == [
        (1, "missing_name"),
        (2, "invalid_event"),
        (3, "invalid_name"),
        (4, "invalid_name"),
        (5, "invalid_ts"),
        (6, "invalid_user_id"),
        (7, "invalid_value"),
        (8, "invalid_properties"),
        (9, "invalid_event_id"),
    ]
    assert batch.total == 11 and batch.accepted == 2


def test_duplicate_keys_are_rejected_not_collapsed():
    assert codes(b'{"name":"a","name":"b"}') == [(0, "duplicate_key")]
    assert codes(b'{"name":"a","properties":{"k":1,"k":2}}') == [(0, "duplicate_key")]
    assert codes(b'{"name":"a","properties":{"a.b":1,"a":{"b":2}}}') == [(0, "duplicate_key")]
    assert codes(b'{"name":"a","properties":{"k":1," k ":2}}') == [(0, "duplicate_key")]


@pytest.mark.parametrize(
    ("properties", "ok"),
    [
        ({"a": {"b": {"c": 1}}}, True),  # depth 3
        ({"a": {"b": {"c": {"d": 1}}}}, True),  # depth 4
        ({"a": {"b": {"c": {"d": {"e": 1}}}}}, False),  # depth 5
        ({f"k{i}": i for i in range(256)}, True),
        ({f"k{i}": i for i in range(257)}, False),
        ({"s": "x" * 8192}, True),
        ({"s": "x" * 8193}, False),
        ({"s": "é" * 4097}, False),  # the cap is in UTF-8 bytes
        ({"": 1}, False),
        ({"k" * 257: 1}, False),
        ({"a": [[1]]}, False),
        ({"a": [{"b": 1}]}, False),
        ({"nul": "a\u0000b"}, False),
    ],
)
def test_property_limits(properties, ok):
    expected = [] if ok else [(0, "invalid_properties")]
    assert codes({"name": "x", "properties": properties}) == expected


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (b"1e15", True),
        (b"-1e15", True),
        (b"1000000000000000", True),
        (b"1000000000000000.00000001", True),  # rounds to 1e15 as a double
        (b"-0", True),
        (b"1000000000000001", False),
        (b"-1.0000000000000002e15", False),
        (b"9007199254740993", False),
        (b"18446744073709551615", False),
        (b"1e308", False),
        (b"-1.7976931348623157e308", False),
    ],
)
def test_values_beyond_the_rollup_bound_are_rejected(value, ok):
    """Two values near the double maximum would overflow the rollup's `double precision`
    sum and fail the whole group commit; within +-1e15 ~10^293 of them still sum finite."""
    assert MAX_ABS_VALUE == 1e15
    expected = [] if ok else [(0, "value_out_of_range")]
    assert codes(b'{"name": "x", "value": ' + value + b"}") == expected


def test_an_out_of_range_value_rejects_only_its_event():
    big = {"name": "big", "value": 1e308}
    batch, out = rows({"events": [big, big, {"name": "ok", "value": 1e15}]})
    assert [(i, c) for i, c, _ in batch.rejected] == [
        (0, "value_out_of_range"),
        (1, "value_out_of_range"),
    ]
    assert [(r["name"], r["value"]) for r in out] == [("ok", 1e15)]
    assert ERROR_STATUS["value_out_of_range"] == 400


def test_event_size_cap_uses_the_events_own_bytes():
    small = {"name": "x", "properties": {"s": "y" * 8000}}
    big = {"name": "x", "properties": {f"s{i}": "y" * 8000 for i in range(5)}}
    assert codes({"events": [small, big]}) == [(1, "event_too_large")]
    assert codes({"name": "x", "pad": "z" * 40_000}) == [(0, "event_too_large")]


def test_names_are_collapsed_lowercased_and_bounded():
    assert rows({"name": "\u00a0Über\u2003 Ñ "})[1][0]["name"] == "über ñ"
    assert codes({"name": "n" * 200}) == []
    assert codes({"name": "n" * 201}) == [(0, "invalid_name")]
    assert codes({"name": "a\u0001b"}) == [(0, "invalid_name")]
    assert codes({"name": " \t "}) == [(0, "invalid_name")]


@pytest.mark.parametrize(
    ("ts", "expected_us"),
    [
        (1_699_999_999_123, 1_699_999_999_123_000),
        (1_699_999_999_123.9, 1_699_999_999_123_900),
        ("2023-11-14T22:13:19Z", NOW_US - 1_000_000),
        ("2023-11-14 23:13:19.1234569+01:00", NOW_US - 1_000_000 + 123_456),
        ("2023-11-14t22:13:19z", NOW_US - 1_000_000),
    ],
)
def test_timestamps_to_utc_microseconds(ts, expected_us):
    assert rows({"name": "x", "ts": ts})[1][0]["ts"] == expected_us


@pytest.mark.parametrize(
    "ts",
    [
        "2023-02-29T00:00:00Z",
        "2023-11-14T22:13:19",
        "1969-12-31T23:59:59Z",
        -1,
        True,
        [],
        "1700000000000",
    ],
)
def test_bad_timestamps(ts):
    assert codes({"name": "x", "ts": ts}) == [(0, "invalid_ts")]


def test_time_rules_default_skew_and_clamp():
    _, [defaulted] = rows({"name": "x"})
    assert (defaulted["ts"], defaulted["flags"] & TS_DEFAULTED) == (NOW_US, TS_DEFAULTED)

    # The client's clock runs 10 minutes fast: sent_at and ts are both shifted.
    fast = 600_000
    body = {
        "sent_at": (NOW_US + fast * 1000) // 1000,
        "events": [{"name": "x", "ts": (NOW_US + fast * 1000 - 5_000_000) // 1000}],
    }
    _, [skewed] = rows(body)
    assert skewed["ts"] == NOW_US - 5_000_000
    assert skewed["flags"] & TS_SKEW_CORRECTED

    _, [near, far] = rows(
        {
            "events": [
                {"name": "x", "ts": (NOW_US + HOUR_US) // 1000},
                {"name": "x", "ts": (NOW_US + HOUR_US) // 1000 + 1},
            ]
        }
    )
    assert (near["ts"], near["flags"] & TS_CLAMPED) == (NOW_US + HOUR_US, 0)
    assert (far["ts"], far["flags"] & TS_CLAMPED) == (NOW_US, TS_CLAMPED)


def test_dedup_keys():
    event = {"name": "x", "ts": 1_699_999_999_000, "properties": {"b": 1, "a": "z"}}
    reordered = {"properties": {"a": "z", "b": 1}, "ts": 1_699_999_999_000, "name": " X "}
    _, [a, b, c] = rows({"events": [event, reordered, {**event, "user_id": "u"}]})
    assert a["dedup_key"].startswith("fp:") and len(a["dedup_key"]) == 35
    assert a["flags"] & DEDUP_FINGERPRINT
    assert a["dedup_key"] == b["dedup_key"] != c["dedup_key"]
    # Without ts or event_id a retry cannot be told from a repeat: each receipt counts.
    _, [d, e] = rows({"events": [{"name": "x"}, {"name": "x"}]})
    assert d["dedup_key"] != e["dedup_key"]
    # The same ts through a different client clock is still the same event.
    _, [f] = rows({"sent_at": 1_700_000_100_000, "events": [event]})
    assert f["dedup_key"] == a["dedup_key"] and f["ts"] != a["ts"]


def test_ndjson_rejects_bad_lines_only():
    body = b'{"name":"a"}\n\n  {"name": \n{"name":"c"}\r\n'
    batch, out = rows(body, ndjson=True)
    assert [r["name"] for r in out] == ["a", "c"]
    assert [(i, c) for i, c, _ in batch.rejected] == [(1, "invalid_json")]


def test_gzip_and_encodings():
    raw = json.dumps({"events": [{"name": "x"}] * 10}).encode()
    batch, _ = rows(gzip.compress(raw), content_encoding="GZIP")
    assert batch.accepted == 10
    assert body_error(b"not gzip", content_encoding="gzip") == "invalid_gzip"
    assert body_error(gzip.compress(raw)[:-5], content_encoding="gzip") == "invalid_gzip"
    assert body_error(raw, content_encoding="br") == "unsupported_encoding"
    assert rows(raw, content_encoding="identity")[0].accepted == 10


def test_gzip_bombs_stop_at_the_cap():
    bomb = gzip.compress(b" " * (50 * 1024 * 1024))  # ~50 KB that expands 1000x
    assert (
        body_error(bomb, content_encoding="gzip", limits=Limits(max_ratio=20))
        == "decompression_bomb"
    )
    assert (
        body_error(bomb, content_encoding="gzip", limits=Limits(max_ratio=10_000))
        == "body_too_large"
    )


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "empty_body"),
        (b" \n\t", "empty_body"),
        (b"{", "invalid_json"),
        (b"\xff\xfe{}", "invalid_json"),
        (b"\xef\xbb\xbf{}", "invalid_json"),
        (b'{"name": NaN}', "invalid_json"),
        (b'{"name": "x", "value": 1e400}', "invalid_json"),
        (b'{"name": "\\ud800"}', "invalid_json"),
        (b"[" * 10_000 + b"]" * 10_000, "invalid_json"),
        (b'{"events": [' + b"[" * 10_000 + b"]" * 10_000 + b"]}", "invalid_json"),
        (b'{"events": [{"name": "x"}, {"name": 1e999}]}', "invalid_json"),
        (b"[]", "invalid_shape"),
        (b'"x"', "invalid_shape"),
        (b'{"events": {}}', "invalid_shape"),
        (b'{"events": [], "events": []}', "invalid_shape"),
        (b'{"events": [], "sent_at": "soon"}', "invalid_sent_at"),
        (b'{"events": [' + b'{"name":"x"},' * 5000 + b'{"name":"x"}]}', "too_many_events"),
    ],
)
def test_whole_body_errors(body, code):
    assert body_error(body) == code


def test_body_cap_is_checked_before_parsing():
    assert body_error(b" " * 101, limits=Limits(max_body_bytes=100)) == "body_too_large"


def test_empty_batch_is_fine():
    batch, out = rows({"events": []})
    assert (batch.accepted, batch.total, out) == (0, 0, [])


def test_every_error_code_is_unique_and_has_a_status():
    codes = [code for code, _ in ERROR_CODES]
    assert len(codes) == len(set(codes))
    assert all(isinstance(status, int) and 400 <= status < 500 for _, status in ERROR_CODES)
    assert dict(ERROR_STATUS) == dict(ERROR_CODES)


def test_error_codes_and_their_statuses_never_change():
    """Clients match on these strings: changing one is a breaking change of the API."""
    assert dict(ERROR_CODES) == {
        "unsupported_encoding": 415,
        "invalid_gzip": 400,
        "body_too_large": 413,
        "decompression_bomb": 413,
        "empty_body": 400,
        "invalid_json": 400,
        "invalid_shape": 400,
        "invalid_sent_at": 400,
        "too_many_events": 413,
        "event_too_large": 400,
        "invalid_event": 400,
        "duplicate_key": 400,
        "missing_name": 400,
        "invalid_name": 400,
        "invalid_event_id": 400,
        "invalid_ts": 400,
        "invalid_user_id": 400,
        "invalid_value": 400,
        "value_out_of_range": 400,
        "invalid_properties": 400,
        "malformed_signature": 401,
        "stale_signature": 401,
        "future_signature": 401,
        "bad_signature": 401,
    }


def test_raised_errors_carry_the_status_of_their_code():
    with pytest.raises(NormalizeError) as body:
        normalize_batch(b"x", NOW_US, content_encoding="br")
    assert (body.value.code, body.value.status) == ("unsupported_encoding", 415)
    with pytest.raises(SignatureError) as signature:
        verify_signature(b"secret", "t=1", b"", 1)
    assert (signature.value.code, signature.value.status) == ("malformed_signature", 401)


def test_copy_columns_are_the_schema_names_in_order():
    assert COPY_COLUMNS == tuple(name for name, _ in COPY_SCHEMA)
    assert len(set(COPY_COLUMNS)) == len(COPY_COLUMNS)
    assert dict(COPY_SCHEMA)["flags"] == "smallint"


def test_limits_take_keywords_and_keep_defaults():
    limits = Limits(max_events=1, max_future_us=5)
    assert (limits.max_events, limits.max_future_us) == (1, 5)
    assert limits.max_body_bytes == Limits().max_body_bytes == 5 * 1024 * 1024
    assert limits == Limits(max_future_us=5, max_events=1) != Limits()
    assert repr(Limits()).startswith("Limits(max_body_bytes=5242880, max_ratio=100, ")
    with pytest.raises(TypeError):
        Limits(max_evnts=1)
    with pytest.raises(TypeError):
        Limits(1)  # type: ignore[misc]
