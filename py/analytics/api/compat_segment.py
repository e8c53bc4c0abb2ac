"""Segment's HTTP tracking API: `/v1/track`, `/v1/identify`, `/v1/page`, `/v1/screen`,
`/v1/alias` and `/v1/batch` with `{"batch": [...]}`.

`/v1/batch` is also our own batch endpoint: a request with `Authorization: Bearer` is ours,
any other (Segment SDKs send HTTP Basic with the write key as user) is Segment's. Answers are
`{"success": true, ...}` after commit, with our counts; errors are our `{"code", "message"}`,
which Segment's SDKs read as they read Segment's own.
"""

from __future__ import annotations

import base64
import binascii

from starlette.requests import Request
from starlette.responses import Response

from analytics.api import ingest
from analytics.api.compat_ingest import ingest_compat, single_rejection
from analytics.api.contract import INGEST_CODES, operation
from analytics.api.errors import ApiError, json_response
from analytics.api.ingest import answer

#: The single calls served, each at `/v1/<call>`.
CALLS = ("track", "identify", "page", "screen", "alias")


def basic_user(request: Request) -> str | None:
    """The Basic-auth user (Segment's write key), None without an Authorization header."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "basic":
        raise ApiError(401, "missing_key", "send the write key as the HTTP Basic-auth user")
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ApiError(401, "invalid_key", "malformed Basic credentials") from None
    user = decoded.partition(":")[0].strip()
    if not user:
        raise ApiError(401, "missing_key", "the Basic-auth user must be the write key")
    return user


async def _segment(request: Request, dialect: str, batch: bool) -> Response:
    outcome = await ingest_compat(request, dialect, basic_user(request), batch=batch)
    if not batch:
        single_rejection(outcome)
    body = answer(outcome.result, outcome.inserted, outcome.duplicates)
    return json_response({"success": True, **body})


#: Segment's messages are theirs to define; the mapping (rust/normalize/README.md) says what
#: is read. One message, or `{"batch": [...]}`.
_SEGMENT_BODY = {
    "type": "object",
    "description": "A Segment HTTP tracking API message (or batch): `type`, `event`, `userId`"
    " / `anonymousId`, `properties`, `context`, `timestamp`, `sentAt`, `messageId`.",
}
_SEGMENT_RESULT = {
    "allOf": [{"$ref": "#/components/schemas/IngestResult"}],
    "description": 'Segment\'s `{"success": true}`, with our counts.',
}
_SEGMENT_CODES = (*INGEST_CODES, "signed_key_unsupported")


@operation(
    "POST",
    "Send a batch of events (ours, or Segment's)",
    description="With `Authorization: Bearer` this is our own batch (see `POST /v1/events` for"
    " the answer); with the write key as the Basic-auth user (or `writeKey` in the body), a"
    " Segment batch `{\"batch\": [...]}`, answered `{\"success\": true, ...}`.",
    body={"application/json": {"oneOf": [{"$ref": "#/components/schemas/Batch"}, _SEGMENT_BODY]},
          "application/x-ndjson": "NdjsonBatch"},
    result="IngestResult",
    codes=_SEGMENT_CODES,
    security=("bearer", "signature", "basic"),
    cors=True,
    tags=["ingest", "segment"],
)  # fmt: skip
async def batch(request: Request) -> Response:
    """`POST /v1/batch`: ours with a Bearer key, Segment's otherwise."""
    scheme = request.headers.get("authorization", "").partition(" ")[0]
    if scheme.lower() == "bearer":
        return await ingest.ingest_batch(request)
    return await _segment(request, "segment", batch=True)


def call(name: str):  # type: ignore[no-untyped-def]
    """The endpoint of one Segment call, `/v1/<name>`."""

    async def endpoint(request: Request) -> Response:
        return await _segment(request, f"segment/{name}", batch=False)

    endpoint.__name__ = f"segment_{name}"
    return operation(
        "POST",
        f"Segment `{name}` call",
        description=f"A Segment `{name}` message, the write key as the Basic-auth user (or"
        ' `writeKey` in the body); answered `{"success": true, ...}` after commit.',
        body={"application/json": _SEGMENT_BODY},
        result=_SEGMENT_RESULT,
        codes=_SEGMENT_CODES,
        security=("basic",),
        cors=True,
        tags=["segment"],
    )(endpoint)
