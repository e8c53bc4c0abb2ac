"""The loop and commit figures of a step from two Prometheus scrapes of `/metrics`.

A step's loop lag p99 is the quantile of what the lag histogram observed between the scrapes
(bucket deltas, with Prometheus' estimate: `analytics.runtime.histogram.bucket_quantile`);
its stalls are the delta of the stall counter; its commits the delta of the rows-per-commit
histogram's count (and its rows, of the sum). Series are summed over their other labels
(workers, routes), so a multi-worker server reads as one.
"""

from __future__ import annotations

from collections.abc import Mapping

from analytics.runtime.histogram import bucket_quantile

Samples = Mapping[str, list[tuple[dict[str, str], float]]]

LAG = "analytics_loop_lag_seconds"
STALLS = "analytics_loop_stalls_total"
COMMIT_ROWS = "analytics_writer_batch_rows"


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples of a Prometheus exposition, by sample name (`x_bucket`, `x_total`, ...)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def histogram_buckets(samples: Samples, name: str) -> dict[float, float]:
    """Cumulative counts by upper bound (`le`) of histogram `name`, summed over its other
    labels (workers, routes); empty if the server does not export it."""
    out: dict[float, float] = {}
    for labels, value in samples.get(f"{name}_bucket", []):
        le = float(labels["le"])
        out[le] = out.get(le, 0.0) + value
    return out


def counter_value(samples: Samples, name: str) -> float | None:
    """The sum of counter `name` over its labels; None if absent."""
    values = samples.get(name if name.endswith("_total") else f"{name}_total")
    return None if values is None else sum(v for _, v in values)


def histogram_totals(samples: Samples, name: str) -> tuple[float, float] | None:
    """(count, sum) of histogram `name`, summed over its labels; None if absent."""
    counts = samples.get(f"{name}_count")
    if counts is None:
        return None
    return sum(v for _, v in counts), sum(v for _, v in samples.get(f"{name}_sum", []))


def bucket_delta(before: Mapping[float, float], after: Mapping[float, float]) -> dict[float, float]:
    """What a histogram observed between two scrapes (a bucket new in `after` counts whole)."""
    return {le: after[le] - before.get(le, 0.0) for le in after}


def loop_figures(before: str, after: str) -> tuple[float | None, int | None]:
    """(loop lag p99 in seconds, stalls) between two `/metrics` scrapes: the p99 of the
    `analytics_loop_lag_seconds` bucket deltas and the `analytics_loop_stalls_total` delta.
    Both None when the lag histogram saw no heartbeat in between (no watchdog running: a
    stall count of 0 would then mean nothing)."""
    b, a = parse_metrics(before), parse_metrics(after)
    delta = bucket_delta(histogram_buckets(b, LAG), histogram_buckets(a, LAG))
    p99 = bucket_quantile(0.99, delta)
    if p99 is None:
        return None, None
    stalls_after = counter_value(a, STALLS)
    if stalls_after is None:
        return p99, None
    return p99, round(stalls_after - (counter_value(b, STALLS) or 0.0))


def commit_figures(before: str, after: str) -> tuple[int | None, float | None]:
    """(commits, mean rows per commit) between two `/metrics` scrapes, from the delta of the
    `analytics_writer_batch_rows` histogram; (None, None) when the server exports none, and
    (0, None) when it committed nothing in between."""
    a = histogram_totals(parse_metrics(after), COMMIT_ROWS)
    if a is None:
        return None, None
    b = histogram_totals(parse_metrics(before), COMMIT_ROWS) or (0.0, 0.0)
    commits, rows = round(a[0] - b[0]), a[1] - b[1]
    return commits, (round(rows / commits, 1) if commits > 0 else None)
