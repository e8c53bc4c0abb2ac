-- Per-key token buckets shared by every worker process and host (store/rate_buckets.py).
-- A worker leases a batch of tokens from its key's row in one statement and spends them
-- locally; the row is refilled by the time elapsed since `refilled_at` in that statement.
-- `granted` is the last lease's size (what RETURNING hands back). customer_id first: the
-- row is distributed with the customer's other rows under Citus.
CREATE TABLE rate_buckets (
    customer_id bigint NOT NULL,
    key_id      text NOT NULL,
    tokens      double precision NOT NULL,
    refilled_at timestamptz NOT NULL,
    granted     integer NOT NULL,
    PRIMARY KEY (customer_id, key_id)
);
