"""PostgreSQL binary COPY tuples (no file header or trailer): a row encoded, and concatenated
rows of either implementation decoded.

Columns, their order and their types are the crate's registry (``COPY_SCHEMA``, the one the
staging table is created from); how each type is encoded and which columns may be NULL are
the README's ("Output: binary COPY tuples"), as read here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from struct import pack, unpack
from typing import Any

from analytics.normalize import COPY_SCHEMA
from benches.normalize_reference.timestamps import PG_EPOCH_US

#: The README's "NULL" columns; every other column always has a value.
NULLABLE = frozenset({"event_id", "user_id", "value"})


def _json_text(obj: dict[str, Any]) -> bytes:
    """Compact JSON, its keys in jsonb's order (shorter first, one length bytewise), as the
    crate writes them (README, column 9)."""
    ordered = dict(sorted(obj.items(), key=lambda kv: (len(kv[0].encode()), kv[0].encode())))
    text = json.dumps(ordered, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return b"\x01" + text.encode()


#: The bytes of a non-NULL value, by PostgreSQL type.
_ENCODE: dict[str, Callable[[Any], bytes]] = {
    "text": str.encode,
    "timestamptz": lambda unix_us: pack(">q", unix_us - PG_EPOCH_US),
    "double precision": lambda value: pack(">d", value),
    "jsonb": _json_text,
    "smallint": lambda value: pack(">h", value),
}


def copy_tuple(row: Mapping[str, Any]) -> bytes:
    """One tuple of ``row`` (column -> value, None for NULL; timestamps in µs since the Unix
    epoch, jsonb as the object), its fields in ``COPY_SCHEMA`` order."""
    parts = [pack(">h", len(COPY_SCHEMA))]
    for column, pg_type in COPY_SCHEMA:
        value = row[column]
        if value is None:
            parts.append(pack(">i", -1))
        else:
            data = _ENCODE[pg_type](value)
            parts.append(pack(">i", len(data)) + data)
    return b"".join(parts)


def _jsonb(raw: bytes) -> dict[str, Any]:
    if raw[:1] != b"\x01":
        raise ValueError("jsonb field without version byte 1")
    obj = json.loads(raw[1:].decode())
    if not isinstance(obj, dict):
        raise ValueError("jsonb field is not a JSON object")
    return obj


#: (byte width, or None if variable; the value of the bytes), by PostgreSQL type.
_DECODE: dict[str, tuple[int | None, Callable[[bytes], Any]]] = {
    "text": (None, bytes.decode),
    "timestamptz": (8, lambda raw: unpack(">q", raw)[0] + PG_EPOCH_US),
    "double precision": (8, lambda raw: unpack(">d", raw)[0]),
    "jsonb": (None, _jsonb),
    "smallint": (2, lambda raw: unpack(">h", raw)[0]),
}


def decode_copy(data: bytes) -> list[tuple[Any, ...]]:
    """Decode concatenated binary COPY tuples of either implementation.

    Each row is a tuple of one value per column of ``COPY_SCHEMA``, in its order: text as
    str, timestamptz as µs since the Unix epoch, double precision as float, jsonb as the
    object, smallint as int, and None for NULL (allowed only in the ``NULLABLE`` columns).
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

    fields = pack(">h", len(COPY_SCHEMA))
    while pos < len(data):
        if take(2) != fields:
            raise ValueError(f"COPY tuple does not have {len(COPY_SCHEMA)} fields")
        row = []
        for column, pg_type in COPY_SCHEMA:
            n = int.from_bytes(take(4), "big", signed=True)
            if n == -1 and column in NULLABLE:
                row.append(None)
                continue
            width, value = _DECODE[pg_type]
            if width is not None and n != width:
                raise ValueError(f"fixed-width field of {n} bytes at byte {pos}")
            row.append(value(take(n)))
        rows.append(tuple(row))
    return rows
