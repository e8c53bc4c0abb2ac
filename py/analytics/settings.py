"""Settings, read once from the environment (`ANALYTICS_*`, plus `DATABASE_URL`).

Every knob has a production-sane default; tests and benchmarks override by keyword.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

DEFAULT_DIMENSIONS = ("path", "referrer_host", "utm.source", "country", "browser")


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True)
class Settings:
    # Database. With database_url empty an embedded PostgreSQL (pgserver) runs under data_dir.
    database_url: str = ""
    #: A direct (non-pooled) DSN for LISTEN; defaults to database_url.
    direct_database_url: str = ""
    data_dir: Path = Path(".analytics")
    pool_min_size: int = 2
    pool_max_size: int = 10
    #: 0 behind PgBouncer in transaction mode (prepared statements do not survive there).
    statement_cache_size: int = 100
    connect_timeout_s: float = 5.0
    acquire_timeout_s: float = 2.0
    command_timeout_s: float = 10.0

    # HTTP.
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    #: On SIGTERM, in-flight requests get this long to finish before the writer's final flush.
    graceful_timeout_s: float = 10.0

    # Ingest caps.
    max_event_body_bytes: int = 1024 * 1024
    max_batch_body_bytes: int = 5 * 1024 * 1024
    max_batch_events: int = 5000
    signature_tolerance_s: int = 300
    #: Bodies up to this size are normalized inline on the loop (a few µs); larger ones go to
    #: a worker thread under the `cpu` limiter.
    inline_normalize_bytes: int = 16 * 1024

    # Group-commit writer.
    writer_inbox: int = 256
    #: Rows waiting for the writer, at most (under 1 s of commits at ~30k rows/s): beyond, 503.
    writer_inbox_rows: int = 20_000
    writer_max_batch_rows: int = 20_000
    writer_window_s: float = 0.002
    #: Concurrent commit lanes, each on its own connection (one PostgreSQL backend each).
    writer_connections: int = 2
    commit_timeout_s: float = 5.0
    request_timeout_s: float = 2.0

    # Billing: usage is counted per window and sent through the blocking vendor SDK.
    billing_url: str = ""
    billing_window_s: float = 60.0
    billing_sdk_threads: int = 4
    billing_timeout_s: float = 2.0
    billing_poll_s: float = 1.0
    billing_max_backoff_s: float = 30.0

    # Per-key token bucket (per worker process).
    rate_limit_per_s: float = 2000.0
    rate_limit_burst: float = 4000.0

    # Feature flags' defaults (rows in feature_flags override them at run time).
    flag_billing_dispatch: bool = True
    flag_enrichment: bool = True
    flag_signature_enforcement: bool = True

    #: Dedup records live this long (at least 7 days): retries within it count once.
    dedup_retention_days: float = 8.0

    # Query.
    dimensions: tuple[str, ...] = DEFAULT_DIMENSIONS
    max_buckets: int = 1500
    max_range_days: int = 92
    cache_entries: int = 2048

    # Loop watchdog: a heartbeat later than the threshold is a stall, reported with the stack.
    #: Off only to measure its overhead.
    watchdog_enabled: bool = True
    watchdog_threshold_s: float = 0.05
    watchdog_interval_s: float = 0.01
    #: faulthandler's C-level timer for stalls in C code holding the GIL (one per process).
    watchdog_c_fallback: bool = True

    # Limiters.
    cpu_threads: int = 2

    @property
    def listen_url(self) -> str:
        return self.direct_database_url or self.database_url

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Settings from `ANALYTICS_<FIELD>` variables (and `DATABASE_URL`), then `overrides`."""
        values: dict[str, object] = {
            "database_url": _env("DATABASE_URL", ""),
            "direct_database_url": _env("ANALYTICS_DIRECT_DATABASE_URL", ""),
            "data_dir": Path(_env("ANALYTICS_DATA_DIR", ".analytics")),
            "billing_url": _env("BILLING_URL", ""),
        }
        for f in fields(cls):
            raw = os.environ.get(f"ANALYTICS_{f.name.upper()}")
            if raw is None or f.name in values:
                continue
            default = getattr(cls, f.name, None)
            if isinstance(default, bool):
                values[f.name] = raw.lower() in ("1", "true", "yes", "on")
            elif isinstance(default, int):
                values[f.name] = int(raw)
            elif isinstance(default, float):
                values[f.name] = float(raw)
            elif isinstance(default, tuple):
                values[f.name] = tuple(x.strip() for x in raw.split(",") if x.strip())
            else:
                values[f.name] = raw
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def flag_defaults(self) -> dict[str, bool]:
        """Every feature flag's default, by flag name (the `flag_<name>` fields)."""
        return {name: getattr(self, f"flag_{name}") for name in FLAG_NAMES}


#: The feature flags, one `flag_<name>` setting each (its default).
FLAG_NAMES: tuple[str, ...] = tuple(
    f.name.removeprefix("flag_") for f in fields(Settings) if f.name.startswith("flag_")
)
