"""The fault experiments (`just chaos`, `python -m benches.chaos`): proof, against real
processes, that no acknowledged event is lost or counted twice.

Each experiment starts a fresh stack (an embedded PostgreSQL under a temporary directory,
the billing stub, `analytics serve` on a free port), puts retrying producers on it (threads
posting batches with stable `event_id`s, sending the same bytes again after a connection
error, a timeout, a 5xx or a 429), injects its fault, and at the end counts what PostgreSQL
holds (rows per event id in `events`, the `rollup_minute` total) and what the stub billed:

- `worker_kill`: SIGKILL of the Hypercorn worker every 5-10 s (the supervisor replaces it);
- `pg_restart`: `pg_ctl stop -m immediate` and start, then SIGKILL of the postmaster while
  a backend commits, and start (crash recovery both times);
- `pg_freeze`: SIGSTOP of the postmaster and every backend for ~5 s, then SIGCONT;
- `partition`: the app reaches PostgreSQL over TCP through a proxy of ours, which stops
  forwarding without closing anything, then forwards again (see `proxy` for why a proxy);
- `billing_outage`: the stub answers every usage call 503, then heals;
- `duplicates`: every batch sent by 2-5 concurrent requests at once;
- `soak`: steady load, the worker's RSS sampled, its slope in MB/min reported.

The verdict (`outcome.judge`) is the same for all: lost = 0, doubled = 0, rollups equal to
what is stored, nothing answered `accepted` twice, billing equal to what is stored, and a
2xx after every fault. Traffic stays on 127.0.0.1; every wait is bounded; every process
started is stopped, also on failure or Ctrl-C.

Modules, from the command down: `cli` (flags, the run, exit status), `experiments` (the
registry and the run of one), `faults` (the injectors), `producers`, the drivers `stack`,
`postgres`, `proxy`, `procs` (/proc and signals); the readers `count` (SQL and the stub's
totals); plain data `ledger` (what producers heard), `outcome` (the verdict), `report`
(the table, Markdown and JSON). A development tool: nothing in `py/` imports it.
"""
