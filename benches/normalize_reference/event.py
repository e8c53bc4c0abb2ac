"""One event: the README's per-event checks (all after ``event_too_large``), in order, then
its normalized row."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from struct import pack
from typing import Any

from benches.normalize_reference.copy_tuples import copy_tuple
from benches.normalize_reference.errors import Reject
from benches.normalize_reference.limits import Limits
from benches.normalize_reference.strict_json import I64, OBJECT, Obj, pairs
from benches.normalize_reference.timestamps import MAX_TS_US, timestamp_us

TS_CLAMPED = 1
TS_SKEW_CORRECTED = 2
TS_DEFAULTED = 4
DEDUP_FINGERPRINT = 8
# The README's bound on |value|: within it, rollup sums in double precision stay finite.
MAX_ABS_VALUE = 1e15

# Unicode White_Space (Rust's char::is_whitespace); str.strip()/split() would add U+001C-U+001F.
_WS = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_WS_RUN = re.compile(f"[{_WS}]+")


# --- Fields ----------------------------------------------------------------------------


def _trim(text: str) -> str:
    return text.strip(_WS)


def _name(value: Any, lim: Limits) -> str:
    if value is None:
        raise Reject("missing_name", "name is missing")
    if not isinstance(value, str):
        raise Reject("invalid_name", "name must be a string")
    name = _WS_RUN.sub(" ", _trim(value)).lower()
    if not 1 <= len(name) <= lim.max_name_chars:
        raise Reject("invalid_name", f"name must be 1-{lim.max_name_chars} characters")
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise Reject("invalid_name", "name contains a control character")
    return name


def _optional_text(value: Any, max_chars: int, code: str, field: str) -> str | None:
    """A trimmed string field (the caller turns integers into decimal first); empty = none."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise Reject(code, f"{field} must be a string")
    text = _trim(value)
    if len(text) > max_chars:
        raise Reject(code, f"{field} is longer than {max_chars} characters")
    if "\0" in text:
        raise Reject(code, f"{field} contains U+0000")
    return text or None


def _scalar(value: Any, lim: Limits) -> Any:
    # Reading: strings inside arrays are trimmed and checked like top-level leaf strings.
    if isinstance(value, str):
        text = _trim(value)
        if len(text.encode()) > lim.max_string_bytes:
            raise Reject("invalid_properties", f"string longer than {lim.max_string_bytes} bytes")
        if "\0" in text:
            raise Reject("invalid_properties", "string contains U+0000")
        return text
    if value is None or isinstance(value, (bool, int, float)):
        return value
    raise Reject("invalid_properties", "arrays may only hold strings, numbers, booleans and null")


def _walk(
    obj: Obj | dict[str, Any], prefix: str, depth: int, leaves: list[tuple[str, Any]], lim: Limits
) -> bool:
    """Step 1 of the properties checks: collect the leaves of ``obj`` (at object depth ``depth``)
    depth-first in document order, raising ``invalid_properties`` at the first bad key, leaf
    or depth. Returns whether some object repeats a key verbatim (a step-3 ``duplicate_key``).

    Reading: the key rules (trimmed, non-empty, no U+0000, joined length) apply to every key,
    also to one whose value is an object (even an empty one); the depth rule applies to every
    object, empty ones included.
    """
    members = pairs(obj)
    repeated = len({key for key, _ in members}) != len(members)
    for raw_key, value in members:
        key = _trim(raw_key)
        if not key or "\0" in key:
            raise Reject("invalid_properties", "property keys must be non-empty without U+0000")
        full = f"{prefix}.{key}" if prefix else key
        if len(full) > lim.max_key_chars:
            raise Reject("invalid_properties", f"property key longer than {lim.max_key_chars}")
        if isinstance(value, OBJECT):
            if depth >= lim.max_property_depth:
                raise Reject("invalid_properties", "properties nested too deeply")
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
    if not isinstance(value, OBJECT):
        raise Reject("invalid_properties", "properties must be an object")
    leaves: list[tuple[str, Any]] = []
    repeated = _walk(value, "", 1, leaves, lim)
    if len(leaves) > lim.max_properties:
        raise Reject("invalid_properties", f"more than {lim.max_properties} properties")
    flat = dict(leaves)
    if repeated or len(flat) != len(leaves):
        raise Reject("duplicate_key", "a property key occurs twice")
    return dict(sorted(flat.items()))


