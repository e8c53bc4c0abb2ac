-- Billing usage outbox (written in the same transaction as the events it counts), the
-- dispatches made from it (each with the idempotency key sent to billing), feature flags.

CREATE TABLE usage_outbox (
    customer_id  bigint NOT NULL,
    id           bigint GENERATED ALWAYS AS IDENTITY,
    window_start timestamptz NOT NULL,
    count        bigint NOT NULL,
    dispatch_id  bigint,             -- set when claimed into a dispatch
    PRIMARY KEY (customer_id, id)
);
CREATE INDEX usage_outbox_pending ON usage_outbox (window_start) WHERE dispatch_id IS NULL;

-- One billing call. The key is stored before the call, so a crash between the call and
-- `sent_at` retries with the same key and billing counts it once.
CREATE TABLE usage_dispatch (
    customer_id     bigint NOT NULL,
    dispatch_id     bigint GENERATED ALWAYS AS IDENTITY,
    window_start    timestamptz NOT NULL,
    window_end      timestamptz NOT NULL,
    count           bigint NOT NULL,
    idempotency_key text NOT NULL,
    created_at      timestamptz NOT NULL,
    sent_at         timestamptz,
    attempts        int NOT NULL DEFAULT 0,
    last_error      text,
    failed_at       timestamptz,          -- billing refused it for good (e.g. 409): parked
    PRIMARY KEY (customer_id, dispatch_id)
);
CREATE INDEX usage_dispatch_pending ON usage_dispatch (created_at)
    WHERE sent_at IS NULL AND failed_at IS NULL;

-- Run-time switches for heavy paths; defaults live in settings, rows here override them.
CREATE TABLE feature_flags (
    name       text PRIMARY KEY,     -- global, a reference table under Citus
    enabled    boolean NOT NULL,
    updated_at timestamptz NOT NULL
);
