"""A request body to rows: decompression under its caps, JSON and NDJSON framing, the batch
shape, then each event on its own (:func:`normalize_batch`)."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benches.normalize_reference.errors import Reject, body_error
from benches.normalize_reference.event import event_row
from benches.normalize_reference.limits import Limits
from benches.normalize_reference.strict_json import JSON_WS, OBJECT, event_sizes, pairs, parse
from benches.normalize_reference.timestamps import timestamp_us


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
        raise body_error("invalid_gzip", "empty gzip stream")
    try:
        while rest:
            member = zlib.decompressobj(wbits=31)
            # max_length bounds the output; zlib streams the input internally.
            out += member.decompress(rest, cap + 1 - len(out))
            if len(out) > cap:
                if cap == lim.max_body_bytes:
                    raise body_error("body_too_large", f"body exceeds {cap} bytes")
                raise body_error("decompression_bomb", f"body inflates past {cap} bytes")
            if not member.eof:
                raise body_error("invalid_gzip", "truncated gzip stream")
            rest = member.unused_data
    except zlib.error as e:
        raise body_error("invalid_gzip", f"corrupt gzip stream: {e}") from None
    return bytes(out)


def _json_events(
    data: bytes, lim: Limits, loads: Callable[[bytes], Any] | None
) -> tuple[list[Any], int | None, bool]:
    """JSON mode: ``(events, sent_at_us, is_batch)``."""
    try:
        doc = parse(data, loads)
    except ValueError as e:
        raise body_error("invalid_json", f"body is not valid JSON: {e}") from None
    if not isinstance(doc, OBJECT):
        raise body_error("invalid_shape", "body must be a JSON object")
    keys = [key for key, _ in pairs(doc)]
    if "events" not in keys:
        return [doc], None, False
    # Reading: checked in this order: duplicated events/sent_at, events type, sent_at, then
    # (by the caller) the event count. Other duplicated wrapper keys are ignored.
    if keys.count("events") > 1 or keys.count("sent_at") > 1:
        raise body_error("invalid_shape", "duplicated events or sent_at key")
    wrapper = dict(doc)
    events = wrapper["events"]
    if not isinstance(events, list):
        raise body_error("invalid_shape", "events must be an array")
    sent_at = wrapper.get("sent_at")
    sent_at_us = None if sent_at is None else timestamp_us(sent_at)
    if sent_at is not None and sent_at_us is None:
        raise body_error("invalid_sent_at", "sent_at is not a valid timestamp")
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
    signed_at: int | None = None,
) -> NormalizedBatch:
    """Normalize a request body into binary COPY tuples, per the README.

    Whole-body problems raise :class:`NormalizeError` (``unsupported_encoding``,
    ``invalid_gzip``, ``body_too_large``, ``decompression_bomb``, ``empty_body``,
    ``invalid_json``, ``invalid_shape``, ``invalid_sent_at``, ``too_many_events``), with
    ``.code`` and ``.status`` as the extension sets them; each event is then accepted or
    rejected on its own with the first failing check, in the README's order.
    ``received_at_us`` is the receive time in µs since the Unix epoch; ``signed_at`` the
    signing time of a verified signature, which makes a replay of the request dedup.

    ``loads`` replaces ``json.loads`` (e.g. ``orjson.loads``, for the benchmark baseline
    "orjson + Python rules"); such a parser returns dicts, so duplicate keys are not
    detected in that variant: no ``duplicate_key`` for repeated keys within one object (a
    leaf collision after flattening still is) and no ``invalid_shape`` for a repeated
    ``events``/``sent_at``.
    """
    lim = limits or Limits()
    signed = None if signed_at is None else (signed_at, hashlib.sha256(body).digest())
    # Reading: "identity" is case-insensitive like "gzip"; no whitespace is trimmed.
    encoding = (content_encoding or "identity").lower()
    if encoding == "gzip":
        data = _gunzip(body, lim)
    elif encoding == "identity":
        data = body
    else:
        raise body_error("unsupported_encoding", f"unsupported encoding {content_encoding!r}")
    if len(data) > lim.max_body_bytes:
        raise body_error("body_too_large", f"body exceeds {lim.max_body_bytes} bytes")
    if not data.strip(JSON_WS):
        raise body_error("empty_body", "body is empty")

    if ndjson:
        events: list[Any] = [s for s in (line.strip(JSON_WS) for line in data.split(b"\n")) if s]
        sent_at_us = None
        is_batch = False
    else:
        events, sent_at_us, is_batch = _json_events(data, lim, loads)
    if len(events) > lim.max_events:
        raise body_error("too_many_events", f"more than {lim.max_events} events")
    if ndjson:
        sizes = [len(line) for line in events]
    elif not is_batch:
        sizes = [len(data.strip(JSON_WS))]
    elif len(data) > lim.max_event_bytes:
        sizes = event_sizes(data.decode())
    else:  # no element can be longer than the whole body
        sizes = [0] * len(events)

    rows: list[bytes] = []
    rejected: list[tuple[int, str, str]] = []
    for index, (size, event) in enumerate(zip(sizes, events, strict=True)):
        try:
            # Reading: in NDJSON mode event_too_large is checked before the line is parsed.
            if size > lim.max_event_bytes:
                raise Reject("event_too_large", f"event exceeds {lim.max_event_bytes} bytes")
            if ndjson:
                try:
                    event = parse(event, loads)
                except ValueError as e:
                    raise Reject("invalid_json", f"line is not valid JSON: {e}") from None
            rows.append(
                event_row(event, index, sent_at_us, received_at_us, customer_id, lim, signed)
            )
        except Reject as r:
            rejected.append((index, r.code, r.message))
    return NormalizedBatch(len(rows), rejected, b"".join(rows), len(events))
