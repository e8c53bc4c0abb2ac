-- Rollups leave the ack path: the group commit stores raw events only, and a rollup job
-- (store/rollups.py) folds committed events into minute and hour rollups and hourly pair
-- rollups in bulk, behind a watermark.
--
-- Each event row carries the id of the transaction that inserted it (`xid`, a 64-bit xid8
-- that never wraps). Every transaction with an id below the xmin of a snapshot has ended, so
-- the job can take all events with `watermark <= xid < xmin` knowing no more will appear in
-- that range, add them to the rollups and move the watermark, in one transaction. A query
-- reads, in one snapshot, the rollups (events below the watermark) plus the raw events at or
-- above it: exact, and never stale.

ALTER TABLE events ADD COLUMN xid xid8;
ALTER TABLE events ALTER COLUMN xid SET DEFAULT pg_current_xact_id();
-- Finds the few events not rolled up yet; a btree (not BRIN) so the planner can read the
-- column's actual maximum and see how few rows `xid >= $w` selects.
CREATE INDEX events_xid ON events (xid);

-- The job's progress: every event with xid below `watermark` is in every rollup table.
CREATE TABLE rollup_state (
    id        smallint PRIMARY KEY CHECK (id = 1),
    watermark xid8 NOT NULL
);

-- Hours answer hour and day queries (a 92-day range is 2,208 hour buckets per value): a day
-- table would cost the fold as much again per event and save little at query time.
CREATE TABLE rollup_hour (LIKE rollup_minute INCLUDING ALL);

-- Counts and sums per pair of dimension values (dim_a < dim_b) and hour, for a filter combined
-- with a group-by, or two filters (a minute query's range is short enough for raw events).
CREATE TABLE rollup_pair_hour (
    customer_id bigint NOT NULL,
    name        text NOT NULL,
    dim_a       text NOT NULL,
    dim_b       text NOT NULL,
    value_a     text NOT NULL,
    value_b     text NOT NULL,
    bucket      timestamptz NOT NULL,
    count       bigint NOT NULL,
    sum_value   double precision NOT NULL,
    PRIMARY KEY (customer_id, name, dim_a, dim_b, value_a, value_b, bucket)
);

-- Unique users per (event name, dimension value, hour), as HyperLogLog sketches (Rust:
-- analytics.normalize.hll_*): merged across hours and days by a query, they estimate the
-- distinct users of a range far larger than raw events could be counted in (store/sketches.py).
CREATE TABLE rollup_users_hour (
    customer_id bigint NOT NULL,
    name        text NOT NULL,
    dim         text NOT NULL,
    dim_value   text NOT NULL,
    bucket      timestamptz NOT NULL,
    sketch      bytea NOT NULL,
    PRIMARY KEY (customer_id, name, dim, dim_value, bucket)
);
CREATE INDEX rollup_users_hour_dim_bucket ON rollup_users_hour (customer_id, name, dim, bucket);

-- Events stored before this migration were rolled up into minutes only, by the commit: they
-- are all given to the job once and every rollup is rebuilt from them, so all grains and
-- pairs agree. They are numbered in chunks of 2,000 (ids 3, 4, ...: the job folds one id's
-- events together, so one id for all would make one fold of every old event). Any id is
-- fine here: every row of this transaction is final once it commits, and the job folds ids
-- below the oldest running transaction's, real or not.
UPDATE events e SET xid = (3 + (n.rn - 1) / 2000)::text::xid8
FROM (SELECT tableoid, ctid, row_number() OVER () AS rn FROM events) AS n
WHERE e.tableoid = n.tableoid AND e.ctid = n.ctid;
TRUNCATE rollup_minute;
INSERT INTO rollup_state VALUES (1, '3'::xid8);
