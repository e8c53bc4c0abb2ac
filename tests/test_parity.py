"""Property-based tests: the Rust extension and the pure-Python reference agree row for row,
and no input, however broken, gets anything but a result or a coded NormalizeError."""

import dataclasses
import gzip
import json
import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics import _normalize as rust
from benches import normalize_reference as reference

NOW_US = 1_700_000_000_000_000
# PARITY_SCALE=100 runs every property a hundred times longer (a deeper differential run
# than the suite's seconds allow; see rust/normalize/README.md, "Fuzzing").
SCALE = int(os.environ.get("PARITY_SCALE", "1"))


def examples(n: int) -> int:
    return n * SCALE


# Alphabets whose case mappings are the same in Python 3.11's and Rust's Unicode versions.
LETTERS = st.sampled_from(list("abcXYZ09 ._-\t\n\u00a0\u2003ÄÖÜßéñΑΒΓΣσςДЖЯ日本語😀İ\u0301\x01"))  # noqa: RUF001
text = st.text(LETTERS, max_size=12)
keys = st.one_of(
    st.text("abc", min_size=1, max_size=3), st.text(st.sampled_from(list("ab. \u00a0")), max_size=3)
)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
)
leaf = st.one_of(
    scalars, st.lists(scalars, max_size=3), st.lists(st.lists(scalars, max_size=1), max_size=1)
)
properties = st.recursive(
    st.dictionaries(keys, leaf, max_size=4),
    lambda inner: st.dictionaries(keys, st.one_of(leaf, inner), max_size=3),
    max_leaves=12,
)

rfc3339 = st.builds(
    lambda y, mo, d, h, mi, s, frac, off: (
        f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{frac}{off}"
    ),
    st.integers(1960, 2100),
    st.integers(1, 13),
    st.integers(1, 31),
    st.integers(0, 24),
    st.integers(0, 59),
    st.integers(0, 60),
    st.sampled_from(["", ".5", ".123456", ".1234567891", "."]),
    st.sampled_from(["Z", "z", "+01:00", "-05:30", "+24:00", "", "+0100"]),
)
timestamps = st.one_of(
    st.none(),
    rfc3339,
    st.integers(min_value=-(10**13), max_value=2 * 10**13),
    st.floats(min_value=-1e13, max_value=3e14, allow_nan=False),
    st.integers(1_699_990_000_000, 1_700_010_000_000),
    st.booleans(),
)


def weighted(*choices):
    """Pick among (weight, strategy) pairs (one_of would merge repeated branches)."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(lambda i: table[i])


def sometimes(strategy, invalid=None):
    """Mostly present and valid, sometimes absent, null, or (when given) of a wrong kind."""
    rare = [(1, st.just(ABSENT)), (1, st.none())] + ([(1, invalid)] if invalid is not None else [])
    return weighted((6, strategy), *rare)


ABSENT = object()
valid_ts = st.one_of(
    st.integers(1_699_990_000_000, 1_700_010_000_000),
    st.floats(1_699_990_000_000, 1_700_010_000_000),
    st.datetimes(
        min_value=__import__("datetime").datetime(1971, 1, 1),
        max_value=__import__("datetime").datetime(2100, 1, 1),
        timezones=st.sampled_from([__import__("datetime").timezone.utc]),
    ).map(lambda d: d.isoformat()),
)
events = st.builds(
    lambda **fields: {k: v for k, v in fields.items() if v is not ABSENT},
    name=weighted((8, text.filter(str.strip)), (1, st.just(ABSENT)), (1, st.integers()), (1, text)),
    event_id=sometimes(text, st.integers(0, 5)),
    ts=sometimes(valid_ts, timestamps),
    user_id=sometimes(st.one_of(text, st.integers(-(2**65), 2**65)), st.floats()),
    value=sometimes(
        st.one_of(
            st.integers(-(2**70), 2**70),
            st.floats(allow_nan=False, allow_infinity=False),
            # Around the +-1e15 bound of value_out_of_range.
            st.builds(
                lambda n, sign: n * sign,
                st.one_of(
                    st.integers(10**15 - 2, 10**15 + 2),
                    st.sampled_from([math.nextafter(1e15, 0), 1e15, math.nextafter(1e15, 2e15)]),
                ),
                st.sampled_from([1, -1]),
            ),
        ),
        text,
    ),
    properties=sometimes(properties, st.lists(scalars, max_size=1)),
    extra=sometimes(scalars),
)


@st.composite
def bodies(draw):
    """(body bytes, kwargs) in every framing the API accepts."""
    evs = draw(st.lists(weighted((8, events), (1, scalars)), max_size=6))
    mode = draw(st.sampled_from(["single", "batch", "ndjson"]))
    limits = draw(
        weighted(
            (4, st.none()),
            (
                1,
                st.just(
                    {
                        "max_event_bytes": 120,
                        "max_properties": 3,
                        "max_key_chars": 4,
                        "max_string_bytes": 5,
                        "max_name_chars": 3,
                        "max_property_depth": 2,
                        "max_events": 3,
                    }
                ),
            ),
        )
    )
    kwargs = {}
    if mode == "single":
        body = json.dumps(draw(events), ensure_ascii=draw(st.booleans())).encode()
    elif mode == "batch":
        doc = {"events": evs}
        if draw(st.booleans()):
            doc["sent_at"] = draw(weighted((3, valid_ts), (1, timestamps)))
        body = json.dumps(doc, ensure_ascii=draw(st.booleans())).encode()
    else:
        body = b"\n".join(json.dumps(e).encode() for e in evs)
        kwargs["ndjson"] = True
    if draw(st.booleans()):
        body = gzip.compress(body)
        kwargs["content_encoding"] = "gzip"
    return body, kwargs, limits


def test_reference_limits_have_the_extension_defaults():
    rust_defaults, reference_defaults = rust.Limits(), reference.Limits()
    names = {field.name for field in dataclasses.fields(reference_defaults)}
    assert names == {name for name in dir(rust_defaults) if name.startswith("max_")}
    for name in names:
        assert getattr(rust_defaults, name) == getattr(reference_defaults, name), name


def outcome(impl, body, kwargs, limits):
    lim = None if limits is None else impl.Limits(**limits)
    try:
        batch = impl.normalize_batch(body, NOW_US, customer_id="c-1", limits=lim, **kwargs)
    except rust.NormalizeError as e:
        return ("error", e.code)
    rows = reference.decode_copy(batch.copy_data)
    return (batch.accepted, batch.total, [(i, c) for i, c, _ in batch.rejected], rows)


def same(a, b):
    """Equality where -0.0 and 0.0 differ and floats compare exactly."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@settings(max_examples=examples(600), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies())
