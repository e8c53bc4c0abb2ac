-- Hours whose hour-grain rollups (rollup_hour, rollup_pair_hour, rollup_users_hour) the
-- rollup job has deferred (store/deferred.py, docs/rollups.md): a fold of a backlog leaves
-- the events of hours before the last one out of those tables, marks their (customer, name,
-- hour) here, and a later step of the job rebuilds each marked hour once, from every folded
-- raw event of it, then deletes the mark. A backfill's events, spread over 30 days, each
-- landed in hour, pair and sketch rows of their own fold after fold; rebuilt once per hour,
-- the events of that hour share them. While an hour is marked, queries read it from the raw
-- events and none of its hour-grain rollup rows (store/series.py, store/uniques.py): exact
-- in any snapshot, since a mark and the rows it covers change in one transaction.
CREATE TABLE rollup_dirty (
    customer_id bigint NOT NULL,
    name        text COLLATE "C" NOT NULL,
    hour        timestamptz NOT NULL,
    -- When the hour was first marked (the job rebuilds the oldest marks first).
    marked_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, name, hour)
);
