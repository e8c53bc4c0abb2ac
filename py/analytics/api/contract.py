"""What each endpoint declares about itself for the OpenAPI document, and the schemas.

An endpoint module marks its handler with `@operation(METHOD, ...)` next to its definition;
`api/openapi.py` walks the app's routes and builds the document from those marks, so a route
without one is missing from the document (and `tests/test_openapi.py` fails). The schemas
take their figures from where the code takes them: the normalizer's `Limits` (as the
services configure them from settings), the error-code registries (`api/codes.py`), the
query's parameters, intervals, aggregations and dimensions.

Declaring a route is a few lines (CONTRIBUTING "An endpoint"):

    @operation("POST", "Send one event", body="Event", result="IngestResult",
               codes=INGEST_CODES, cors=True)
    async def ingest_event(request): ...

`body` and `result` name a schema of `components` below or are a JSON Schema dict; `codes`
are the error codes the operation may answer (each with its status from the registry).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from analytics.api.codes import API_CODES
from analytics.normalize import ERROR_CODES, MAX_ABS_VALUE, Limits
from analytics.settings import Settings

Schema = dict[str, Any]
Parameters = Mapping[str, tuple[str, Schema, bool]]
F = TypeVar("F", bound=Callable[..., Any])

#: Where `@operation` leaves its declarations on a handler: method -> Operation.
MARK = "__operations__"


@dataclass(frozen=True)
class Operation:
    summary: str
    description: str = ""
    #: Request body: media type -> schema (a component name or a JSON Schema dict).
    body: Mapping[str, str | Schema] = field(default_factory=dict)
    #: The 200 answer: a component name or a JSON Schema dict, and its media type.
    result: str | Schema = "Empty"
    result_media: str = "application/json"
    #: The error codes this operation may answer (statuses from `api/codes.ALL_CODES`).
    codes: Sequence[str] = ()
    #: Query parameters: name -> (description, JSON Schema, required); or a function of the
    #: settings giving them (when their values depend on configuration).
    parameters: Parameters | Callable[[Settings], Parameters] = field(default_factory=dict)
    #: Security schemes any one of which authenticates (names in `SECURITY_SCHEMES`).
    security: Sequence[str] = ()
    #: Browsers may call it (answered preflights; api/cors.py).
    cors: bool = False
    tags: Sequence[str] = ()


def operation(method: str, summary: str, **details: Any) -> Callable[[F], F]:
    """Declare `method` of the handler's route for the OpenAPI document."""

    def mark(handler: F) -> F:
        declared = dict(getattr(handler, MARK, {}))
        declared[method.upper()] = Operation(summary, **details)
        setattr(handler, MARK, declared)
        return handler

    return mark


def declared(handler: object) -> Mapping[str, Operation]:
    return getattr(handler, MARK, {})


_SIGNATURE_CODES = tuple(c for c, _ in ERROR_CODES if c.endswith("_signature"))
_BODY_CODES = tuple(c for c, _ in ERROR_CODES if not c.endswith("_signature"))
#: Codes of every key-authenticated route.
AUTH_CODES = ("missing_key", "invalid_key", "wrong_scope", "rate_limited", "database_unavailable")
#: Codes of the ingest routes.
INGEST_CODES = (
    *AUTH_CODES,
    "origin_not_allowed",
    "unsupported_charset",
    "unsupported_media_type",
    "invalid_content_length",
    "missing_signature",
    *_SIGNATURE_CODES,
    *_BODY_CODES,
    "unstorable_event",
    "overloaded",
    "write_failed",
)
#: Codes any route may answer (protocol guards, deadline, bugs).
COMMON_CODES = (
    "ambiguous_length",
    "request_timeout",
    "headers_too_large",
    "method_not_allowed",
    "deadline_exceeded",
    "internal_error",
)

SECURITY_SCHEMES: Schema = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key, `ak_<customer>_<key id>_<secret>` (`analytics keys create`).",
    },
    "signature": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Signature",
        "description": (
            "For keys created with `--signing`: `t=<unix seconds>,v1=<hex HMAC-SHA256>` of"
            ' `"<t>." + body` keyed with the signing secret as printed (`ansk_...`, its UTF-8'
            " bytes); several `v1` may be sent. Accepted within the signature window of the"
            " server's clock."
        ),
    },
    "basic": {
        "type": "http",
        "scheme": "basic",
        "description": "Segment's form: the write key as the Basic-auth user, no password.",
    },
}