def test_rust_matches_reference(case):
    body, kwargs, limits = case
    got, want = outcome(rust, body, kwargs, limits), outcome(reference, body, kwargs, limits)
    assert same(got, want), (got, want)


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies(), st.integers(0, 2**40))
def test_signed_receipts_match_reference(case, signed_at):
    """A verified signature's time makes the fingerprints of id- and ts-less events stable
    across replays; both implementations derive them the same way."""
    body, kwargs, limits = case
    kwargs = {**kwargs, "signed_at": signed_at}
    got, want = outcome(rust, body, kwargs, limits), outcome(reference, body, kwargs, limits)
    assert same(got, want), (got, want)


def test_reference_value_bound_is_the_extensions():
    assert reference.MAX_ABS_VALUE == rust.MAX_ABS_VALUE == 1e15


@pytest.mark.parametrize(
    "value",
    [
        b"1e15",
        b"-1e15",
        b"1000000000000000",
        b"1000000000000001",
        b"-1000000000000001",
        b"1000000000000000.00000001",
        b"1.0000000000000002e15",
        b"9007199254740993",
        b"9223372036854775807",
        b"-9223372036854775808",
        b"18446744073709551615",
        b"18446744073709551616",
        b"1e308",
        b"-1.7976931348623157e308",
        b"-0",
        b"1e-320",
    ],
)
@pytest.mark.parametrize("framing", ["single", "batch", "ndjson"])
def test_value_bound_parity(value, framing):
    event = b'{"name": "x", "value": ' + value + b"}"
    if framing == "batch":
        body, kwargs = b'{"events": [' + event + b", " + event + b"]}", {}
    else:
        body, kwargs = event, {"ndjson": framing == "ndjson"}
    got, want = outcome(rust, body, kwargs, None), outcome(reference, body, kwargs, None)
    assert same(got, want), (got, want)


@st.composite
def mutated(draw):
    body, kwargs, limits = draw(bodies())
    data = bytearray(body)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos : pos + draw(st.integers(1, 8))]
        else:
            data[pos:pos] = draw(
                st.sampled_from(
                    [b"\\ud800", b"[", b"}", b",", b'"', b"\x00", b"\xff", b"-0", b"1e999"]
                )
            )
    return bytes(data), kwargs, limits


@settings(max_examples=examples(600), deadline=None)
@given(mutated())
def test_broken_bodies_agree_and_never_crash(case):
    body, kwargs, limits = case
    got, want = outcome(rust, body, kwargs, limits), outcome(reference, body, kwargs, limits)
    assert same(got, want), (got, want)


@settings(max_examples=examples(300), deadline=None)
@given(st.binary(max_size=300), st.booleans(), st.sampled_from([None, "gzip", "deflate"]))
def test_arbitrary_bytes_never_crash(body, ndjson, encoding):
    try:
        batch = rust.normalize_batch(body, NOW_US, ndjson=ndjson, content_encoding=encoding)
    except rust.NormalizeError as e:
        assert e.code in {
            "invalid_json",
            "invalid_shape",
            "empty_body",
            "invalid_gzip",
            "unsupported_encoding",
        }
    else:
        assert len(reference.decode_copy(batch.copy_data)) == batch.accepted


headers = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda t, sigs, sep: sep.join([f"t={t}", *(f"v1={s}" for s in sigs)]),
        st.one_of(
            st.integers(0, 2000).map(str), st.just("0100"), st.text("0123456789x", max_size=13)
        ),
        st.lists(
            st.one_of(st.text("0123456789abcdefABCDEF", min_size=63, max_size=65), st.just("")),
            max_size=9,
        ),
        st.sampled_from([",", ", ", " ,\t"]),
    ),
)


@settings(max_examples=examples(400), deadline=None)
@given(headers, st.binary(max_size=20), st.integers(0, 2000), st.booleans())
def test_signature_parity(header, body, now, use_real):
    if use_real:
        header = reference.sign(b"secret", body, now - 100) + ("," + header if header else "")

    def verdict(impl):
        try:
            impl.verify_signature(b"secret", header, body, now)
        except rust.SignatureError as e:
            return e.code
        return "ok"

    assert verdict(rust) == verdict(reference)
