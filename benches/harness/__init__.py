"""The load harness (`just load`, `python -m benches.harness`), and the case study reproduced.

For each mode under test (`service`: this service under `analytics serve`; with `--compare`
also the case study's `naive` and `threaded` baselines from `benches/casestudy`; with
`--reference` the ceilings it is measured against in the same run, from
`benches/reference_apps`: `bare`, a constant answer on the same Hypercorn, and for batches
`copy`, the same normalizer and one COPY per request) the harness starts a fresh stack: an
embedded PostgreSQL under a temporary directory (migrated, with a signing write key and a
read key), the billing stub with `--stub-latency-ms` of latency (not for a reference: it
bills nothing), and the server, pinned to core 0 where `taskset` exists. With
`--citus-workers N` the service runs a second time right after, on a local Citus cluster (a
coordinator and N workers, Citus built from CITUS_SRC once; deploy/citus.md): the same
ladders against the single node and Citus in one run, its rows labelled `service@citusN`. k6
(`benches/load/ingest.js`, pinned to the other core) then offers each scenario at a ladder
of constant arrival rates (an open model: a stalled server shows in the tail, not as a
slower client). Every request carries `X-Scenario`.

Around every step the harness scrapes `/metrics` (loop lag p99 from the delta of the
`analytics_loop_lag_seconds` buckets, stalls from the delta of `analytics_loop_stalls_total`)
and, where the server has it, `/debug/stalls` (the blocking lines the watchdog named). During
the step a probe thread posts uniquely named events and polls `/v1/metrics` until each one
is counted: the freshness, from the ack to the first query answer that counts the event.
It also records the CPU that the server, PostgreSQL and k6 used during the step (which side
ran out), what it cost per acknowledged event and, from the server's rows-per-commit
histogram, PostgreSQL's CPU per commit, and the server's own per-section timings from its
access log (where the time went inside the service). A reference has no watchdog and no
query: it gets no probes, and its loop figures are "—" rather than faked. The headlines
give the service's sustained single-event rate as a share of bare's and its batch events/s
as a share of copy's.

A ladder stops at the first saturated step (achieved below 90 % of the offered requests, or
more than 1 % errors) unless `--full-ladder`. Everything is bounded: k6 runs for the step's
duration plus a 3 s graceful stop, requests time out after `--timeout`, and the probes too.
Traffic stays on 127.0.0.1.

Writes `<out>/<UTC timestamp>/results.json`, `results.md` and `latency.png` (and the end of
each process's output under `logs/`).

Modules, from the command down: `cli` (flags, the run over modes and ladders), `measure`
(one step), the drivers `stack` (PostgreSQL, stub, server), `k6`, `probes`, `pyspy`,
`httpclient`, `cpu`; the readers of what a server reports `promtext` (`/metrics`), `stalls`
(`/debug/stalls`, `loop_stall` records), `timings` (the access log); the output `results`
(one step's figures), `report` (Markdown), `plot`; and `plan` (modes, the scenarios each
runs, rates).
The readers and the output take plain data and are tested in tests/test_loadtest.py; the
drivers are exercised by running the harness. It is a development tool: nothing in `py/`
imports it.
"""