def _text(max_chars: int, what: str) -> Schema:
    return {"type": ["string", "null"], "maxLength": max_chars, "description": what}


def components(settings: Settings, event: Limits, batch: Limits) -> Schema:
    """The document's schemas, with the figures of these settings and limits."""
    ts: Schema = {
        "oneOf": [
            {"type": "string", "format": "date-time"},
            {"type": "number", "description": "epoch milliseconds"},
            {"type": "null"},
        ],
        "description": "RFC 3339 or epoch ms; absent: the receive time; clamped to"
        f" {event.max_future_us // 1_000_000} s ahead",
    }
    event_schema: Schema = {
        "type": "object",
        "required": ["name"],
        "description": f"One event: at most {event.max_event_bytes} bytes of JSON"
        f" ({event.max_event_bytes // 1024} KiB); unknown top-level keys are ignored.",
        "properties": {
            "name": {
                "type": "string",
                "minLength": 1,
                "maxLength": event.max_name_chars,
                "description": "trimmed, whitespace collapsed, lowercased",
            },
            "event_id": _text(event.max_event_id_chars, "the dedup key (else a fingerprint)"),
            "ts": ts,
            "user_id": {
                "type": ["string", "integer", "null"],
                "maxLength": event.max_user_id_chars,
            },
            "value": {
                "type": ["number", "null"],
                "minimum": -MAX_ABS_VALUE,
                "maximum": MAX_ABS_VALUE,
            },
            "properties": {
                "type": ["object", "null"],
                "maxProperties": event.max_properties,
                "description": f"flattened to dotted keys (depth <= {event.max_property_depth},"
                f" keys <= {event.max_key_chars} characters, strings <="
                f" {event.max_string_bytes} bytes, at most {event.max_properties} leaves)",
            },
        },
    }
    error_codes = sorted({*(c for c, _ in ERROR_CODES), *API_CODES})
    return {
        "Event": event_schema,
        "Batch": {
            "type": "object",
            "required": ["events"],
            "description": f"At most {batch.max_events} events and {batch.max_body_bytes}"
            " bytes decompressed.",
            "properties": {
                "events": {
                    "type": "array",
                    "maxItems": batch.max_events,
                    "items": {"$ref": "#/components/schemas/Event"},
                },
                "sent_at": {**ts, "description": "the producer's clock when sending: ts skew"},
            },
        },
        "NdjsonBatch": {
            "type": "string",
            "description": f"One Event per line, at most {batch.max_events} lines and"
            f" {batch.max_body_bytes} bytes decompressed.",
        },
        "IngestResult": {
            "type": "object",
            "required": ["accepted", "duplicates", "rejected"],
            "properties": {
                "accepted": {"type": "integer", "description": "events newly stored"},
                "duplicates": {"type": "integer", "description": "valid events seen before"},
                "rejected": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["index", "code", "message", "retryable"],
                        "properties": {
                            "index": {"type": "integer"},
                            "code": {"$ref": "#/components/schemas/ErrorCode"},
                            "message": {"type": "string"},
                            "retryable": {"type": "boolean"},
                        },
                    },
                },
            },
        },
        "Series": {
            "type": "object",
            "properties": {
                "event": {"type": "string"},
                "interval": {"type": "string"},
                "agg": {"type": "string"},
                "from": {"type": "string", "format": "date-time"},
                "to": {"type": "string", "format": "date-time"},
                "group_by": {"type": ["string", "null"]},
                "filters": {"type": "array", "items": {"type": "object"}},
                "series": {
                    "type": "array",
                    "description": "One per group: `group` (null: events without the grouped"
                    " dimension), `points` (`t`, `value`); past `limit`, one with `other`: the"
                    " number of groups it holds (counts and sums only).",
                    "items": {"type": "object"},
                },
                "approximate": {
                    "type": "boolean",
                    "description": "unique_users only: true when estimated from HyperLogLog"
                    " sketches (ranges of many events), false when counted exactly.",
                },
                "relative_standard_error": {
                    "type": "number",
                    "description": "With `approximate`: the estimate's relative standard error.",
                },
            },
        },
        "Status": {"type": "object", "properties": {"status": {"type": "string"}}},
        "Empty": {"type": "object"},
        "ErrorCode": {"type": "string", "enum": error_codes},
        "Error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"$ref": "#/components/schemas/ErrorCode"},
                "message": {"type": "string", "description": "what went wrong, what to do"},
            },
        },
    }
