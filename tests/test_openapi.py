"""The OpenAPI document: generated from the app's routes, valid OpenAPI 3.1, complete (every
route, every status and error code), served with a packaged viewer at /docs; and the
README's limits are the code's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from openapi_spec_validator import validate
from starlette.routing import Route
from starlette.testclient import TestClient

from analytics.api.codes import ALL_CODES, API_CODES
from analytics.api.contract import operation
from analytics.api.openapi import build_document, undeclared
from analytics.app import create_app
from analytics.normalize import ERROR_CODES, Limits
from analytics.pipeline.services import ingest_limits
from analytics.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def _document(app, settings: Settings) -> dict:
    return build_document(app.routes, settings, *ingest_limits(settings))


@pytest.fixture(scope="module")
def app_and_doc():
    settings = Settings(database_url="postgresql://unused/db")
    app = create_app(settings)
    return app, _document(app, settings)


def test_the_document_is_valid_openapi_3_1(app_and_doc) -> None:
    _, doc = app_and_doc
    validate(doc)
    assert doc["openapi"].startswith("3.1")


def test_every_route_of_the_app_is_declared_and_in_the_document(app_and_doc) -> None:
    """A route added without an `@operation` declaration fails here (CONTRIBUTING "An
    endpoint" says how to declare one)."""
    app, doc = app_and_doc
    assert undeclared(app.routes) == []
    for route in app.routes:
        assert isinstance(route, Route)
        for method in (route.methods or set()) - {"HEAD"}:
            assert method.lower() in doc["paths"][route.path], f"{method} {route.path}"


def test_a_route_without_a_declaration_is_reported() -> None:
    async def handler(request):  # pragma: no cover - never called
        raise AssertionError

    async def declared_handler(request):  # pragma: no cover
        raise AssertionError

    routes = [
        Route("/v1/track", handler, methods=["POST"]),
        Route("/capture", operation("POST", "Capture")(declared_handler), methods=["POST", "GET"]),
    ]
    assert undeclared(routes) == ["POST /v1/track", "GET /capture"]


def test_every_error_code_and_status_appears(app_and_doc) -> None:
    _, doc = app_and_doc
    enum = doc["components"]["schemas"]["ErrorCode"]
    assert set(enum["enum"]) == set(ALL_CODES)
    assert {c: v["status"] for c, v in enum["x-codes"].items()} == dict(ALL_CODES)
    statuses = {
        status
        for item in doc["paths"].values()
        for op in item.values()
        for status in op["responses"]
    }
    declared_codes = {
        code
        for item in doc["paths"].values()
        for op in item.values()
        for response in op["responses"].values()
        for content in response.get("content", {}).values()
        for code in content["schema"].get("properties", {}).get("code", {}).get("enum", [])
    }
    # Every code but the route-independent 404 is answered by some operation.
    assert set(ALL_CODES) - declared_codes <= {"not_found", "http_error"}
    assert {str(s) for s in ALL_CODES.values()} - statuses <= {"404"}
    # Each operation's statuses hold exactly the codes of that status.
    for item in doc["paths"].values():
        for op in item.values():
            for status, response in op["responses"].items():
                for content in response.get("content", {}).values():
                    for code in (
                        content["schema"].get("properties", {}).get("code", {}).get("enum", [])
                    ):
                        assert str(ALL_CODES[code]) == status, code


def test_every_code_the_source_spells_is_registered() -> None:
    """A code raised in the package must be in a registry, so it reaches the document."""
    spelled = set()
    patterns = (
        r'ApiError\(\s*\d{3},\s*"([a-z_]+)"',
        r'ApiError\.of\(\s*"([a-z_]+)"',
        r'error_response\(\s*\d{3},\s*"([a-z_]+)"',
        r'_refuse\(\s*scope,\s*send,\s*\d{3},\s*"([a-z_]+)"',
        r'"code":\s*"([a-z_]+)"',
    )
    for path in (ROOT / "py" / "analytics").rglob("*.py"):
        text = path.read_text()
        for pattern in patterns:
            spelled.update(re.findall(pattern, text))
    assert len(spelled) > 30
    assert spelled - set(ALL_CODES) == set()
    # The HTTP layer's registry states each status once, the normalizer's the others.
    assert not set(API_CODES) & {c for c, _ in ERROR_CODES}


def test_schemas_carry_the_limits_the_code_uses(app_and_doc) -> None:
    _, doc = app_and_doc
    schemas = doc["components"]["schemas"]
    limits = Limits()
    event = schemas["Event"]
    assert event["properties"]["name"]["maxLength"] == limits.max_name_chars
    assert event["properties"]["event_id"]["maxLength"] == limits.max_event_id_chars
    assert event["properties"]["properties"]["maxProperties"] == limits.max_properties
    assert str(limits.max_event_bytes) in event["description"]
    assert schemas["Batch"]["properties"]["events"]["maxItems"] == Settings().max_batch_events
    metrics = doc["paths"]["/v1/metrics"]["get"]
    assert [p["name"] for p in metrics["parameters"]] == [
        "event", "from", "to", "interval", "group_by", "filter", "agg", "limit"
    ]  # fmt: skip


def test_the_readme_states_the_limits_of_the_registry() -> None:
    readme = (ROOT / "README.md").read_text()
    api = readme[readme.index("## API (v1)") :]
    api = api[: api.index("\n## ", 5)]
    limits, settings = Limits(), Settings()
    assert f"≤ {limits.max_event_bytes // 1024} KiB" in api
    assert f"≤ {settings.max_event_body_bytes // (1 << 20)} MiB" in api
    assert f"≤ {settings.max_batch_body_bytes // (1 << 20)} MiB decompressed" in api
    assert f"≤ {settings.max_batch_events:,} events" in api


def test_openapi_json_and_docs_are_served(fresh_dsn: str) -> None:
    with TestClient(create_app(Settings(database_url=fresh_dsn))) as client:
        r = client.get("/openapi.json")
        assert r.status_code == 200
        validate(r.json())
        docs = client.get("/docs")
        assert docs.status_code == 200
        assert docs.headers["content-type"].startswith("text/html")
        # Self-contained: no script, style or font from anywhere else.
        assert not re.search(r"(src|href)=\"(https?:)?//", docs.text)
        assert 'fetch("openapi.json")' in docs.text
        assert "connect-src 'self'" in docs.headers["content-security-policy"]
