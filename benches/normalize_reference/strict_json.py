"""Strict RFC 8259 parsing that keeps what ``json.loads`` throws away: objects stay a list of
pairs in document order (:class:`Obj`), so duplicate keys can be reported."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Collection, Iterator
from itertools import accumulate
from typing import Any, NoReturn

I64 = 2**63
_U64 = 2**64
_MAX_DEPTH = 127
JSON_WS = b" \t\r\n"
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# A string, or an unterminated one running to the end (so the scan stays linear).
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)', re.S)
_JSON_WS_RUN = re.compile("[ \t\r\n]*")
_DEPTH_DELTA = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
_NOT_BRACKET = bytes(b for b in range(256) if b not in _DEPTH_DELTA)


class Obj(tuple):  # type: ignore[type-arg]
    """A JSON object as its ``(key, value)`` pairs in document order, duplicates kept."""


OBJECT = (Obj, dict)


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
        if -I64 <= n < _U64:
            return n
    return _finite(float(text))


def _reject_constant(text: str) -> NoReturn:
    raise ValueError(f"{text} is not JSON")


DECODER = json.JSONDecoder(
    object_pairs_hook=Obj,
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
    elif isinstance(value, Obj):
        for key, item in value:
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def parse(raw: bytes, loads: Callable[[bytes], Any] | None) -> Any:
    """Parse one strict RFC 8259 document (UTF-8, no BOM, depth <= 127, no lone surrogates).

    Objects become :class:`Obj`, or dicts when ``loads`` is given. ``loads`` must itself be
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
    doc = DECODER.decode(raw.decode("utf-8"))
    # Strict UTF-8 decoding leaves \uD8xx-\uDFxx escapes as the only source of surrogates.
    if _SURROGATE_ESCAPE.search(raw) and any(map(_SURROGATE.search, _strings(doc))):
        raise ValueError("lone surrogate in string")
    return doc


def pairs(obj: Obj | dict[str, Any]) -> Collection[tuple[str, Any]]:
    return obj.items() if isinstance(obj, dict) else obj


def event_sizes(text: str) -> list[int]:
    """UTF-8 length of each element of the top-level ``events`` array of a valid JSON object.

    Walks the object's members with ``raw_decode``, whose end index is exactly the end of a
    value's text. Should ``events`` occur twice (only possible with a foreign ``loads``), the
    last one is measured, matching a dict's last-wins.
    """
    sizes: list[int] = []
    i = _skip_ws(text, 0) + 1  # past "{"
    while True:
        key, i = DECODER.raw_decode(text, _skip_ws(text, i))
        i = _skip_ws(text, _skip_ws(text, i) + 1)  # past ":"
        if key == "events" and text[i] == "[":
            sizes, i = [], i + 1
            while text[i := _skip_ws(text, i)] != "]":
                _, end = DECODER.raw_decode(text, i)
                sizes.append(len(text[i:end].encode()))
                i = _skip_ws(text, end)
                i += text[i] == ","
            i += 1
        else:
            _, i = DECODER.raw_decode(text, i)
        i = _skip_ws(text, i)
        if text[i] == "}":
            return sizes
        i += 1  # past ","
