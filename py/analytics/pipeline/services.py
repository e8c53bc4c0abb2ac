"""What request handlers and background jobs share, built once per worker by the lifespan.

`Services` is the typed seam between the HTTP layer and everything below it: handlers read
`services_of(request)` (api/state.py) instead of digging untyped attributes out of app state.
`build_services` is the wiring: which settings feed which component, and which named
limiters exist.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from analytics.billing.sdk import BillingClient
from analytics.normalize import Limits
from analytics.pipeline.billing_dispatch import BillingDispatcher
from analytics.pipeline.invalidation import Invalidator
from analytics.pipeline.rollup_job import RollupJob
from analytics.pipeline.writer import GroupCommitWriter
from analytics.runtime.flags import Flags
from analytics.runtime.leases import LeasedBuckets, lease_size
from analytics.runtime.offload import Offload
from analytics.runtime.querycache import QueryCache
from analytics.runtime.ratelimit import TokenBuckets
from analytics.runtime.ttlcache import TtlCache
from analytics.runtime.watchdog import LoopWatchdog
from analytics.settings import Settings
from analytics.store import db
from analytics.store.keys import KeyInfo, lookup_key
from analytics.store.notify import notify
from analytics.store.pool import connect
from analytics.store.rate_buckets import lease_tokens
from analytics.store.rotation import origin_listed

#: Attempts the billing SDK makes itself before the dispatcher sees a failure.
BILLING_RETRIES = 2


@dataclass
class Services:
    settings: Settings
    pool: db.Pool
    writer: GroupCommitWriter
    rollups: RollupJob
    offload: Offload
    keys: TtlCache[str, KeyInfo | None]
    #: Whether an origin is listed by an active publishable key (CORS preflights), cached.
    origins: TtlCache[str, bool]
    invalidator: Invalidator
    flags: Flags
    buckets: LeasedBuckets
    event_limits: Limits
    batch_limits: Limits
    dispatcher: BillingDispatcher | None = None
    #: Set by the lifespan while the loop watchdog runs (None when it is disabled).
    watchdog: LoopWatchdog | None = None


def ingest_limits(settings: Settings) -> tuple[Limits, Limits]:
    """The normalizer's limits of `POST /v1/events` and of `POST /v1/batch` (the OpenAPI
    document states the same figures)."""
    return (
        Limits(max_body_bytes=settings.max_event_body_bytes, max_events=1),
        Limits(max_body_bytes=settings.max_batch_body_bytes, max_events=settings.max_batch_events),
    )


def leased_buckets(settings: Settings, pool: db.Pool) -> LeasedBuckets:
    """The per-key rate limits: leases from the shared buckets (`rate_buckets` rows), a
    per-process bucket while the database is unreachable."""
    rate, burst = settings.rate_limit_per_s, settings.rate_limit_burst

    async def lease(name: str, want: int) -> tuple[int, float]:
        customer_id, _, key_id = name.partition(":")
        got = await lease_tokens(
            pool,
            int(customer_id),
            key_id,
            want,
            rate_per_s=rate,
            burst=burst,
            acquire_timeout_s=settings.acquire_timeout_s,
        )
        return got.granted, got.wait_s(rate)

    return LeasedBuckets(
        lease,
        lease_size(rate, burst, settings.rate_limit_lease_s),
        TokenBuckets(rate, burst),
    )


def build_services(settings: Settings, pool: db.Pool) -> Services:
    """Every component of one worker, configured from `settings`, none started yet."""
    # The writer's connections keep a temp table and session settings: never through a
    # transaction-mode pooler (`direct_database_url`, when set, bypasses it).
    direct = functools.partial(connect, settings.listen_url, settings)
    offload = Offload(
        {"cpu": settings.cpu_threads, "billing_sdk": settings.billing_sdk_threads, "scrape": 1}
    )
    flags = Flags(settings.flag_defaults())
    services = Services(
        settings=settings,
        pool=pool,
        writer=GroupCommitWriter(
            direct,
            inbox=settings.writer_inbox,
            inbox_rows=settings.writer_inbox_rows,
            max_batch_rows=settings.writer_max_batch_rows,
            window_s=settings.writer_window_s,
            linger_requests=settings.writer_linger_requests,
            commit_timeout_s=settings.commit_timeout_s,
            connections=settings.writer_connections,
            usage_window_s=settings.billing_window_s,
            enrich=functools.partial(flags.enabled, "enrichment"),
        ),
        rollups=RollupJob(
            pool,
            settings.dimensions,
            interval_s=settings.rollup_interval_s,
            timeout_s=settings.commit_timeout_s * 6,
            offload=offload,
            minute_horizon_h=settings.rollup_minute_horizon_h,
        ),
        offload=offload,
        keys=TtlCache(
            functools.partial(lookup_key, pool, acquire_timeout_s=settings.acquire_timeout_s)
        ),
        origins=TtlCache(
            functools.partial(origin_listed, pool, acquire_timeout_s=settings.acquire_timeout_s),
            size=1_000,
        ),
        invalidator=Invalidator(
            QueryCache(settings.cache_entries), functools.partial(notify, pool)
        ),
        flags=flags,
        buckets=leased_buckets(settings, pool),
        event_limits=ingest_limits(settings)[0],
        batch_limits=ingest_limits(settings)[1],
    )
    if settings.billing_url:
        services.dispatcher = BillingDispatcher(
            pool,
            offload,
            functools.partial(
                BillingClient,
                settings.billing_url,
                timeout_s=settings.billing_timeout_s,
                retries=BILLING_RETRIES,
                pool_size=settings.billing_sdk_threads,
            ),
            flags,
            window_s=settings.billing_window_s,
            poll_s=settings.billing_poll_s,
            # The SDK's own worst case (every attempt timing out, plus backoff) and a margin.
            call_timeout_s=settings.billing_timeout_s * (BILLING_RETRIES + 1) + 2,
            max_backoff_s=settings.billing_max_backoff_s,
        )
    return services
