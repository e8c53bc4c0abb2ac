"""The query bench of issue 11 (`just querybench`, `python -m benches.query`).

It builds the issue's dataset through the real write path and times the dashboard queries
over it. The dataset (`dataset`): N events (default 10,000,000) spread over the last 30
days, 4 event names, 50 paths, 20 countries, 4 UTM sources, 20,000 users, plus a referrer
and a user agent per event for the other default dimensions; seeded, so two loads with the
same seed and anchor are the same events. It is posted by `load` as batches of 500 from a
few keep-alive connections to a real `analytics serve` (the load harness's `Stack`:
embedded PostgreSQL, billing stub, the server pinned to core 0), and the rate at which
batches are acknowledged is the "backfill ingest" figure; `--compare-current N` loads N
events of the current minute to a second customer in the same run for the ratio. With
`--data-dir D` the database stays in D, and `--reuse` skips the load when D already holds
the same dataset, so the queries can be timed many times over one load.

The queries (`shapes`) are timed by `bench`, cold (a range ending now: never cached) and
warm (a closed range, cached), and every answer of a cold run is compared point by point
with what `oracle` computes from the generated events themselves; `report` writes one
table of p50/p95/max per shape under benches/results/query-<timestamp>/. Blocking
throughout; a development tool (nothing in py/ imports it). tests/test_querybench.py runs
it end to end on a tiny dataset.
"""
