"""The fault experiments (benches/chaos) in their quick form, one test each: under each
fault, no event a 2xx acknowledged is lost, none is stored, rolled up, acknowledged as
accepted or billed twice, and the service answers 2xx again after the fault.

Each test starts its own PostgreSQL, billing stub and `analytics serve` (a few seconds of
start-up, a few of load). Marked `chaos`: deselect them with `-m "not chaos"`.
"""

from __future__ import annotations

import pytest

from benches.chaos.cli import parser, plan_from
from benches.chaos.experiments import EXPERIMENTS, run_experiment, supervisor_landed
from benches.chaos.ledger import Ledger, recovery, slope_per_min
from benches.chaos.outcome import Outcome, judge

QUICK = plan_from(parser().parse_args(["--quick"]))


@pytest.mark.chaos
@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_no_acknowledged_event_is_lost_or_counted_twice(name: str, tmp_path) -> None:
    experiment = EXPERIMENTS[name]
    if experiment.needs_supervisor and not supervisor_landed():
        pytest.skip("needs `analytics serve` to restart dead workers (analytics.workers)")
    outcome = run_experiment(experiment, QUICK, logs=tmp_path)
    assert outcome.acknowledged > 0
    assert outcome.lost == 0, outcome.failures
    assert outcome.doubled == 0, outcome.failures
    assert outcome.failures == []


def test_ledger_counts_each_event_accepted_once_per_batch() -> None:
    ledger = Ledger()
    ledger.offer("b", 3)
    ledger.ok("b", ["b-0", "b-1", "b-2"], accepted=2, duplicates=1, at=1.0)
    ledger.ok("b", ["b-0", "b-1", "b-2"], accepted=0, duplicates=3, at=2.0)
    assert ledger.over_acknowledged() == 0
    ledger.ok("b", ["b-0", "b-1", "b-2"], accepted=2, duplicates=1, at=3.0)
    assert ledger.over_acknowledged() == 1  # 4 accepted for 3 events


def test_recovery_is_the_first_2xx_after_the_fault() -> None:
    ledger = Ledger()
    ledger.offer("b", 1)
    for at in (1.0, 5.0, 2.0):
        ledger.ok("b", ["b-0"], accepted=0, duplicates=1, at=at)
    assert recovery(ledger, 1.5) == pytest.approx(0.5)
    assert recovery(ledger, 5.0) is None


def test_slope_is_per_minute() -> None:
    assert slope_per_min([(0, 100.0), (30, 101.0), (60, 102.0)]) == pytest.approx(2.0)
    assert slope_per_min([(0, 1.0), (1, 1.0)]) is None


def test_judge_names_every_broken_invariant() -> None:
    o = Outcome("x", "t", 1.0, acknowledged=10, stored=9, rollup=10, lost=1, billed=11)
    o.events_total = 9
    o.faults, o.recovery_s = [{"kind": "SIGKILL worker"}], [None]
    broken = judge(o)
    assert any("lost" in b for b in broken)
    assert any("rollups count 10" in b for b in broken)
    assert any("counted twice" in b for b in broken)
    assert any("did not come back" in b for b in broken)
    assert judge(Outcome("x", "t", 1.0, acknowledged=5, stored=5, rollup=5)) == []
