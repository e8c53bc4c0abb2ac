"""Settings, read once from the environment (`ANALYTICS_*`, plus `DATABASE_URL`).

Every knob has a production-sane default; tests and benchmarks override by keyword. Each field
is documented by the `#:` comment above it; `analytics settings` prints them all with their
values and where each came from (`sources`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

DEFAULT_DIMENSIONS = ("path", "referrer_host", "utm.source", "country", "browser")

#: Settings read from a variable other than `ANALYTICS_<FIELD>`: the names other tools use.
ENV_NAMES = {"database_url": "DATABASE_URL", "billing_url": "BILLING_URL", "citus_src": "CITUS_SRC"}


def env_name(field_name: str) -> str:
    """The environment variable a setting is read from."""
    return ENV_NAMES.get(field_name, f"ANALYTICS_{field_name.upper()}")


@dataclass(frozen=True)
class Settings:
    # Database.
    #: PostgreSQL DSN. Empty: an embedded PostgreSQL (pgserver) runs under `data_dir`.
    database_url: str = ""
    #: A direct (non-pooled) DSN for LISTEN and the group-commit writer's connections (they
    #: keep session state: a temp staging table); defaults to database_url.
    direct_database_url: str = ""
    #: Where the embedded PostgreSQL keeps its data (`<data_dir>/pg`) and the workers their
    #: Prometheus files.
    data_dir: Path = Path(".analytics")
    #: Connections each worker's pool keeps open, at least.
    pool_min_size: int = 2
    #: Connections each worker's pool opens, at most (the writer's lanes come on top).
    pool_max_size: int = 10
    #: asyncpg's prepared-statement cache per connection; 0 behind PgBouncer in transaction
    #: mode (prepared statements do not survive there).
    statement_cache_size: int = 100
    #: Seconds to open a connection.
    connect_timeout_s: float = 5.0
    #: Seconds a request waits for a pooled connection.
    acquire_timeout_s: float = 2.0
    #: Default deadline of every statement, in seconds.
    command_timeout_s: float = 10.0

    # HTTP.
    #: Address `analytics serve` binds.
    host: str = "127.0.0.1"
    #: Port `analytics serve` binds.
    port: int = 8000
    #: Hypercorn worker processes.
    workers: int = 1
    #: On SIGTERM, in-flight requests get this long to finish before the writer's final flush.
    graceful_timeout_s: float = 10.0

    # Ingest caps.
    #: Largest body of `POST /v1/events` (decompressed), in bytes.
    max_event_body_bytes: int = 1024 * 1024
    #: Largest body of `POST /v1/batch` (decompressed), in bytes.
    max_batch_body_bytes: int = 5 * 1024 * 1024
    #: Most events in one batch.
    max_batch_events: int = 5000
    #: Signed requests: how far (seconds) the signature's timestamp may lie in the past or
    #: the future.
    signature_tolerance_s: int = 300
    #: Bodies up to this size are normalized inline on the loop (a few µs); larger ones go to
    #: a worker thread under the `cpu` limiter.
    inline_normalize_bytes: int = 16 * 1024

    # Group-commit writer.
    #: Requests waiting for the writer, at most: beyond, 503 with Retry-After.
    writer_inbox: int = 256
    #: Rows waiting for the writer, at most (under 1 s of commits at ~30k rows/s): beyond, 503.
    writer_inbox_rows: int = 20_000
    #: Most rows in one group commit.
    writer_max_batch_rows: int = 20_000
    #: The longest the writer waits for more requests before it commits, in seconds. It waits
    #: only while requests arrive fast enough to fill a commit (`writer_linger_requests`): an
    #: idle writer commits at once. 8 ms, measured against 4: fuller commits (5 rows at 500
    #: requests/s instead of 2.9) held 1,500 requests/s at p99 <= 50 ms instead of 1,250.
    writer_window_s: float = 0.008
    #: Requests per commit the writer lingers for under load (see `writer_window_s`).
    writer_linger_requests: int = 8
    #: Concurrent commit lanes, each on its own connection (one PostgreSQL backend each).
    writer_connections: int = 2
    #: Deadline of one group commit, in seconds.
    commit_timeout_s: float = 5.0
    #: Deadline of one HTTP request, in seconds (504 `deadline_exceeded` past it).
    request_timeout_s: float = 2.0
    #: Allocations between two young-generation garbage collections in a worker (Python's
    #: default is 700; 0 keeps it). Everything alive at start-up is frozen out of the
    #: collector's passes either way (runtime/gctune.py).
    gc_gen0_threshold: int = 50_000

    # Billing: usage is counted per window and sent through the blocking vendor SDK.
    #: The billing service. Empty: `analytics serve` starts the development stub.
    billing_url: str = ""
    #: Usage is counted per window of this many seconds.
    billing_window_s: float = 60.0
    #: Threads the blocking billing SDK may use at once (the `billing_sdk` limiter).
    billing_sdk_threads: int = 4
    #: Deadline of one billing call, in seconds.
    billing_timeout_s: float = 2.0
    #: How often the dispatcher looks for closed windows, in seconds.
    billing_poll_s: float = 1.0
    #: Longest wait between retries while billing is down, in seconds.
    billing_max_backoff_s: float = 30.0

    #: The Citus source tarball `serve --citus-workers` builds into the embedded PostgreSQL
    #: (once per tarball). Read from CITUS_SRC.
    citus_src: Path = Path("../shared/vendor/citus-13.2.2.tar.gz")

    # Per-key token bucket, shared by every worker and host (leased from PostgreSQL).
    #: Requests per second a key may make, sustained.
    rate_limit_per_s: float = 2000.0
    #: Requests a key may make in a burst.
    rate_limit_burst: float = 4000.0
    #: A worker leases the tokens of this many seconds at the sustained rate per database
    #: call (at least 1, at most a quarter of the burst): the limit may be exceeded by one
    #: lease per worker.
    rate_limit_lease_s: float = 0.05

    # Feature flags' defaults (rows in feature_flags override them at run time).
    #: Send usage to billing.
    flag_billing_dispatch: bool = True
    #: Derive the `browser` dimension from the user agent when an event names none.
    flag_enrichment: bool = True
    #: Refuse unsigned requests made with signing keys.
    flag_signature_enforcement: bool = True

    #: Dedup records live this long (at least 7 days): retries within it count once.
    dedup_retention_days: float = 8.0
    #: Raw events are kept this many days (0: forever). The hourly maintenance drops each
    #: monthly partition of `events` once it lies entirely before now minus this, with its
    #: minute rollups; the default partition (rows outside the monthly ones) is never dropped.
    retention_days: int = 0

    #: How often the rollup job folds committed events into the rollups, in seconds (one
    #: process at a time does it; queries read the events not folded yet from the raw table,
    #: so this bounds the work a query does on raw events, not how fresh it is).
    rollup_interval_s: float = 0.5
    #: Minute rollups are kept for events at most this many hours old (whole hours, at least
    #: 25: an `interval=minute` range is at most 25 h); minute buckets older than that are
    #: answered from the raw events, exactly. A backfill's old events then cost the rollup
    #: job no minute rows (docs/rollups.md). Raising it later does not bring back the minute
    #: rows already swept.
    rollup_minute_horizon_h: int = 72

    # Query.
    #: The dimensions rollups are kept for and queries may group or filter by.
    dimensions: tuple[str, ...] = DEFAULT_DIMENSIONS
    #: Most buckets one `/v1/metrics` answer may hold.
    max_buckets: int = 1500
    #: Longest time range of one `/v1/metrics` query, in days.
    max_range_days: int = 92
    #: Query results each worker caches.
    cache_entries: int = 2048

    # Loop watchdog: a heartbeat later than the threshold is a stall, reported with the stack.
    #: Off only to measure its overhead.
    watchdog_enabled: bool = True
    #: A heartbeat later than this (seconds) is a stall.
    watchdog_threshold_s: float = 0.05
    #: The heartbeat's period, in seconds.
    watchdog_interval_s: float = 0.01
    #: faulthandler's C-level timer for stalls in C code holding the GIL (one per process).
    watchdog_c_fallback: bool = True

    # Limiters.
    #: Threads normalizing large bodies at once (the `cpu` limiter).
    cpu_threads: int = 2

    @property
    def listen_url(self) -> str:
        return self.direct_database_url or self.database_url

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Settings from `ANALYTICS_<FIELD>` variables (and `DATABASE_URL`, `BILLING_URL`),
        then `overrides`."""
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = os.environ.get(env_name(f.name))
            if raw is None:
                continue
            default = getattr(cls, f.name, None)
            if isinstance(default, bool):
                if raw.lower() not in (*TRUE, *FALSE):
                    raise SettingError(env_name(f.name), raw, "on or off (1/0, true/false)")
                values[f.name] = raw.lower() in TRUE
            elif isinstance(default, int | float):
                kind = type(default)
                try:
                    values[f.name] = kind(raw)
                except ValueError:
                    expected = {"int": "an integer", "float": "a number"}[kind.__name__]
                    raise SettingError(env_name(f.name), raw, expected) from None
            elif isinstance(default, tuple):
                values[f.name] = tuple(x.strip() for x in raw.split(",") if x.strip())
            elif isinstance(default, Path):
                values[f.name] = Path(raw)
            else:
                values[f.name] = raw
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def flag_defaults(self) -> dict[str, bool]:
        """Every feature flag's default, by flag name (the `flag_<name>` fields)."""
        return {name: getattr(self, f"flag_{name}") for name in FLAG_NAMES}


#: How a boolean setting may be spelled.
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


class SettingError(ValueError):
    """An environment variable that does not hold what its setting needs."""

    def __init__(self, variable: str, raw: str, expected: str) -> None:
        super().__init__(f"{variable}={raw!r} is not {expected}")
        self.variable = variable


def sources(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Where `Settings.from_env()` takes each setting from, by field name: the environment
    variable's name when it is set in `environ` (default `os.environ`), else `"default"`."""
    env = os.environ if environ is None else environ
    return {
        f.name: env_name(f.name) if env_name(f.name) in env else "default" for f in fields(Settings)
    }


#: The feature flags, one `flag_<name>` setting each (its default).
FLAG_NAMES: tuple[str, ...] = tuple(
    f.name.removeprefix("flag_") for f in fields(Settings) if f.name.startswith("flag_")
)
