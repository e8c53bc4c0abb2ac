"""PostHog's capture API: `/batch`, `/capture` and `/i/v0/e` (each also with a trailing
slash), the key as `api_key` or `token` in the body (or `Authorization: Bearer`), gzip by
Content-Encoding or `?compression=gzip-js`. Answers are `{"status": 1, ...}` after commit,
with our counts; errors are our `{"code", "message"}`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from analytics.api.compat_ingest import ingest_compat, single_rejection
from analytics.api.contract import INGEST_CODES, operation
from analytics.api.errors import json_response
from analytics.api.ingest import answer

#: Every path PostHog's SDKs send events to.
PATHS = ("/batch", "/batch/", "/capture", "/capture/", "/i/v0/e", "/i/v0/e/")


@operation(
    "POST",
    "PostHog capture",
    description="PostHog's capture API: one event or `{\"batch\": [...]}`, the key as"
    " `api_key` or `token` in the body (or `Authorization: Bearer`), gzip by Content-Encoding"
    " or `?compression=gzip-js`; answered `{\"status\": 1, ...}` after commit.",
    body={"application/json": {"type": "object", "description": "PostHog events: `event`,"
          " `distinct_id`, `properties`, `timestamp`, `uuid`, `api_key`."}},
    result={"allOf": [{"$ref": "#/components/schemas/IngestResult"}]},
    codes=(*INGEST_CODES, "signed_key_unsupported"),
    cors=True,
    tags=["posthog"],
)  # fmt: skip
async def capture(request: Request) -> Response:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    header_key = key.strip() if scheme.lower() == "bearer" and key.strip() else None
    outcome = await ingest_compat(request, "posthog", header_key, batch=True)
    single_rejection(outcome)
    body = answer(outcome.result, outcome.inserted, outcome.duplicates)
    return json_response({"status": 1, **body})
