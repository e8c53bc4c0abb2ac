"""A producer's client for this service: `Client` (threads) and `AsyncClient` (any AnyIO loop).

`track()` never blocks and never raises for delivery: it gives the event an `event_id` (a
UUID, unless one is passed), encodes it and puts it in a bounded queue; when the queue is
full the event is dropped and counted (`stats.dropped`). One background thread sends what
is queued as `POST /v1/batch` bodies (at most `batch_size` events and ~4 MiB each), gzipped,
signed when the key has a signing secret, and retries a failed send with exponential backoff
(at least `Retry-After` on 429/503) until `max_retry_s` has passed. A retry sends the same
event ids, so the server counts each event once however often it is sent. `flush()` waits
until everything tracked before it was delivered or given up; `close()` flushes, and so
does interpreter exit for a client not closed.

Only the standard library and orjson (a dependency of the service already) are used: the
sender is `http.client` on its own thread, so the async client shares the same core and
only hands its waits (`flush`, `aclose`) to a worker thread (`runtime.offload`).
"""

from __future__ import annotations

import atexit
import gzip
import http.client
import logging
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from analytics.normalize import sign
from analytics.runtime.offload import Offload

log = logging.getLogger(__name__)

#: Statuses worth sending the same batch again for; any other 4xx is final.
RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})
#: The largest body sent (the server takes 5 MiB decompressed): room for the envelope.
MAX_BATCH_BYTES = 4 * 1024 * 1024


def signature_header(secret: str, body: bytes, t: int) -> str:
    """The `X-Signature` value for `body` (as sent: gzipped) signed at unix time `t`.

    The one place that knows how a printed signing secret becomes the HMAC key: the secret as
    printed, its UTF-8 bytes (`ansk_...`; a 64-hex secret from before migration 0005 is
    accepted the same way).
    """
    return sign(secret.encode(), body, t)


@dataclass(frozen=True)
class ClientStats:
    queued: int  # waiting to be sent
    accepted: int  # stored as new events
    duplicates: int  # already stored (a retry whose first attempt had landed)
    rejected: int  # refused by the server's rules (listed in its answer, logged)
    dropped: int  # not queued: the queue was full, or the client closed
    failed: int  # given up: a final error, or retried for max_retry_s
    retries: int  # sends repeated after a failure


