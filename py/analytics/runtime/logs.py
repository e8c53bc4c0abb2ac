"""Structured logs: one JSON object per line, extra fields included.

`log.info("access", extra={"request_id": ..., "timings_ms": {...}})` becomes
`{"ts": ..., "level": "info", "logger": ..., "msg": "access", "request_id": ..., ...}`.

Writing to stderr can block (a full pipe, a slow log collector), and logging is synchronous:
called on the event loop, a blocked write would stall every request. So records only go
into a bounded in-memory queue on the loop; a writer thread formats and writes them in
batches. When the queue is full, records are dropped and counted rather than waiting.
"""

from __future__ import annotations

import atexit
import collections
import logging
import sys
import threading
import time

import orjson

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class DroppingQueueHandler(logging.Handler):
    """Never blocks, and costs the loop one `deque.append` per record: a writer thread wakes
    every `FLUSH_S` (at once for a warning or worse), formats what accumulated and writes it
    in one call. A record that does not fit in `capacity` is dropped and counted.

    Not `logging.handlers.QueueHandler`: its `queue.Queue` takes a lock and notifies the
    listener thread for every record, so each access line woke a thread that then competed
    with the loop for the GIL (6-7 % of the server's samples at 750 requests/s, most of it
    in `Condition.notify`). Records are handed over as they are: the message is merged with
    its arguments here, so a mutable argument cannot change before the thread formats it.
    """

    dropped = 0
    #: How long a record may wait in memory before it is written, in seconds.
    FLUSH_S = 0.05

    def __init__(self, stream: logging.Handler, capacity: int) -> None:
        super().__init__()
        self.stream = stream
        self.capacity = capacity
        self.records: collections.deque[logging.LogRecord] = collections.deque()
        self.wake = threading.Event()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="log writer", daemon=True)
        self.thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.records) >= self.capacity:
            DroppingQueueHandler.dropped += 1
            return
        if record.args:
            record.msg, record.args = record.getMessage(), None
        self.records.append(record)
        if record.levelno >= logging.WARNING:
            self.wake.set()

    def _run(self) -> None:
        while not self.stopping:
            self.wake.wait(self.FLUSH_S)
            self.wake.clear()
            self.drain()
        self.drain()

    def drain(self) -> None:
        """Formats and writes every record queued so far (in the writer thread, or at exit)."""
        records = self.records
        while records:
            batch = [records.popleft() for _ in range(min(len(records), 1000))]
            self.stream.write_all(batch)

    def close(self) -> None:
        """Stops the writer thread after it wrote everything queued."""
        if not self.stopping:
            self.stopping = True
            self.wake.set()
            self.thread.join(timeout=5)
        super().close()


class JsonLines(logging.StreamHandler):
    """Writes a batch of records as JSON lines in one write and one flush."""

    def write_all(self, records: list[logging.LogRecord]) -> None:
        lines = []
        for record in records:
            try:
                lines.append(self.format(record))
            except Exception:  # a bad record must not stop the writer thread
                self.handleError(record)
        if lines:
            try:
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
            except Exception:  # as logging's own handlers do
                self.handleError(records[-1])


_handler: DroppingQueueHandler | None = None


#: Libraries whose INFO records are their own chatter: pgserver logs every pg_ctl command
#: and its output, which buried `serve`'s start-up lines (the demo keys among them).
QUIET = ("pgserver",)


def configure_logging(level: str = "INFO", capacity: int = 10_000) -> None:
    """JSON lines on stderr, written by a writer thread, for everything reaching the root
    logger. Idempotent; the writer thread stops at interpreter exit after flushing."""
    global _handler
    if _handler is not None:
        return
    stream = JsonLines(sys.stderr)
    stream.setFormatter(JsonFormatter())
    _handler = DroppingQueueHandler(stream, capacity)
    root = logging.getLogger()
    root.handlers[:] = [_handler]
    root.setLevel(level.upper())
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    atexit.register(_handler.close)
