"""The group-commit writer's backpressure estimate (pure functions, no database)."""

from __future__ import annotations

from analytics.pipeline.writer import (
    BLIND_RETRY_AFTER_S,
    MAX_RETRY_AFTER_S,
    commit_rate,
    retry_after,
)


def test_commit_rate_counts_only_recent_commits():
    commits = [(0.0, 10_000), (9.0, 1_000), (10.0, 1_000)]
    # The commit at t=0 is older than the window; two commits of 1,000 rows in 1 s, but a
    # span under half a second counts as half a second.
    assert commit_rate(commits, now=10.0) == 2_000 / 1.0
    assert commit_rate([(10.0, 500)], now=10.0) == 500 / 0.5
    assert commit_rate(commits, now=100.0) is None


def test_retry_after_is_the_time_to_commit_what_is_queued():
    recent = [(9.0, 2_000), (10.0, 2_000)]  # 4,000 rows/s
    assert retry_after(20_000, recent, now=10.0, saturation=1.0) == 5
    # A full inbox of small requests drains in well under a second: come back in 1 s...
    assert retry_after(256, recent, now=10.0, saturation=1.0) == 1
    # ...and a slow database makes the wait longer, up to the cap.
    assert retry_after(20_000, [(10.0, 100)], now=10.0, saturation=1.0) == MAX_RETRY_AFTER_S


def test_retry_after_without_recent_commits_grows_with_the_fill():
    assert retry_after(5, [], now=10.0, saturation=0.1) < retry_after(5, [], 10.0, 1.0)
    assert retry_after(5, [], now=10.0, saturation=1.0) == BLIND_RETRY_AFTER_S
    assert retry_after(5, [], now=10.0, saturation=0.0) == 1
