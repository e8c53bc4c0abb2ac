"""The billing dispatcher: drains the usage outbox through the blocking vendor SDK.

Each cycle (1) claims closed usage windows from the outbox into dispatch rows, one per
customer and window, each with an idempotency key, in one transaction; (2) sends every
pending dispatch through `BillingClient.notify_usage`, which blocks, so it runs only in a
worker thread under the `billing_sdk` limiter; (3) marks a dispatch sent after billing
accepted it. A crash between (2) and (3) resends with the same key, which billing counts
once; billing being down only delays sending (exponential backoff, nothing is dropped), and
billing being slow only occupies `billing_sdk` threads, never the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import anyio

from analytics.billing.sdk import BillingClient, BillingError
from analytics.runtime import prometheus
from analytics.runtime.flags import Flags
from analytics.runtime.offload import Offload
from analytics.store import db, outbox

log = logging.getLogger(__name__)


class BillingDispatcher:
    def __init__(
        self,
        pool: db.Pool,
        offload: Offload,
        client: Callable[[], BillingClient],
        flags: Flags,
        *,
        window_s: float = 60.0,
        poll_s: float = 1.0,
        call_timeout_s: float = 5.0,
        max_backoff_s: float = 30.0,
        batch: int = 500,
    ) -> None:
        self._pool = pool
        self._offload = offload
        self._client_factory = client
        self._client: BillingClient | None = None
        self._flags = flags
        self._window = timedelta(seconds=window_s)
        self._poll_s = poll_s
        self._call_timeout_s = call_timeout_s
        self._max_backoff_s = max_backoff_s
        self._batch = batch

    async def run(self) -> None:
        """Dispatch until cancelled; pauses while the `billing_dispatch` flag is off."""
        backoff = self._poll_s
        try:
            while True:
                if not self._flags.enabled("billing_dispatch"):
                    await self._flags.changed.wait()
                    continue
                ok = await self.cycle()
                backoff = self._poll_s if ok else min(backoff * 2, self._max_backoff_s)
                with anyio.move_on_after(backoff):
                    await self._flags.changed.wait()
        finally:
            if self._client is not None:
                client, self._client = self._client, None
                with anyio.CancelScope(shield=True):
                    await self._offload.run("billing_sdk", client.close)

    async def cycle(self) -> bool:
        """Claim closed windows, send what is pending; False if any send failed."""
        now = datetime.now(UTC)
        cutoff = now - (now - datetime(1970, 1, 1, tzinfo=UTC)) % self._window
        await outbox.claim_windows(self._pool, cutoff, self._window, self._batch * 10, now)
        pending = await outbox.pending_dispatches(self._pool, self._batch)
        failures: list[BaseException] = []
        async with anyio.create_task_group() as tg:
            # Concurrency is bounded by the `billing_sdk` limiter inside `send`.
            for row in pending:
                tg.start_soon(self._send_one, row, failures)
        return not failures

    async def _send_one(self, row: db.Record, failures: list[BaseException]) -> None:
        try:
            await self.send(row)
        except (BillingError, TimeoutError, OSError) as e:
            prometheus.billing_failures.inc()
            # Refused for good (e.g. 409: the key was used for other usage): parked for an
            # operator, never retried in a loop and never deleted.
            parked = isinstance(e, BillingError) and not e.retryable
            if not parked:
                failures.append(e)
            log.warning(
                "billing call for dispatch %s failed%s: %r",
                row["dispatch_id"],
                " for good, parked" if parked else "",
                e,
            )
            await outbox.mark_failed(
                self._pool,
                row["customer_id"],
                row["dispatch_id"],
                repr(e),
                datetime.now(UTC),
                parked=parked,
            )

    async def send(self, row: db.Record) -> None:
        if self._client is None:
            self._client = self._client_factory()
        client = self._client
        prometheus.billing_calls.inc()
        with anyio.fail_after(self._call_timeout_s):
            await self._offload.run(
                "billing_sdk",
                client.notify_usage,
                row["customer_id"],
                row["count"],
                row["window_start"],
                row["window_end"],
                row["idempotency_key"],
            )
        await outbox.mark_sent(
            self._pool, row["customer_id"], row["dispatch_id"], datetime.now(UTC)
        )
