"""The experiments (name, fault, load shape) and the run of one: stack up, load on, fault
in, load off, count, judge.

`run_experiment` starts a fresh `ChaosStack`, starts the producers, hands the injector a
`Run`, keeps the load on until the planned duration has passed (or longer, if the injector
was still waiting for a recovery), stops the producers (with a drain: batches still being
retried get a few more seconds), then counts what PostgreSQL holds and what the stub was
billed (waiting, bounded, for the last usage windows to be dispatched) and judges the
`Outcome`. Whatever happens, the stack is torn down.
"""

from __future__ import annotations

import importlib.util
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benches.chaos import count, faults
from benches.chaos.faults import Run
from benches.chaos.ledger import Ledger, recovery
from benches.chaos.outcome import Outcome, judge
from benches.chaos.producers import Load
from benches.chaos.stack import ChaosStack


@dataclass(frozen=True)
class Experiment:
    name: str
    #: How the fault is injected, for the table.
    title: str
    inject: Callable[[Run], None]
    proxy: bool = False
    copies: tuple[int, int] = (1, 1)
    #: Seconds of load = this times --duration.
    length: float = 1.0
    #: Whether it needs `analytics serve` to restart dead workers.
    needs_supervisor: bool = False


EXPERIMENTS = {
    e.name: e
    for e in (
        Experiment(
            "worker_kill",
            "SIGKILL of the Hypercorn worker every 5-10 s",
            faults.kill_workers,
            length=2.0,
            needs_supervisor=True,
        ),
        Experiment(
            "pg_restart",
            "pg_ctl stop -m immediate + start; SIGKILL postmaster mid-commit + start",
            faults.restart_postgres,
            length=1.5,
        ),
        Experiment("pg_freeze", "SIGSTOP postmaster + backends, SIGCONT", faults.freeze_postgres),
        Experiment(
            "partition",
            "TCP proxy app->PostgreSQL blackholed, then restored",
            faults.partition,
            proxy=True,
        ),
        Experiment("billing_outage", "stub fail_rate 1.0, then 0", faults.billing_outage),
        Experiment(
            "duplicates",
            "each batch sent by 2-5 concurrent copies",
            faults.concurrent_copies,
            copies=(2, 5),
        ),
        Experiment("soak", "none; worker RSS sampled", faults.sample_rss, length=2.0),
    )
}


def supervisor_landed() -> bool:
    """Whether `analytics serve` restarts dead workers (the supervisor's module exists)."""
    return importlib.util.find_spec("analytics.workers") is not None


@dataclass(frozen=True)
class Plan:
    """The figures of a run: seconds of load, producers and their batches and rate."""

    duration_s: float = 30.0
    quick: bool = False
    producers: int = 4
    batch: int = 25
    rate: float = 10.0
    drain_s: float = 20.0
    billing_wait_s: float = 30.0
    seed: int = 1


def run_experiment(exp: Experiment, plan: Plan, logs: Path | None = None) -> Outcome:
    """Run `exp` on a fresh stack; the judged outcome (never raises for a broken invariant,
    only for a stack that cannot start)."""
    duration = plan.duration_s * exp.length
    outcome = Outcome(exp.name, exp.title, duration)
    name = f"chaos {exp.name}"
    ledger = Ledger()
    started = time.monotonic()
    with ChaosStack(exp.name, proxy=exp.proxy, logs=logs) as stack:
        assert stack.keys is not None
        load = Load(
            stack.base_url,
            stack.keys.write.key,
            name,
            ledger,
            producers=plan.producers,
            batch=plan.batch,
            rate=plan.rate,
            copies=exp.copies,
            seed=plan.seed,
        )
        run = Run(stack, ledger, duration, plan.quick, random.Random(plan.seed))
        load.start()
        try:
            exp.inject(run)
            run.sleep_until(run.ends)
        except BaseException:  # Ctrl-C or a broken injector: no drain, straight to teardown
            load.stop(0)
            raise
        load.stop(plan.drain_s)
        _count(outcome, stack, name, ledger, plan)
        if stack.server is not None and stack.server.poll() is not None:
            run.fail(f"`analytics serve` exited ({stack.server.returncode})")
    outcome.faults = [
        {
            "kind": f.kind,
            "at_s": round(f.start - run.started, 2),
            "duration_s": round(f.end - f.start, 2),
            "detail": f.detail,
        }
        for f in run.faults
    ]
    outcome.recovery_s = [recovery(ledger, f.end) for f in run.faults]
    outcome.notes += run.notes
    outcome.samples = run.samples
    outcome.failures = run.failures + judge(outcome)
    outcome.elapsed_s = time.monotonic() - started
    return outcome


def _count(outcome: Outcome, stack: ChaosStack, name: str, ledger: Ledger, plan: Plan) -> None:
    assert stack.keys is not None and stack.stub is not None
    customer = stack.keys.customer_id
    held = count.stored(stack.dsn, customer, name)
    outcome.offered_requests = ledger.offered_batches
    outcome.offered_events = ledger.offered_events
    outcome.requests = ledger.requests
    outcome.acknowledged = len(ledger.acked)
    outcome.accepted = ledger.accepted_total()
    outcome.duplicates = ledger.duplicates
    outcome.over_acknowledged = ledger.over_acknowledged()
    outcome.abandoned = ledger.abandoned
    outcome.errors = dict(sorted(ledger.errors.items()))
    outcome.stored = held.distinct
    outcome.rollup = held.rollup
    outcome.lost = held.lost(ledger.acked)
    outcome.doubled = held.doubled
    outcome.events_total = count.events_of(stack.dsn, customer)
    outcome.billed, caught_up = count.wait_billed(
        stack.stub.url, customer, outcome.events_total, plan.billing_wait_s
    )
    if caught_up is not None:
        outcome.notes.append(f"billing caught up {caught_up:.1f} s after the load ended")
