"""The log handler: records reach the stream as JSON lines, in order, from the writer thread;
a full queue drops and counts instead of waiting; closing writes everything queued."""

from __future__ import annotations

import io
import json
import logging

from analytics.runtime.logs import DroppingQueueHandler, JsonFormatter, JsonLines


def _handler(capacity: int) -> tuple[DroppingQueueHandler, io.StringIO]:
    out = io.StringIO()
    stream = JsonLines(out)
    stream.setFormatter(JsonFormatter())
    return DroppingQueueHandler(stream, capacity), out


def _record(msg: str, *args: object, level: int = logging.INFO, **extra: object):
    record = logging.LogRecord("t", level, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_records_are_written_in_order_with_their_fields_and_flushed_on_close():
    handler, out = _handler(100)
    items = ["a"]
    handler.emit(_record("first %s", items, request_id="r1"))
    items.append("changed later")  # the message was merged when the record was handed over
    for i in range(50):
        handler.emit(_record("n", n=i))
    handler.close()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["msg"] == "first ['a']" and lines[0]["request_id"] == "r1"
    assert [line["n"] for line in lines[1:]] == list(range(50))
    assert not handler.thread.is_alive()


def test_a_full_queue_drops_and_counts_rather_than_waiting():
    handler, out = _handler(10)
    handler.stopping = True  # the writer thread is stopped: nothing drains meanwhile
    handler.wake.set()
    handler.thread.join(timeout=5)
    before = DroppingQueueHandler.dropped
    for i in range(25):
        handler.emit(_record("n", n=i))
    assert DroppingQueueHandler.dropped - before == 15
    handler.drain()
    assert [json.loads(line)["n"] for line in out.getvalue().splitlines()] == list(range(10))


def test_a_warning_wakes_the_writer_at_once():
    handler, out = _handler(100)
    handler.FLUSH_S = 60.0  # only the wake-up can write it within the test
    handler.wake.set()  # the thread may be in a wait with the old interval: end it
    handler.emit(_record("careful", level=logging.WARNING))
    for _ in range(500):
        if out.getvalue():
            break
        handler.thread.join(timeout=0.01)
    assert json.loads(out.getvalue())["msg"] == "careful"
    handler.close()
