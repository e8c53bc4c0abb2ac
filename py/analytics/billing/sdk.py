"""The billing vendor's Python SDK: a synchronous, blocking HTTP client.

THIS CLIENT BLOCKS. Every method waits on the network in the calling thread, for up to about
`timeout_s * (retries + 1)` plus backoff. Call it from worker threads, never from an event
loop (in this service: only through the offload helpers, under the `billing_sdk` limiter).

One `BillingClient` may be shared by several threads at once: its only state is a urllib3
`PoolManager`, which is thread-safe. Size `pool_size` to the number of threads that call it,
so that each of them can keep a connection alive.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType

import urllib3
from urllib3.exceptions import HTTPError
from urllib3.util import Retry, Timeout

USAGE_PATH = "/v1/usage"
# Statuses worth another attempt: billing overloaded or briefly down.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class BillingError(Exception):
    """A usage notification that failed after the client's own retries.

    `retryable` says whether sending the same call again later (same idempotency key) may
    succeed: True for connection errors, timeouts, 429 and 5xx; False for other 4xx, including
    409 (the idempotency key was already used with a different body). `status` is the last
    HTTP status, or None if no response was received.
    """

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


@dataclass(frozen=True, slots=True)
class UsageReceipt:
    """Billing's answer: `accepted` (billing holds this usage); `duplicate` (it already did:
    the idempotency key was seen before with the same body and was not counted again)."""

    accepted: bool
    duplicate: bool


class BillingClient:
    """Blocking client of the billing service's usage API.

    `timeout_s` bounds each attempt (connect plus wait for the response; urllib3 applies it
    per socket read). Connection errors, timeouts, 429 and 5xx are retried up to `retries` times
    with urllib3's exponential backoff (no wait before the first retry, then `backoff_s` * 2,
    * 4, ... capped at 1 s); a `Retry-After` header is ignored so a call's duration stays
    bounded. Retrying a POST is safe because every call carries an idempotency key.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str = "",
        timeout_s: float = 2.0,
        retries: int = 2,
        backoff_s: float = 0.05,
        pool_size: int = 8,
    ) -> None:
        self._url = base_url.rstrip("/") + USAGE_PATH
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        retry = Retry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            other=retries,
            redirect=False,
            allowed_methods=None,  # POST too: idempotency keys make retries safe
            status_forcelist=RETRY_STATUSES,
            backoff_factor=backoff_s,
            backoff_max=1.0,
            raise_on_status=False,  # hand back the last response; mapped below
            respect_retry_after_header=False,
        )
        self._pool = urllib3.PoolManager(
            num_pools=4, maxsize=pool_size, retries=retry, timeout=Timeout(total=timeout_s)
        )

    def notify_usage(
        self,
        customer_id: int | str,
        count: int,
        window_start: datetime,
        window_end: datetime,
        idempotency_key: str,
    ) -> UsageReceipt:
        """Report `count` usage units of `customer_id` in [window_start, window_end). BLOCKS.

        Sending the same `idempotency_key` with the same body again is answered as a duplicate
        and not counted twice; with a different body it fails (409, not retryable).
        Raises `BillingError` once the client's retries are spent, and `ValueError` for
        arguments billing would reject (naive datetimes, negative count, empty key).
        """
        if window_start.tzinfo is None or window_end.tzinfo is None:
            raise ValueError("window_start and window_end must be timezone-aware")
        if count < 0:
            raise ValueError("count must be >= 0")
        if not idempotency_key:
            raise ValueError("idempotency_key must not be empty")
        body = {
            "customer_id": customer_id,
            "count": count,
            "window_start": window_start.isoformat(),
            "window_end": window_end.isoformat(),
        }
        try:
            response = self._pool.request(
                "POST",
                self._url,
                body=json.dumps(body).encode(),
                headers={**self._headers, "Idempotency-Key": idempotency_key},
            )
        except HTTPError as e:  # connection refused/reset, timeouts, retries exhausted
            reason = getattr(e, "reason", None) or e
            raise BillingError(f"billing unreachable: {reason}", retryable=True) from e
        return _receipt(response.status, response.data)

    def close(self) -> None:
        """Close pooled connections. The client stays usable; it reconnects on demand."""
        self._pool.clear()

    def __enter__(self) -> BillingClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _receipt(status: int, data: bytes) -> UsageReceipt:
    """Map billing's final response to a receipt or a `BillingError`."""
    detail = data[:200].decode("utf-8", "replace")
    if status == 200:
        try:
            payload = json.loads(data)
            return UsageReceipt(
                accepted=bool(payload.get("accepted", True)),
                duplicate=bool(payload.get("duplicate", False)),
            )
        except (ValueError, AttributeError) as e:
            # The usage may have been recorded; resending with the same key is safe.
            raise BillingError(f"malformed billing answer: {detail!r}", retryable=True) from e
    if status == 409:
        message = f"idempotency key reused with a different body: {detail}"
        raise BillingError(message, retryable=False, status=status)
    retryable = status in RETRY_STATUSES
    raise BillingError(f"billing answered {status}: {detail}", retryable=retryable, status=status)
