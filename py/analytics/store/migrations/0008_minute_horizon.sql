-- Minute rollups only for recent events (store/rollups.py, docs/rollups.md): a backfill's
-- events each land in minute rows of their own (six upserts per event, most of a 30-day
-- backfill's fold and of rollup_minute's size), while `interval=minute` ranges are at most
-- 25 h and mostly recent. `minute_since` says: rollup_minute holds every folded event with
-- `ts >= minute_since`, and nothing a query reads below it. The rollup job moves it forward
-- (in whole hours, to now less ANALYTICS_ROLLUP_MINUTE_HORIZON_H) in a fold, under the
-- job's lock, and sweeps the rows below it afterwards in bounded deletes; a minute query
-- reads its buckets below `minute_since` from the raw events. It never moves back.
-- '-infinity': every minute row an older release made is still complete.
ALTER TABLE rollup_state ADD COLUMN minute_since timestamptz NOT NULL DEFAULT '-infinity';
-- The sweep's index (rows below `minute_since`, across customers, names and dimensions).
CREATE INDEX rollup_minute_bucket ON rollup_minute (bucket);

-- Room on every page of the rollups for the updates a fold makes: a row updated with free
-- space on its page is a HOT update (no new index entries, in the primary key nor the
-- secondary index), which made a backfill's fold ~8 % cheaper (docs/rollups.md). New pages
-- only: existing ones fill to 100 % until rewritten.
ALTER TABLE rollup_minute SET (fillfactor = 70);
ALTER TABLE rollup_hour SET (fillfactor = 70);
ALTER TABLE rollup_pair_hour SET (fillfactor = 70);
