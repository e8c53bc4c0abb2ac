"""Retrying producers: threads that post batches with stable event ids until acknowledged.

Each producer paces itself to `rate` batches per second (never bursting to catch up), builds
a batch whose every event carries an `event_id` unique to the run, and sends it until a 2xx
comes back: on a connection error, a timeout, a 5xx or a 429 it records the error and sends
the very same body again after a short backoff (50 ms doubling to 500 ms; Retry-After is not
waited out, so the recovery time is measured to within about half a second). Any other 4xx
is final: it is a bug of the service or of this tool, recorded and not retried. With `copies`
above 1 each batch is sent by that many threads at once (a random number in the range per
batch), released together by a barrier: concurrent retries of the same ids.

`Load.stop` ends intake; a producer still retrying a batch keeps at it until the drain
deadline, then gives up on it (counted, never acknowledged). Every thread is joined.
"""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx2 as httpx

from benches.chaos.ledger import Ledger

PATHS = ("/", "/pricing", "/docs", "/blog", "/signup")
BACKOFF_S = (0.05, 0.5)
#: A request longer than this is a timeout (the server answers within its 2 s deadline).
REQUEST_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Batch:
    key: str
    ids: list[str]
    body: bytes


def make_batch(name: str, key: str, size: int, now_ms: int) -> Batch:
    """`size` events named `name` with ids `<key>-<i>`; the body is fixed once built, so a
    retry is byte for byte the same request."""
    ids = [f"{key}-{i}" for i in range(size)]
    events = [
        {"name": name, "event_id": eid, "ts": now_ms, "properties": {"path": PATHS[i % 5]}}
        for i, eid in enumerate(ids)
    ]
    return Batch(key, ids, json.dumps({"events": events}).encode())


class Load:
    """`producers` threads posting batches of `batch` events named `name` to `base_url`."""

    def __init__(
        self,
        base_url: str,
        write_key: str,
        name: str,
        ledger: Ledger,
        *,
        producers: int = 4,
        batch: int = 25,
        rate: float = 10.0,
        copies: tuple[int, int] = (1, 1),
        seed: int = 0,
    ) -> None:
        self.base_url, self.name, self.ledger = base_url, name, ledger
        self.headers = {"Authorization": f"Bearer {write_key}", "Content-Type": "application/json"}
        self.batch, self.rate, self.copies = batch, rate, copies
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._stop = threading.Event()
        self._give_up_at = float("inf")
        self._threads = [
            threading.Thread(target=self._produce, args=(i,), name=f"producer {i}", daemon=True)
            for i in range(producers)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, drain_s: float) -> None:
        """Stop intake; batches still unacknowledged get `drain_s` more seconds of retries.
        Returns once every producer has finished (within about `drain_s` + a request)."""
        self._give_up_at = time.monotonic() + drain_s
        self._stop.set()
        for thread in self._threads:
            thread.join(drain_s + REQUEST_TIMEOUT_S + 5)

    def _client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=REQUEST_TIMEOUT_S)

    def _produce(self, index: int) -> None:
        slots = self.copies[1]
        clients = [self._client() for _ in range(slots)]
        pool = ThreadPoolExecutor(slots - 1, f"copies {index}") if slots > 1 else None
        try:
            seq, next_at = 0, time.monotonic()
            while not self._stop.wait(max(0.0, next_at - time.monotonic())):
                next_at = max(next_at + 1 / self.rate, time.monotonic())
                key = f"{self.name}-p{index}-{seq}"
                seq += 1
                batch = make_batch(self.name, key, self.batch, int(time.time() * 1000))
                self.ledger.offer(key, len(batch.ids))
                with self._rng_lock:
                    n = self._rng.randint(*self.copies)
                if n == 1 or pool is None:
                    self._deliver(clients[0], batch)
                    continue
                barrier = threading.Barrier(n)
                others = [
                    pool.submit(self._deliver, clients[c], batch, barrier) for c in range(1, n)
                ]
                self._deliver(clients[0], batch, barrier)
                for f in others:
                    f.result()
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
            for client in clients:
                client.close()

    def _deliver(
        self, client: httpx.Client, batch: Batch, barrier: threading.Barrier | None = None
    ) -> bool:
        """Send `batch` until a 2xx, a final 4xx, or the drain deadline; True if acked."""
        if barrier is not None:
            try:
                barrier.wait(timeout=5)
            except threading.BrokenBarrierError:
                pass  # a sibling is late: send anyway, just not in lockstep
        backoff = BACKOFF_S[0]
        while True:
            try:
                r = client.post("/v1/batch", content=batch.body, headers=self.headers)
            except httpx.TimeoutException:
                status = "timeout"
            except httpx.TransportError:
                status = "conn"
            else:
                if 200 <= r.status_code < 300:
                    self._record_ok(batch, r.json())
                    return True
                status = str(r.status_code)
                if r.status_code < 500 and r.status_code != 429:
                    self.ledger.error(status)
                    self.ledger.give_up()
                    return False
            self.ledger.error(status)
            if time.monotonic() >= self._give_up_at:
                self.ledger.give_up()
                return False
            time.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_S[1])

    def _record_ok(self, batch: Batch, answer: dict) -> None:
        rejected = {r["index"] for r in answer.get("rejected", [])}
        ids = [eid for i, eid in enumerate(batch.ids) if i not in rejected]
        self.ledger.ok(
            batch.key,
            ids,
            answer["accepted"],
            answer["duplicates"],
            time.monotonic(),
            rejected=len(rejected),
        )
