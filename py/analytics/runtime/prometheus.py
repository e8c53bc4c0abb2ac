"""Prometheus metrics (`GET /metrics`).

With several Hypercorn workers each worker is its own process, and a scrape reaches only
one of them. So `analytics serve` runs prometheus-client in multiprocess mode: every worker
writes its samples to memory-mapped files under `PROMETHEUS_MULTIPROC_DIR`, and whichever
worker answers a scrape aggregates all of them (counters and histograms summed; gauges
summed over live workers, or the max where a sum means nothing). Without that variable (tests,
a single embedded app) the ordinary in-process registry is used.

Gauges are set by the `metrics sampler` job every second (multiprocess mode has no
scrape-time callbacks); counters and histograms are updated where things happen.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

from analytics.runtime.histogram import BUCKETS

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
LAG_BUCKETS = BUCKETS  # the watchdog's own histograms' bounds: the same figures, one set

http_requests = Counter(
    "analytics_http_requests_total",
    "HTTP requests answered",
    ["route", "method", "status", "scenario"],
)
http_duration = Histogram(
    "analytics_http_request_duration_seconds",
    "HTTP request latency, from the first byte of the request to the end of the response",
    ["route", "method", "scenario"],
    buckets=LATENCY_BUCKETS,
)
http_in_flight = Gauge(
    "analytics_http_requests_in_flight", "Requests being served", multiprocess_mode="livesum"
)
rejections = Counter(
    "analytics_rejections_total", "Refused requests and events by error code", ["code"]
)
events_accepted = Counter("analytics_events_accepted_total", "Events newly stored")
events_duplicate = Counter("analytics_events_duplicate_total", "Valid events already stored")

loop_lag = Histogram(
    "analytics_loop_lag_seconds", "Lateness of every watchdog heartbeat tick", buckets=LAG_BUCKETS
)
gc_pause = Histogram(
    "analytics_gc_pause_seconds",
    "Every garbage-collector pass in a worker, by generation",
    ["generation"],
    buckets=LAG_BUCKETS,
)
loop_stalls = Counter("analytics_loop_stalls_total", "Event-loop stalls over the threshold")
loop_stall_duration = Histogram(
    "analytics_loop_stall_duration_seconds",
    "Full duration of every event-loop stall",
    buckets=LAG_BUCKETS,
)
loop_stalled = Gauge(
    "analytics_loop_stall_in_progress", "1 while a stall is in progress", multiprocess_mode="max"
)

limiter_capacity = Gauge(
    "analytics_limiter_capacity",
    "Tokens of a named limiter",
    ["limiter"],
    multiprocess_mode="livesum",
)
limiter_borrowed = Gauge(
    "analytics_limiter_borrowed",
    "Tokens in use (threads running blocking work)",
    ["limiter"],
    multiprocess_mode="livesum",
)
limiter_waiting = Gauge(
    "analytics_limiter_waiting",
    "Tasks waiting for a token",
    ["limiter"],
    multiprocess_mode="livesum",
)

writer_inbox_depth = Gauge(
    "analytics_writer_inbox_depth", "Requests waiting for the writer", multiprocess_mode="livesum"
)
writer_inbox_capacity = Gauge(
    "analytics_writer_inbox_capacity", "Writer inbox size", multiprocess_mode="livesum"
)
writer_batch_rows = Histogram(
    "analytics_writer_batch_rows",
    "Rows per group commit",
    buckets=(1, 5, 10, 50, 100, 500, 1000, 5000, 10000, 50000),
)
writer_commit_seconds = Histogram(
    "analytics_writer_commit_seconds", "Group commit latency", buckets=LATENCY_BUCKETS
)
writer_commit_failures = Counter(
    "analytics_writer_commit_failures_total", "Group commits that failed (nothing stored)"
)

billing_outbox_pending = Gauge(
    "analytics_billing_outbox_pending",
    "Usage windows not yet accepted by billing (outbox rows plus unsent dispatches)",
    multiprocess_mode="max",
)
rollup_folded = Counter(
    "analytics_rollup_events_folded_total", "Committed events the rollup job folded"
)
rollup_fold_seconds = Histogram(
    "analytics_rollup_fold_seconds", "Rollup job transaction latency", buckets=LATENCY_BUCKETS
)
rollup_rebuilt_hours = Counter(
    "analytics_rollup_hours_rebuilt_total",
    "Deferred hours (per customer and event name) the rollup job rebuilt from raw events",
)
billing_calls = Counter("analytics_billing_calls_total", "Calls to the billing SDK")
billing_failures = Counter("analytics_billing_failures_total", "Failed billing SDK calls")

log_records_dropped = Counter(
    "analytics_log_records_dropped_total", "Log records dropped because the log queue was full"
)

cache_hits = Counter("analytics_cache_hits_total", "Metrics queries served from the cache")
cache_misses = Counter("analytics_cache_misses_total", "Cacheable metrics queries computed")


def render() -> tuple[bytes, str]:
    """The exposition text for a scrape, aggregated over workers in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def worker_exited(pid: int) -> None:
    """Drop a dead worker's live gauges (multiprocess mode only)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        _multiprocess.mark_process_dead(pid)