class Client:
    """Sends events from any thread; see the module docstring."""

    def __init__(
        self,
        base_url: str,
        key: str,
        *,
        signing_secret: str | None = None,
        max_queue: int = 10_000,
        batch_size: int = 500,
        timeout_s: float = 10.0,
        max_retry_s: float = 300.0,
        max_backoff_s: float = 30.0,
        compress: bool = True,
        on_error: Callable[[Exception, int], None] | None = None,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"base_url must be http(s)://host[:port], not {base_url!r}")
        self._url = url
        self._path = url.path.rstrip("/") + "/v1/batch"
        self._key = key
        self._secret = signing_secret
        self._batch_size = max(1, min(batch_size, 5000))
        self._timeout_s = timeout_s
        self._max_retry_s = max_retry_s
        self._max_backoff_s = max_backoff_s
        self._compress = compress
        self._on_error = on_error
        self._queue: queue.Queue[bytes] = queue.Queue(max_queue)
        self._carry: bytes | None = None
        self._conn: http.client.HTTPConnection | None = None
        self._cond = threading.Condition()
        self._enqueued = self._done = 0
        self._counts = dict.fromkeys(
            ("accepted", "duplicates", "rejected", "dropped", "failed", "retries"), 0
        )
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="analytics-client", daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)

    # The producer's side.

    def track(
        self,
        name: str,
        *,
        properties: dict[str, Any] | None = None,
        user_id: str | int | None = None,
        value: float | None = None,
        ts: float | None = None,
        event_id: str | None = None,
    ) -> str | None:
        """Queues one event; returns its `event_id`, or None when it was dropped."""
        event_id = event_id or str(uuid.uuid4())
        event: dict[str, Any] = {
            "name": name,
            "event_id": event_id,
            "ts": int((time.time() if ts is None else ts) * 1000),
        }
        if user_id is not None:
            event["user_id"] = user_id
        if value is not None:
            event["value"] = value
        if properties:
            event["properties"] = properties
        encoded = orjson.dumps(event)
        with self._cond:
            if self._closing:
                self._counts["dropped"] += 1
                return None
            try:
                self._queue.put_nowait(encoded)
            except queue.Full:
                self._counts["dropped"] += 1
                return None
            self._enqueued += 1
        return event_id

    def flush(self, timeout_s: float | None = None) -> bool:
        """Waits until every event tracked so far was delivered or given up; False if
        `timeout_s` passed first."""
        with self._cond:
            target = self._enqueued
            return self._cond.wait_for(lambda: self._done >= target, timeout_s)

    def close(self, timeout_s: float | None = 30.0) -> bool:
        """Stops taking events and flushes (up to `timeout_s`); False if some were left."""
        atexit.unregister(self._at_exit)
        with self._cond:
            self._closing = True
        flushed = self.flush(timeout_s)
        self._thread.join(0 if not flushed else timeout_s)
        return flushed

    @property
    def stats(self) -> ClientStats:
        with self._cond:
            return ClientStats(queued=self._enqueued - self._done, **self._counts)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _at_exit(self) -> None:
        self.close(timeout_s=self._timeout_s)

    # The sender thread.

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch:
                try:
                    self._deliver(batch)
                except Exception:  # never let the sender die: count the batch as failed
                    log.exception("analytics client: sending a batch failed")
                    self._count("failed", len(batch))
                with self._cond:
                    self._done += len(batch)
                    self._cond.notify_all()
            elif self._closing:
                return

    def _next_batch(self) -> list[bytes]:
        """What is queued now, up to the batch caps (waits a little for the first event)."""
        batch, size = [], 0
        first = self._carry
        self._carry = None
        if first is None:
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                return batch
        batch.append(first)
        size += len(first)
        while len(batch) < self._batch_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if size + len(item) > MAX_BATCH_BYTES:
                self._carry = item
                break
            batch.append(item)
            size += len(item) + 1
        return batch

    def _deliver(self, batch: list[bytes]) -> None:
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                status, headers, answer = self._send(batch)
            except (OSError, http.client.HTTPException) as e:
                status, headers, answer, error = 0, {}, b"", e
            else:
                error = None
            if status == 200:
                result = orjson.loads(answer)
                self._count("accepted", result.get("accepted", 0))
                self._count("duplicates", result.get("duplicates", 0))
                if rejected := result.get("rejected"):
                    self._count("rejected", len(rejected))
                    log.warning(
                        "analytics: %d events rejected, first: %s", len(rejected), rejected[0]
                    )
                return
            error = error or RuntimeError(f"HTTP {status}: {answer[:300]!r}")
            retryable = status == 0 or status in RETRYABLE
            wait = self._backoff(attempt, headers.get("retry-after"))
            if not retryable or time.monotonic() + wait - started > self._max_retry_s:
                log.error("analytics: giving up on %d events: %s", len(batch), error)
                self._count("failed", len(batch))
                if self._on_error is not None:
                    self._on_error(error, len(batch))
                return
            attempt += 1
            self._count("retries", 1)
            time.sleep(wait)

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        wait = min(self._max_backoff_s, 0.1 * 2**attempt) * random.uniform(0.5, 1.0)
        if retry_after and retry_after.strip().isdigit():
            wait = max(wait, float(retry_after.strip()))
        return wait

    def _send(self, batch: list[bytes]) -> tuple[int, dict[str, str], bytes]:
        """One POST of `batch` (a new `sent_at` each attempt, for the skew correction)."""
        sent_at = str(int(time.time() * 1000)).encode()
        body = b'{"events":[' + b",".join(batch) + b'],"sent_at":' + sent_at + b"}"
        headers = {"Authorization": f"Bearer {self._key}", "Content-Type": "application/json"}
        if self._compress:
            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        if self._secret is not None:
            headers["X-Signature"] = signature_header(self._secret, body, int(time.time()))
        conn = self._connection()
        try:
            conn.request("POST", self._path, body, headers)
            response = conn.getresponse()
            answer = response.read()
        except BaseException:
            self._conn = None
            conn.close()
            raise
        if response.getheader("connection", "").lower() == "close":
            self._conn = None
            conn.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, answer

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = (
                http.client.HTTPSConnection
                if self._url.scheme == "https"
                else http.client.HTTPConnection
            )
            self._conn = cls(self._url.hostname or "", self._url.port, timeout=self._timeout_s)
        return self._conn

    def _count(self, what: str, n: int) -> None:
        with self._cond:
            self._counts[what] += n


class AsyncClient:
    """`Client` for async code: `track` is the same non-blocking call; the waits (`flush`,
    `aclose`) run on a worker thread under the `analytics_client` limiter."""

    def __init__(self, base_url: str, key: str, **options: Any) -> None:
        self._client = Client(base_url, key, **options)
        self._offload = Offload({"analytics_client": 1})

    def track(self, name: str, **fields: Any) -> str | None:
        """Queues one event without blocking; returns its `event_id`, or None if dropped."""
        return self._client.track(name, **fields)

    async def flush(self, timeout_s: float | None = None) -> bool:
        return await self._offload.run("analytics_client", self._client.flush, timeout_s)

    async def aclose(self, timeout_s: float | None = 30.0) -> bool:
        return await self._offload.run("analytics_client", self._client.close, timeout_s)

    @property
    def stats(self) -> ClientStats:
        return self._client.stats

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
