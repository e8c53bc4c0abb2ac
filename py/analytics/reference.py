"""Pure-Python reference implementation of the ``analytics._normalize`` contract.

``rust/normalize/README.md`` is the binding contract; this module implements it rule for
rule (stdlib only) so tests can compare it row for row with the Rust extension and benchmarks
can use it as the baseline. Points the README leaves open are resolved in comments that start
with ``Reading:``; the Rust side must make the same choices.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import unicodedata
import zlib
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import date
from itertools import accumulate
from struct import calcsize, pack, unpack
from typing import Any, NoReturn

try:
    from analytics._normalize import NormalizeError, SignatureError
except ImportError:

    class NormalizeError(ValueError):  # type: ignore[no-redef]
        """A whole-body error of :func:`normalize_batch`; ``code`` is the README's code."""

        def __init__(self, code: str, message: str) -> None:
            super().__init__(code, message)
            self.code = code

    class SignatureError(ValueError):  # type: ignore[no-redef]
        """A rejected ``X-Signature`` header; ``code`` is the README's code."""

        def __init__(self, code: str, message: str) -> None:
            super().__init__(code, message)
            self.code = code


def _body_error(code: str, message: str) -> NormalizeError:
    # The extension's classes do not set ``code`` when built from Python, so set it here.
    error = NormalizeError(code, message)
    error.code = code
    return error


def _signature_error(code: str, message: str) -> SignatureError:
    error = SignatureError(code, message)
    error.code = code
    return error


TS_CLAMPED = 1
TS_SKEW_CORRECTED = 2
TS_DEFAULTED = 4
DEDUP_FINGERPRINT = 8


@dataclass(frozen=True)
class Limits:
    """The README's limits, with its defaults."""

    max_body_bytes: int = 5 * 1024 * 1024
    max_ratio: int = 100
    max_events: int = 5000
    max_event_bytes: int = 32768
    max_name_chars: int = 200
    max_event_id_chars: int = 128
    max_user_id_chars: int = 256
    max_property_depth: int = 4
    max_properties: int = 256
    max_key_chars: int = 256
    max_string_bytes: int = 8192
    max_future_us: int = 3_600_000_000


@dataclass
class NormalizedBatch:
    """Result of :func:`normalize_batch`.

    ``copy_data`` holds one binary COPY tuple per accepted event, in event order;
    ``rejected`` holds ``(index, code, message)`` per rejected event; ``total`` counts both.
    """

    accepted: int
    rejected: list[tuple[int, str, str]]
    copy_data: bytes
    total: int


class _Obj(tuple):  # type: ignore[type-arg]
    """A JSON object as its ``(key, value)`` pairs in document order, duplicates kept."""


_OBJECT = (_Obj, dict)


class _Reject(Exception):
    """Rejects one event with a README code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


_I64 = 2**63
_U64 = 2**64
_MAX_DEPTH = 127
_MAX_TS_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z
_PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z
_UNIX_ORDINAL = date(1970, 1, 1).toordinal()
_JSON_WS = b" \t\r\n"
# Unicode White_Space (Rust's char::is_whitespace); str.strip()/split() would add U+001C-U+001F.
_WS = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_WS_RUN = re.compile(f"[{_WS}]+")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# A string, or an unterminated one running to the end (so the scan stays linear).
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)', re.S)
_JSON_WS_RUN = re.compile("[ \t\r\n]*")
_DEPTH_DELTA = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
_NOT_BRACKET = bytes(b for b in range(256) if b not in _DEPTH_DELTA)
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,9}))?(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)
_SIG_T = re.compile("[0-9]{1,12}")
_SIG_V1 = re.compile("[0-9a-fA-F]{64}")


# --- JSON ------------------------------------------------------------------------------


def _finite(x: float) -> float:
    if not math.isfinite(x):
        raise ValueError("number out of range of a double")
    return x


def _parse_int(text: str) -> int | float:
    """An integer literal in [-2**63, 2**64) is an int, any other is a correctly rounded double.

    ``-0`` is the double -0.0, as serde_json reads it.
    """
    if text == "-0":
        return -0.0
    if len(text) <= 20:
        n = int(text)
        if -_I64 <= n < _U64:
            return n
    return _finite(float(text))


def _reject_constant(text: str) -> NoReturn:
    raise ValueError(f"{text} is not JSON")


_DECODER = json.JSONDecoder(
    object_pairs_hook=_Obj,
    parse_float=lambda text: _finite(float(text)),
    parse_int=_parse_int,
    parse_constant=_reject_constant,
)


def _max_depth(raw: bytes) -> int:
    """Deepest array/object nesting of ``raw``, never below what a JSON parser would reach."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    return max(accumulate(map(_DEPTH_DELTA.__getitem__, brackets)), default=0)


