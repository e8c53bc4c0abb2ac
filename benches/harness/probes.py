"""Freshness probes: how long after its ack an event is counted by a query.

During a step a thread posts uniquely named events (signed like k6's, when the key signs)
and polls `/v1/metrics` until each one is counted; the time from the ack to that answer is
one freshness sample. A probe that gets no ack, or is not seen within the timeout, yields no
sample (the report shows k/n).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from analytics.normalize import sign
from analytics.store.bootstrap import CustomerKeys
from benches.harness.httpclient import Http


def probe_request(
    keys: CustomerKeys, scenario: str, name: str, now_s: float
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of probe event `name` sent at unix time `now_s`: the write key
    and, if it signs, `X-Signature` (`t=<secs>,v1=<hex>` over the exact body bytes, what
    the server's `verify_signature` checks)."""
    body = json.dumps(
        {"name": name, "event_id": name, "ts": int(now_s * 1000), "user_id": "probe", "value": 1}
    ).encode()
    headers = {
        "Authorization": f"Bearer {keys.write.key}",
        "Content-Type": "application/json",
        "X-Scenario": f"{scenario}_probe",
    }
    if keys.write.signing_secret:
        secret = keys.write.signing_secret.encode()  # the secret as printed is the HMAC key
        headers["X-Signature"] = sign(secret, body, int(now_s))
    return body, headers


def count_points(answer: Mapping[str, Any]) -> float:
    """The total of a `/v1/metrics` answer over every series and bucket."""
    return sum(p.get("value") or 0 for s in answer.get("series", ()) for p in s.get("points", ()))


class Prober(threading.Thread):
    """`count` probes spread over `span_s`, each bounded by `timeout_s`; `results` holds the
    freshness samples (seconds), `attempts` the probes sent. Setting `stop` ends it early."""

    def __init__(
        self,
        port: int,
        keys: CustomerKeys,
        scenario: str,
        count: int,
        span_s: float,
        timeout_s: float,
    ) -> None:
        super().__init__(name="freshness-probe", daemon=True)
        self.port, self.keys, self.scenario = port, keys, scenario
        self.count, self.span_s, self.timeout_s = count, span_s, timeout_s
        self.results: list[float] = []
        self.attempts = 0
        self.stop = threading.Event()

    def run(self) -> None:
        client = Http(self.port, timeout=self.timeout_s)
        start = time.monotonic()
        gap = max(self.span_s - 1.0, 0.5) / max(self.count, 1)
        try:
            for i in range(self.count):
                if self.stop.wait(max(0.0, start + 0.5 + i * gap - time.monotonic())):
                    return
                self.attempts += 1
                with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
                    fresh = self.probe(client)
                    if fresh is not None:
                        self.results.append(fresh)
        finally:
            client.close()

    def probe(self, client: Http) -> float | None:
        name = f"lt_probe_{uuid.uuid4().hex[:16]}"
        now_s = time.time()
        body, headers = probe_request(self.keys, self.scenario, name, now_s)
        status, _ = client.request("POST", "/v1/events", body, headers)
        if status != 200:
            return None
        acked = time.monotonic()
        since_ms = int(now_s * 1000) - 120_000
        query = f"/v1/metrics?event={quote(name)}&interval=minute&from={since_ms}"
        read = {
            "Authorization": f"Bearer {self.keys.read.key}",
            "X-Scenario": headers["X-Scenario"],
        }
        while time.monotonic() - acked < self.timeout_s and not self.stop.is_set():
            status, payload = client.request("GET", query, None, read)
            if status == 200 and count_points(json.loads(payload)) >= 1:
                return time.monotonic() - acked
            time.sleep(0.02)
        return None
