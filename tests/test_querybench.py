"""The query bench (benches/query) end to end on a tiny dataset, so the tool keeps working.

It runs `python -m benches.query` as `just querybench` does (a real `analytics serve` with
its own embedded PostgreSQL, fed through `POST /v1/batch`), then reads what it wrote. No
timing is asserted: the figures are the bench's output, not a test's.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from benches.query import oracle
from benches.query.dataset import DAY_MS, NAMES, Dataset
from benches.query.shapes import SHAPES

ROOT = Path(__file__).resolve().parents[1]
EVENTS = 3000


def _bench(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "benches.query", "--out", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    runs = sorted(out.glob("query-*"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, runs[-1]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, dict]:
    tmp = tmp_path_factory.mktemp("querybench")
    data = tmp / "data"
    _, run = _bench(
        tmp, "--events", str(EVENTS), "--compare-current", "1000", "--repeats", "2",
        "--data-dir", str(data),
    )  # fmt: skip
    return tmp, data, run, orjson.loads((run / "results.json").read_bytes())


def test_every_shape_is_timed_cold_and_warm_and_answered_exactly(loaded):
    *_, results = loaded
    assert [s["key"] for s in results["shapes"]] == [s.key for s in SHAPES]
    for s in results["shapes"]:
        assert s["check"] == "exact", s
        for mode in ("cold", "warm"):
            assert s[mode]["n"] == 2 and s[mode]["errors"] == {}, s
            assert 0 < s[mode]["p50_ms"] <= s[mode]["p95_ms"] <= s[mode]["max_ms"]
    assert results["stored"] == EVENTS


def test_the_loads_report_their_rates_and_every_event_was_acknowledged(loaded):
    *_, results = loaded
    backfill, current = results["loads"]
    assert (backfill["label"], backfill["accepted"] + backfill["duplicates"]) == (
        "backfill",
        EVENTS,
    )
    assert (current["label"], current["accepted"]) == ("current", 1000)
    assert backfill["events_per_s"] > 0 and current["events_per_s"] > 0
    # Each load waited for the rollup job to fold all its events before the next step.
    for run in (backfill, current):
        assert run["folded_s"] >= run["seconds"] and run["folded_events_per_s"] > 0
    assert results["backfill_folded_share"] == pytest.approx(
        backfill["folded_events_per_s"] / current["folded_events_per_s"], rel=1e-3
    )
    assert results["backfill_share"] == pytest.approx(
        backfill["events_per_s"] / current["events_per_s"], rel=1e-3
    )


def test_the_oracle_agrees_with_the_answers_and_catches_a_wrong_one(loaded):
    _, _, run, results = loaded
    answers = orjson.loads((run / "answers.json").read_bytes())
    d = results["dataset"]
    dataset = Dataset(d["events"], d["seed"], d["anchor_ms"], int(d["spread_days"] * DAY_MS))
    shapes = {s.key: s for s in SHAPES}
    pairs = [(shapes[k], a) for k, a in answers.items()]
    assert oracle.check(dataset, pairs) == {k: None for k in answers}

    # The 30-day total is the number of generated events of that name in the range.
    total = sum(p["value"] for p in answers["30d_day"]["series"][0]["points"])
    assert total == sum(1 for e in dataset if e.name == NAMES[0]) > 0

    tampered = copy.deepcopy(answers["30d_day_by_path"])
    tampered["series"][0]["points"][-1]["value"] += 1
    assert oracle.check(dataset, [(shapes["30d_day_by_path"], tampered)])["30d_day_by_path"]
    missing = copy.deepcopy(answers["7d_hour_by_country"])
    missing["series"].pop()
    assert oracle.check(dataset, [(shapes["7d_hour_by_country"], missing)])["7d_hour_by_country"]


def test_reuse_times_the_queries_again_without_loading(loaded):
    tmp, data, _, first = loaded
    proc, run = _bench(
        tmp, "--events", str(EVENTS), "--repeats", "1", "--data-dir", str(data), "--reuse"
    )
    again = orjson.loads((run / "results.json").read_bytes())
    assert "reusing the dataset" in proc.stdout
    assert again["loads"] == first["loads"][:1]
    assert again["stored"] == EVENTS
    assert {s["check"] for s in again["shapes"]} == {"exact"}


def test_a_loaded_data_dir_is_not_loaded_again(loaded):
    tmp, data, _, _ = loaded
    base = ["--out", str(tmp / "refused"), "--events", str(EVENTS), "--data-dir", str(data)]
    for extra in ([], ["--reuse", "--seed", "2"]):
        proc = subprocess.run(
            [sys.executable, "-m", "benches.query", *base, *extra],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode != 0 and "holds the dataset" in proc.stderr, proc.stderr