def _skip_ws(text: str, i: int) -> int:
    return _JSON_WS_RUN.match(text, i).end()  # type: ignore[union-attr]


def _strings(value: Any) -> Iterator[str]:
    """Every key and string of a parsed document."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, _Obj):
        for key, item in value:
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _parse(raw: bytes, loads: Callable[[bytes], Any] | None) -> Any:
    """Parse one strict RFC 8259 document (UTF-8, no BOM, depth <= 127, no lone surrogates).

    Objects become :class:`_Obj`, or dicts when ``loads`` is given. ``loads`` must itself be
    strict about everything but duplicate keys, as ``orjson.loads`` is (it rejects lone
    surrogates, NaN/Infinity and overflowing numbers, and returns integers outside
    [-2**63, 2**64) as floats); the BOM and depth checks here apply to it too.
    Raises ``ValueError`` on invalid JSON.
    """
    if raw.startswith(b"\xef\xbb\xbf"):
        raise ValueError("byte order mark")
    if _max_depth(raw) > _MAX_DEPTH:
        raise ValueError(f"nesting deeper than {_MAX_DEPTH}")
    if loads is not None:
        return loads(raw)
    doc = _DECODER.decode(raw.decode("utf-8"))
    # Strict UTF-8 decoding leaves \uD8xx-\uDFxx escapes as the only source of surrogates.
    if _SURROGATE_ESCAPE.search(raw) and any(map(_SURROGATE.search, _strings(doc))):
        raise ValueError("lone surrogate in string")
    return doc


def _pairs(obj: _Obj | dict[str, Any]) -> Collection[tuple[str, Any]]:
    return obj.items() if isinstance(obj, dict) else obj


def _event_sizes(text: str) -> list[int]:
    """UTF-8 length of each element of the top-level ``events`` array of a valid JSON object.

    Walks the object's members with ``raw_decode``, whose end index is exactly the end of a
    value's text. Should ``events`` occur twice (only possible with a foreign ``loads``), the
    last one is measured, matching a dict's last-wins.
    """
    sizes: list[int] = []
    i = _skip_ws(text, 0) + 1  # past "{"
    while True:
        key, i = _DECODER.raw_decode(text, _skip_ws(text, i))
        i = _skip_ws(text, _skip_ws(text, i) + 1)  # past ":"
        if key == "events" and text[i] == "[":
            sizes, i = [], i + 1
            while text[i := _skip_ws(text, i)] != "]":
                _, end = _DECODER.raw_decode(text, i)
                sizes.append(len(text[i:end].encode()))
                i = _skip_ws(text, end)
                i += text[i] == ","
            i += 1
        else:
            _, i = _DECODER.raw_decode(text, i)
        i = _skip_ws(text, i)
        if text[i] == "}":
            return sizes
        i += 1  # past ","


# --- Fields ----------------------------------------------------------------------------


def _trim(text: str) -> str:
    return text.strip(_WS)


def _rfc3339_us(text: str) -> int | None:
    """µs since the Unix epoch of ``YYYY-MM-DD(T|t| )HH:MM:SS(.F{1,9})?(Z|z|±HH:MM)``, or None."""
    # Reading: the string is not trimmed; "-00:00" is a zero offset; year 0000 (which datetime
    # cannot represent) is invalid, as it lies before 1970 whatever the offset.
    m = _RFC3339.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = m.groups()
    try:
        days = date(int(year), int(month), int(day)).toordinal() - _UNIX_ORDINAL
    except ValueError:
        return None
    if int(hour) > 23 or int(minute) > 59 or int(second) > 59:
        return None
    offset = 0
    if sign is not None:
        if int(off_h) > 23 or int(off_m) > 59:
            return None
        offset = (int(off_h) * 3600 + int(off_m) * 60) * (1 if sign == "+" else -1)
    seconds = days * 86400 + int(hour) * 3600 + int(minute) * 60 + int(second) - offset
    return seconds * 1_000_000 + int((fraction or "")[:6].ljust(6, "0"))


def _timestamp_us(value: Any) -> int | None:
    """A ts/sent_at value (RFC 3339 string or epoch-ms number) as µs in the valid range, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        us = value * 1000
    elif isinstance(value, float):
        scaled = value * 1000.0
        if not math.isfinite(scaled):
            return None
        us = math.floor(scaled)
    elif isinstance(value, str):
        parsed = _rfc3339_us(value)
        if parsed is None:
            return None
        us = parsed
    else:
        return None
    return us if 0 <= us <= _MAX_TS_US else None


