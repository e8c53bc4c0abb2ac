"""Structured logs: one JSON object per line, extra fields included.

`log.info("access", extra={"request_id": ..., "timings_ms": {...}})` becomes
`{"ts": ..., "level": "info", "logger": ..., "msg": "access", "request_id": ..., ...}`.

Writing to stderr can block (a full pipe, a slow log collector), and logging is synchronous:
called on the event loop, a blocked write would stall every request. So records only go
into a bounded in-memory queue on the loop; a listener thread formats and writes them. When
the queue is full, records are dropped and counted rather than waiting.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys
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


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """Never blocks: a record that does not fit in the queue is dropped and counted."""

    dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            DroppingQueueHandler.dropped += 1


_listener: logging.handlers.QueueListener | None = None


#: Libraries whose INFO records are their own chatter: pgserver logs every pg_ctl command
#: and its output, which buried `serve`'s start-up lines (the demo keys among them).
QUIET = ("pgserver",)


def configure_logging(level: str = "INFO", capacity: int = 10_000) -> None:
    """JSON lines on stderr, written by a listener thread, for everything reaching the root
    logger. Idempotent; the listener thread stops at interpreter exit after flushing."""
    global _listener
    if _listener is not None:
        return
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(JsonFormatter())
    records: queue.Queue[logging.LogRecord] = queue.Queue(capacity)
    root = logging.getLogger()
    root.handlers[:] = [DroppingQueueHandler(records)]
    root.setLevel(level.upper())
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    _listener = logging.handlers.QueueListener(records, stream, respect_handler_level=False)
    _listener.start()
    atexit.register(_listener.stop)
