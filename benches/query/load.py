"""Loading a dataset through the real write path: `POST /v1/batch` from a few connections.

Two rates: acknowledged (the events/s the write path commits; what a producer sees), and
folded (the events/s until the rollup job, off the ack path, has added them all to the
rollups: queries stay exact meanwhile, reading the unfolded events raw, but slower).

`connections` threads each keep one keep-alive connection (the harness's stdlib client) and
take the next batch number from a shared counter, generate its body and post it. A batch is
acknowledged by a 200 (`accepted` + `duplicates` = its size); a 503 (writer full) or 504
(the request deadline passed while the commit went on) is retried with the same body after
a short pause, so it is counted once (the event ids dedup it); anything else stops the load.
Blocking (threads); the body generation holds the GIL for ~3 ms a batch, far under what one
connection waits for its commit.
"""

from __future__ import annotations

import http.client
import itertools
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import orjson

from benches.harness.httpclient import Http
from benches.query.dataset import Dataset

RETRY = (503, 504)


class LoadFailed(RuntimeError):
    pass


@dataclass
class LoadResult:
    """What one load did: events acknowledged (new + duplicates), wall time, retries."""

    label: str
    events: int
    accepted: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    connections: int = 0
    retries: Counter = field(default_factory=Counter)
    #: Seconds from the first send until the rollup job had folded every event (None: not
    #: waited for).
    folded_s: float | None = None

    @property
    def events_per_s(self) -> float:
        return (self.accepted + self.duplicates) / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {
            "label": self.label,
            "events": self.events,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.events_per_s, 1),
            "connections": self.connections,
            "retries": {str(k): v for k, v in self.retries.items()},
            "folded_s": None if self.folded_s is None else round(self.folded_s, 3),
            "folded_events_per_s": round(self.events / self.folded_s, 1) if self.folded_s else None,
        }


def load(
    port: int,
    write_key: str,
    dataset: Dataset,
    *,
    label: str,
    connections: int = 4,
    progress_every_s: float = 10.0,
    timeout_s: float = 30.0,
) -> LoadResult:
    """Post every batch of `dataset`; the wall time runs from the first send to the last ack."""
    result = LoadResult(label, dataset.events, connections=connections)
    numbers = itertools.count()
    lock = threading.Lock()
    stop = threading.Event()
    headers = {"Authorization": f"Bearer {write_key}", "Content-Type": "application/json"}

    def worker() -> None:
        client = Http(port, timeout=timeout_s)
        try:
            while not stop.is_set():
                with lock:
                    b = next(numbers)
                if b >= dataset.batches:
                    return
                body, n = dataset.batch_body(b)
                for attempt in itertools.count():
                    try:
                        status, answer = client.request("POST", "/v1/batch", body, headers)
                    except (OSError, http.client.HTTPException) as e:
                        status, answer = -1, str(e).encode()
                    if status == 200:
                        break
                    if (status not in RETRY and status != -1) or attempt >= 20:
                        raise LoadFailed(f"batch {b}: {status} {answer[:300]!r}")
                    with lock:
                        result.retries[status] += 1
                    time.sleep(min(0.05 * 2**attempt, 2.0))
                got = orjson.loads(answer)
                if got["rejected"] or got["accepted"] + got["duplicates"] != n:
                    raise LoadFailed(f"batch {b}: {got}")
                with lock:
                    result.accepted += got["accepted"]
                    result.duplicates += got["duplicates"]
        except BaseException:
            stop.set()
            raise
        finally:
            client.close()

    start = time.monotonic()
    with ThreadPoolExecutor(connections, thread_name_prefix=f"load-{label}") as pool:
        futures = [pool.submit(worker) for _ in range(connections)]
        next_report = start + progress_every_s
        while not all(f.done() for f in futures):
            time.sleep(0.1)
            if progress_every_s and time.monotonic() >= next_report:
                next_report += progress_every_s
                done = result.accepted + result.duplicates
                rate = done / (time.monotonic() - start)
                print(f"  {label}: {done:,}/{dataset.events:,} events, {rate:,.0f}/s", flush=True)
        for f in futures:
            f.result()
    result.seconds = time.monotonic() - start
    return result