def _name(value: Any, lim: Limits) -> str:
    if value is None:
        raise _Reject("missing_name", "name is missing")
    if not isinstance(value, str):
        raise _Reject("invalid_name", "name must be a string")
    name = _WS_RUN.sub(" ", _trim(value)).lower()
    if not 1 <= len(name) <= lim.max_name_chars:
        raise _Reject("invalid_name", f"name must be 1-{lim.max_name_chars} characters")
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise _Reject("invalid_name", "name contains a control character")
    return name


def _optional_text(value: Any, max_chars: int, code: str, field: str) -> str | None:
    """A trimmed string field (the caller turns integers into decimal first); empty = none."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Reject(code, f"{field} must be a string")
    text = _trim(value)
    if len(text) > max_chars:
        raise _Reject(code, f"{field} is longer than {max_chars} characters")
    if "\0" in text:
        raise _Reject(code, f"{field} contains U+0000")
    return text or None


def _scalar(value: Any, lim: Limits) -> Any:
    # Reading: strings inside arrays are trimmed and checked like top-level leaf strings.
    if isinstance(value, str):
        text = _trim(value)
        if len(text.encode()) > lim.max_string_bytes:
            raise _Reject("invalid_properties", f"string longer than {lim.max_string_bytes} bytes")
        if "\0" in text:
            raise _Reject("invalid_properties", "string contains U+0000")
        return text
    if value is None or isinstance(value, (bool, int, float)):
        return value
    raise _Reject("invalid_properties", "arrays may only hold strings, numbers, booleans and null")


def _walk(
    obj: _Obj | dict[str, Any], prefix: str, depth: int, leaves: list[tuple[str, Any]], lim: Limits
) -> bool:
    """Step 1 of the properties checks: collect the leaves of ``obj`` (at object depth ``depth``)
    depth-first in document order, raising ``invalid_properties`` at the first bad key, leaf
    or depth. Returns whether some object repeats a key verbatim (a step-3 ``duplicate_key``).

    Reading: the key rules (trimmed, non-empty, no U+0000, joined length) apply to every key,
    also to one whose value is an object (even an empty one); the depth rule applies to every
    object, empty ones included.
    """
    pairs = _pairs(obj)
    repeated = len({key for key, _ in pairs}) != len(pairs)
    for raw_key, value in pairs:
        key = _trim(raw_key)
        if not key or "\0" in key:
            raise _Reject("invalid_properties", "property keys must be non-empty without U+0000")
        full = f"{prefix}.{key}" if prefix else key
        if len(full) > lim.max_key_chars:
            raise _Reject("invalid_properties", f"property key longer than {lim.max_key_chars}")
        if isinstance(value, _OBJECT):
            if depth >= lim.max_property_depth:
                raise _Reject("invalid_properties", "properties nested too deeply")
            repeated |= _walk(value, full, depth + 1, leaves, lim)
        elif isinstance(value, list):
            leaves.append((full, [_scalar(v, lim) for v in value]))
        else:
            leaves.append((full, _scalar(value, lim)))
    return repeated


def _properties(value: Any, lim: Limits) -> dict[str, Any]:
    """Flattened properties, keys in code point (= UTF-8 byte) order.

    Checks in the README's three steps: bad key/leaf/depth, then the leaf count
    (``invalid_properties``), then repeated keys or colliding leaves (``duplicate_key``).
    """
    if value is None:
        return {}
    if not isinstance(value, _OBJECT):
        raise _Reject("invalid_properties", "properties must be an object")
    leaves: list[tuple[str, Any]] = []
    repeated = _walk(value, "", 1, leaves, lim)
    if len(leaves) > lim.max_properties:
        raise _Reject("invalid_properties", f"more than {lim.max_properties} properties")
    flat = dict(leaves)
    if repeated or len(flat) != len(leaves):
        raise _Reject("duplicate_key", "a property key occurs twice")
    return dict(sorted(flat.items()))


# --- Encoding --------------------------------------------------------------------------


def _lp(text: str) -> bytes:
    data = text.encode()
    return pack("<I", len(data)) + data


def _fp_value(value: Any) -> bytes:
    if value is None:
        return b"0"
    if isinstance(value, bool):
        return b"T" if value else b"f"
    if isinstance(value, int):
        return b"i" + pack("<q", value) if value < _I64 else b"w" + pack("<Q", value)
    if isinstance(value, float):
        return b"d" + pack("<d", value)
    if isinstance(value, str):
        return b"s" + _lp(value)
    return b"a" + pack("<I", len(value)) + b"".join(map(_fp_value, value))


def _fingerprint(
    name: str,
    client_ts: int | None,
    received_at_us: int,
    index: int,
    user_id: str | None,
    value: float | None,
    props: dict[str, Any],
) -> bytes:
    """The README's fingerprint byte string (integers and f64 bits little-endian)."""
    parts = [b"n", _lp(name)]
    if client_ts is None:
        parts.append(b"r" + pack("<qI", received_at_us, index))
    else:
        parts.append(b"t" + pack("<q", client_ts))
    parts.append(b"-" if user_id is None else b"u" + _lp(user_id))
    parts.append(b"-" if value is None else b"v" + pack("<d", value))
    parts.append(b"p" + pack("<I", len(props)))
    for key, item in props.items():
        parts += (_lp(key), _fp_value(item))
    return b"".join(parts)