# --- Dedup key -------------------------------------------------------------------------


def _lp(text: str) -> bytes:
    data = text.encode()
    return pack("<I", len(data)) + data


def _fp_value(value: Any) -> bytes:
    if value is None:
        return b"0"
    if isinstance(value, bool):
        return b"T" if value else b"f"
    if isinstance(value, int):
        return b"i" + pack("<q", value) if value < I64 else b"w" + pack("<Q", value)
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
    signed: tuple[int, bytes] | None = None,
) -> bytes:
    """The README's fingerprint byte string (integers and f64 bits little-endian).
    ``signed`` is (signing time, SHA-256 of the body) of a verified signed request."""
    parts = [b"n", _lp(name)]
    if client_ts is None and signed is not None:
        parts.append(b"s" + pack("<q", signed[0]) + signed[1] + pack("<I", index))
    elif client_ts is None:
        parts.append(b"r" + pack("<qI", received_at_us, index))
    else:
        parts.append(b"t" + pack("<q", client_ts))
    parts.append(b"-" if user_id is None else b"u" + _lp(user_id))
    parts.append(b"-" if value is None else b"v" + pack("<d", value))
    parts.append(b"p" + pack("<I", len(props)))
    for key, item in props.items():
        parts += (_lp(key), _fp_value(item))
    return b"".join(parts)


# --- The event -------------------------------------------------------------------------


def event_row(
    event: Any,
    index: int,
    sent_at_us: int | None,
    received_at_us: int,
    customer_id: str,
    lim: Limits,
    signed: tuple[int, bytes] | None = None,
) -> bytes:
    """Check and normalize one event (all checks after event_too_large); its COPY tuple."""
    if not isinstance(event, OBJECT):
        raise Reject("invalid_event", "event is not a JSON object")
    fields: dict[str, Any] = {}
    for key, item in pairs(event):
        if key in fields:
            raise Reject("duplicate_key", f"duplicate key {key!r}")
        fields[key] = item

    name = _name(fields.get("name"), lim)
    event_id = _optional_text(
        fields.get("event_id"), lim.max_event_id_chars, "invalid_event_id", "event_id"
    )

    raw_ts = fields.get("ts")
    client_ts = None if raw_ts is None else timestamp_us(raw_ts)
    if raw_ts is not None and client_ts is None:
        raise Reject("invalid_ts", "ts must be an RFC 3339 string or epoch milliseconds in range")
    # Reading: the whole Time section runs here, at the ts step, so a skew-corrected ts out of
    # range is reported before user_id/value/properties; that range check comes before clamping.
    flags = 0
    if client_ts is None:
        ts, flags = received_at_us, TS_DEFAULTED
    elif sent_at_us is None:
        ts = client_ts
    else:
        ts, flags = received_at_us - (sent_at_us - client_ts), TS_SKEW_CORRECTED
        if not 0 <= ts <= MAX_TS_US:
            raise Reject("invalid_ts", "skew-corrected ts is out of range")
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
        raise Reject("invalid_value", "value must be a number")
    value = None if raw_value is None else float(raw_value)
    # Reading: the bound applies to the value as a double (float() rounds an int to nearest,
    # ties to even, as Rust's `as f64` does), so 1000000000000000.00000001 is 1e15 and passes.
    if value is not None and abs(value) > MAX_ABS_VALUE:
        raise Reject("value_out_of_range", f"value must be within ±{MAX_ABS_VALUE:g}")

    props = _properties(fields.get("properties"), lim)

    if event_id is not None:
        dedup_key = "id:" + event_id
    else:
        fp = _fingerprint(name, client_ts, received_at_us, index, user_id, value, props, signed)
        dedup_key = "fp:" + hashlib.sha256(fp).hexdigest()[:32]
        flags |= DEDUP_FINGERPRINT

    return copy_tuple(
        {
            "customer_id": customer_id,
            "dedup_key": dedup_key,
            "event_id": event_id,
            "name": name,
            "ts": ts,
            "received_at": received_at_us,
            "user_id": user_id,
            "value": value,
            "properties": props,
            "flags": flags,
        }
    )
