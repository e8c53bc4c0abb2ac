"""The harness's own HTTP client to the server under test (stdlib, 127.0.0.1 only).

k6 makes the load; this makes the few requests around it (readiness, `/metrics` and
`/debug/stalls` scrapes, the freshness probes). Blocking, with a timeout on every request.
"""

from __future__ import annotations

import contextlib
import http.client
import json
from typing import Any


class Http:
    """A keep-alive HTTP/1.1 client to 127.0.0.1, reconnecting after an error."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port, self.timeout = port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, bytes]:
        """(status, body); raises OSError or HTTPException (and drops the connection)."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            self.conn.request(method, path, body=body, headers=headers or {})
            r = self.conn.getresponse()
            return r.status, r.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def scrape(port: int, path: str) -> tuple[int, bytes] | None:
    """One GET on a fresh connection; None when there is no answer."""
    client = Http(port, timeout=10)
    try:
        return client.request("GET", path, None, {"X-Scenario": "loadtest_scrape"})
    except (OSError, http.client.HTTPException):
        return None
    finally:
        client.close()


def scrape_metrics(port: int) -> str:
    """The `/metrics` exposition, or "" when the server does not answer 200."""
    got = scrape(port, "/metrics")
    return got[1].decode("utf-8", "replace") if got and got[0] == 200 else ""


def scrape_stalls(port: int) -> list[dict[str, Any]] | None:
    """The stall groups of `/debug/stalls`, or None when the server has no such endpoint."""
    got = scrape(port, "/debug/stalls")
    if not got or got[0] != 200:
        return None
    with contextlib.suppress(ValueError):
        return json.loads(got[1]).get("groups", [])
    return None