def _copy_tuple(*fields: bytes | None) -> bytes:
    parts = [pack(">h", len(fields))]
    for f in fields:
        parts.append(pack(">i", -1) if f is None else pack(">i", len(f)) + f)
    return b"".join(parts)


# --- Events ----------------------------------------------------------------------------


def _event(
    event: Any,
    index: int,
    sent_at_us: int | None,
    received_at_us: int,
    customer: bytes,
    lim: Limits,
) -> bytes:
    """Check and normalize one event (all checks after event_too_large); its COPY tuple."""
    if not isinstance(event, _OBJECT):
        raise _Reject("invalid_event", "event is not a JSON object")
    fields: dict[str, Any] = {}
    for key, item in _pairs(event):
        if key in fields:
            raise _Reject("duplicate_key", f"duplicate key {key!r}")
        fields[key] = item

    name = _name(fields.get("name"), lim)
    event_id = _optional_text(
        fields.get("event_id"), lim.max_event_id_chars, "invalid_event_id", "event_id"
    )

    raw_ts = fields.get("ts")
    client_ts = None if raw_ts is None else _timestamp_us(raw_ts)
    if raw_ts is not None and client_ts is None:
        raise _Reject("invalid_ts", "ts must be an RFC 3339 string or epoch milliseconds in range")
    # Reading: the whole Time section runs here, at the ts step, so a skew-corrected ts out of
    # range is reported before user_id/value/properties; that range check comes before clamping.
    flags = 0
    if client_ts is None:
        ts, flags = received_at_us, TS_DEFAULTED
    elif sent_at_us is None:
        ts = client_ts
    else:
        ts, flags = received_at_us - (sent_at_us - client_ts), TS_SKEW_CORRECTED
        if not 0 <= ts <= _MAX_TS_US:
            raise _Reject("invalid_ts", "skew-corrected ts is out of range")
    if ts > received_at_us + lim.max_future_us:
        ts, flags = received_at_us, flags | TS_CLAMPED

    raw_user = fields.get("user_id")
    if isinstance(raw_user, int) and not isinstance(raw_user, bool):
        raw_user = str(raw_user)
    user_id = _optional_text(raw_user, lim.max_user_id_chars, "invalid_user_id", "user_id")

    raw_value = fields.get("value")
    if raw_value is not None and (
        isinstance(raw_value, bool) or not isinstance(raw_value, (int, float))
    ):
        raise _Reject("invalid_value", "value must be a number")
    value = None if raw_value is None else float(raw_value)

    props = _properties(fields.get("properties"), lim)

    if event_id is not None:
        dedup_key = "id:" + event_id
    else:
        fp = _fingerprint(name, client_ts, received_at_us, index, user_id, value, props)
        dedup_key = "fp:" + hashlib.sha256(fp).hexdigest()[:32]
        flags |= DEDUP_FINGERPRINT

    props_json = json.dumps(props, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return _copy_tuple(
        customer,
        dedup_key.encode(),
        None if event_id is None else event_id.encode(),
        name.encode(),
        pack(">q", ts - _PG_EPOCH_US),
        pack(">q", received_at_us - _PG_EPOCH_US),
        None if user_id is None else user_id.encode(),
        None if value is None else pack(">d", value),
        b"\x01" + props_json.encode(),
        pack(">h", flags),
    )


# --- Body ------------------------------------------------------------------------------


def _gunzip(body: bytes, lim: Limits) -> bytes:
    """Decompress a (multi-member) gzip stream, never producing more than the caps allow.

    Reading: output stops one byte past the smaller of ``max_body_bytes`` and
    ``max(max_ratio * len(body), 65536)`` and the error is that cap's (``body_too_large`` on a
    tie); errors come in stream order, so corrupt data past the cap is never seen. An empty
    body, a truncated member and bytes after a member that are not a gzip member (trailing
    zeros included) are ``invalid_gzip``.
    """
    cap = min(lim.max_body_bytes, max(lim.max_ratio * len(body), 65536))
    out = bytearray()
    rest = body
    if not rest:
        raise _body_error("invalid_gzip", "empty gzip stream")
    try:
        while rest:
            member = zlib.decompressobj(wbits=31)
            # max_length bounds the output; zlib streams the input internally.
            out += member.decompress(rest, cap + 1 - len(out))
            if len(out) > cap:
                if cap == lim.max_body_bytes:
                    raise _body_error("body_too_large", f"body exceeds {cap} bytes")
                raise _body_error("decompression_bomb", f"body inflates past {cap} bytes")
            if not member.eof:
                raise _body_error("invalid_gzip", "truncated gzip stream")
            rest = member.unused_data
    except zlib.error as e:
        raise _body_error("invalid_gzip", f"corrupt gzip stream: {e}") from None
    return bytes(out)


def _json_events(
    data: bytes, lim: Limits, loads: Callable[[bytes], Any] | None
) -> tuple[list[Any], int | None, bool]:
    """JSON mode: ``(events, sent_at_us, is_batch)``."""
    try:
        doc = _parse(data, loads)
    except ValueError as e:
        raise _body_error("invalid_json", f"body is not valid JSON: {e}") from None
    if not isinstance(doc, _OBJECT):
        raise _body_error("invalid_shape", "body must be a JSON object")
    keys = [key for key, _ in _pairs(doc)]
    if "events" not in keys:
        return [doc], None, False
    # Reading: checked in this order: duplicated events/sent_at, events type, sent_at, then
    # (by the caller) the event count. Other duplicated wrapper keys are ignored.
    if keys.count("events") > 1 or keys.count("sent_at") > 1:
        raise _body_error("invalid_shape", "duplicated events or sent_at key")
    wrapper = dict(doc)
    events = wrapper["events"]
    if not isinstance(events, list):
        raise _body_error("invalid_shape", "events must be an array")
    sent_at = wrapper.get("sent_at")
    sent_at_us = None if sent_at is None else _timestamp_us(sent_at)
    if sent_at is not None and sent_at_us is None:
        raise _body_error("invalid_sent_at", "sent_at is not a valid timestamp")
    return events, sent_at_us, True


def normalize_batch(
    body: bytes,
    received_at_us: int,
    *,
    customer_id: str = "",
    content_encoding: str | None = None,
    ndjson: bool = False,
    limits: Limits | None = None,
    loads: Callable[[bytes], Any] | None = None,
) -> NormalizedBatch:
    """Normalize a request body into binary COPY tuples, per the README.

    Whole-body problems raise :class:`NormalizeError` (``unsupported_encoding``,
    ``invalid_gzip``, ``body_too_large``, ``decompression_bomb``, ``empty_body``,
    ``invalid_json``, ``invalid_shape``, ``invalid_sent_at``, ``too_many_events``); each
    event is then accepted or rejected on its own with the first failing check, in the
    README's order. ``received_at_us`` is the receive time in µs since the Unix epoch.

    ``loads`` replaces ``json.loads`` (e.g. ``orjson.loads``, for the benchmark baseline
    "orjson + Python rules"); such a parser returns dicts, so duplicate keys are not
    detected in that variant: no ``duplicate_key`` for repeated keys within one object (a
    leaf collision after flattening still is) and no ``invalid_shape`` for a repeated
    ``events``/``sent_at``.
    """
    lim = limits or Limits()
    # Reading: "identity" is case-insensitive like "gzip"; no whitespace is trimmed.
    encoding = (content_encoding or "identity").lower()
    if encoding == "gzip":
        data = _gunzip(body, lim)
    elif encoding == "identity":
        data = body
    else:
        raise _body_error("unsupported_encoding", f"unsupported encoding {content_encoding!r}")
    if len(data) > lim.max_body_bytes:
        raise _body_error("body_too_large", f"body exceeds {lim.max_body_bytes} bytes")
    if not data.strip(_JSON_WS):
        raise _body_error("empty_body", "body is empty")

    if ndjson:
        events: list[Any] = [s for s in (line.strip(_JSON_WS) for line in data.split(b"\n")) if s]
        sent_at_us = None
        is_batch = False
    else:
        events, sent_at_us, is_batch = _json_events(data, lim, loads)
    if len(events) > lim.max_events:
        raise _body_error("too_many_events", f"more than {lim.max_events} events")
    if ndjson:
        sizes = [len(line) for line in events]
    elif not is_batch:
        sizes = [len(data.strip(_JSON_WS))]
    elif len(data) > lim.max_event_bytes:
        sizes = _event_sizes(data.decode())
    else:  # no element can be longer than the whole body
        sizes = [0] * len(events)

    customer = customer_id.encode()
    rows: list[bytes] = []
    rejected: list[tuple[int, str, str]] = []
    for index, (size, event) in enumerate(zip(sizes, events, strict=True)):
        try:
            # Reading: in NDJSON mode event_too_large is checked before the line is parsed.
            if size > lim.max_event_bytes:
                raise _Reject("event_too_large", f"event exceeds {lim.max_event_bytes} bytes")
            if ndjson:
                try:
                    event = _parse(event, loads)
                except ValueError as e:
                    raise _Reject("invalid_json", f"line is not valid JSON: {e}") from None
            rows.append(_event(event, index, sent_at_us, received_at_us, customer, lim))
        except _Reject as r:
            rejected.append((index, r.code, r.message))
    return NormalizedBatch(len(rows), rejected, b"".join(rows), len(events))


# --- COPY decoding ---------------------------------------------------------------------


def decode_copy(data: bytes) -> list[tuple[Any, ...]]:
    """Decode concatenated binary COPY tuples of either implementation.

    Each row is ``(customer_id, dedup_key, event_id | None, name, ts_unix_us,
    received_at_unix_us, user_id | None, value | None, properties: dict, flags)``.
    Raises ``ValueError`` on malformed data.
    """
    rows: list[tuple[Any, ...]] = []
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > len(data):
            raise ValueError(f"truncated or malformed COPY data at byte {pos}")
        pos += n
        return data[pos - n : pos]

    def field(nullable: bool = False, width: int | None = None) -> bytes | None:
        n = int.from_bytes(take(4), "big", signed=True)
        if n == -1 and nullable:
            return None
        if width is not None and n != width:
            raise ValueError(f"fixed-width field of {n} bytes at byte {pos}")
        return take(n)

    def text(nullable: bool = False) -> str | None:
        raw = field(nullable)
        return None if raw is None else raw.decode()

    def number(fmt: str) -> Any:
        raw = field(fmt == ">d", calcsize(fmt))
        return None if raw is None else unpack(fmt, raw)[0]

    while pos < len(data):
        if take(2) != b"\x00\x0a":
            raise ValueError("COPY tuple does not have 10 fields")
        row = [text(), text(), text(True), text()]
        row += [number(">q") + _PG_EPOCH_US, number(">q") + _PG_EPOCH_US, text(True), number(">d")]
        jsonb = field()
        if jsonb is None or jsonb[:1] != b"\x01":
            raise ValueError("jsonb field without version byte 1")
        properties = json.loads(jsonb[1:].decode())
        if not isinstance(properties, dict):
            raise ValueError("properties is not a JSON object")
        rows.append((*row, properties, number(">h")))
    return rows


# --- Signatures ------------------------------------------------------------------------


def _mac(secret: bytes, t: str, body: bytes) -> bytes:
    return hmac.new(secret, t.encode() + b"." + body, hashlib.sha256).digest()


def sign(secret: bytes, body: bytes, t: int) -> str:
    """A valid ``X-Signature`` value ``t=<t>,v1=<hex>`` for ``body`` at unix time ``t``."""
    return f"t={t},v1={_mac(secret, str(t), body).hex()}"


def verify_signature(
    secret: bytes, header: str, body: bytes, now_s: int, tolerance_s: int = 300
) -> None:
    """Check ``X-Signature: t=<unix s>,v1=<hex>[,v1=<hex>...]`` over the raw body bytes.

    Raises :class:`SignatureError` with ``malformed_signature``, ``stale_signature``,
    ``future_signature`` or ``bad_signature``, checked in that order.
    """
    # Reading: items are split on ","; only U+0020 around an item is ignored; an item is
    # scheme "=" value split at the first "=" (no "=": the whole item is the scheme, value "");
    # schemes are case-sensitive and empty items are an unknown scheme. The MAC covers the
    # t digits exactly as sent (leading zeros included).
    if len(header.encode("utf-8", "surrogatepass")) > 4096:
        raise _signature_error("malformed_signature", "header longer than 4096 bytes")
    ts: list[str] = []
    v1: list[str] = []
    for item in header.split(","):
        scheme, _, value = item.strip(" ").partition("=")
        if scheme == "t":
            ts.append(value)
        elif scheme == "v1":
            v1.append(value)
    if len(ts) != 1 or not _SIG_T.fullmatch(ts[0]):
        raise _signature_error("malformed_signature", "need exactly one t of 1-12 digits")
    if not 1 <= len(v1) <= 8 or not all(_SIG_V1.fullmatch(v) for v in v1):
        raise _signature_error("malformed_signature", "need 1-8 v1 of 64 hex digits")
    t = int(ts[0])
    if now_s - t > tolerance_s:
        raise _signature_error("stale_signature", "signature timestamp too old")
    if t - now_s > tolerance_s:
        raise _signature_error("future_signature", "signature timestamp in the future")
    expected = _mac(secret, ts[0], body)
    matched = False
    for v in v1:
        matched |= hmac.compare_digest(expected, bytes.fromhex(v))
    if not matched:
        raise _signature_error("bad_signature", "no v1 signature matches")
