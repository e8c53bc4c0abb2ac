"""The faults, one injector per experiment, and the `Run` each one is handed.

An injector runs while the producers load the server: it waits for its moment, breaks
something, records a `Fault` (what, when it began and ended on the monotonic clock, a
detail), puts it right again, and waits (bounded) for the next 2xx before going on. Every
injector undoes its fault in a `finally` (SIGCONT, proxy restored, PostgreSQL started,
billing healed), so a failing or interrupted experiment leaves nothing broken behind for
the teardown. A fault the service did not recover from is recorded with `Run.fail`; the
injector then stops injecting.
"""

from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import dataclass, field

import httpx2 as httpx

from benches.chaos.ledger import Ledger, slope_per_min
from benches.chaos.procs import rss_bytes
from benches.chaos.stack import ChaosStack

#: How long a fault may take to recover from (the next 2xx) before it counts as a failure.
RECOVERY_DEADLINE_S = 20.0


@dataclass
class Fault:
    kind: str
    start: float
    end: float
    detail: str = ""


@dataclass
class Run:
    """What an injector is handed: the stack, the producers' ledger, the plan's figures, and
    where it writes what it did (`faults`, `notes`, `failures`, `samples`)."""

    stack: ChaosStack
    ledger: Ledger
    duration_s: float
    quick: bool
    rng: random.Random
    started: float = field(default_factory=time.monotonic)
    faults: list[Fault] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    samples: list[tuple[float, float]] = field(default_factory=list)

    @property
    def ends(self) -> float:
        return self.started + self.duration_s

    def at(self, fraction: float) -> float:
        return self.started + fraction * self.duration_s

    @staticmethod
    def sleep_until(t: float) -> None:
        time.sleep(max(0.0, t - time.monotonic()))

    def fail(self, message: str) -> None:
        self.failures.append(message)

    def recovered(self, after: float, what: str) -> bool:
        """Wait for a 2xx answered after `after`; on none within the deadline, a failure."""
        deadline = time.monotonic() + RECOVERY_DEADLINE_S
        while time.monotonic() < deadline:
            if self.ledger.next_ok_after(after) is not None:
                return True
            time.sleep(0.05)
        server = self.stack.server
        exited = server is not None and server.poll() is not None
        status = f"exited {server.returncode}" if exited and server else "up"
        self.fail(
            f"server did not come back: no 2xx within {RECOVERY_DEADLINE_S:.0f} s after {what}"
            f" (serve process {status}); end of its log:\n{self.stack.tail('server', 15)}"
        )
        return False


def crash_budget(gap_s: float) -> tuple[int, float] | None:
    """(kills, seconds): the most worker deaths the supervisor takes within its window
    without giving up on the service, by its own policy, when kills come at least `gap_s`
    apart; None without a supervisor, or when every killed worker will have lived long
    enough to count as healthy (its death is then no crash at all)."""
    try:
        from analytics.workers import RestartPolicy
    except ImportError:
        return None
    policy = RestartPolicy()
    # A replacement takes about a second to boot and answer: a kill `gap_s` after the last
    # one hits a worker that has lived about `gap_s - 1` s.
    if gap_s - 1.5 >= policy.healthy_after_s:
        return None
    return policy.crash_limit - 1, policy.window_s


def kill_workers(run: Run) -> None:
    """SIGKILL a Hypercorn worker every 5-10 s (quick: 1.5-2.5 s), the first a third of the
    way in (quick) or after the first gap; each time, the worker must be replaced (the
    supervisor's job) and answer before the next kill. Kills stay within the supervisor's
    crash budget: more deaths per window are a crash loop, which it answers by giving up
    on purpose."""
    gap = (1.5, 2.5) if run.quick else (5.0, 10.0)
    budget = crash_budget(gap[0])
    kills: list[float] = []
    at = run.at(1 / 3) if run.quick else run.started + run.rng.uniform(*gap)
    while at < run.ends - 0.5 or not kills:
        recent = [k for k in kills if budget and k > at - budget[1]]
        if budget and len(recent) >= budget[0]:
            at = recent[0] + budget[1] + 0.1  # when the oldest kill leaves the window
            if at >= run.ends - 0.5:
                run.notes.append(
                    f"kills capped at {budget[0]} per {budget[1]:.0f} s (the supervisor's"
                    " crash budget: one more and it gives up, by design)"
                )
                return
        run.sleep_until(at)
        workers = run.stack.workers()
        if not workers:
            run.fail("server did not come back: `analytics serve` has no worker to kill")
            return
        victim = run.rng.choice(workers)
        os.kill(victim, signal.SIGKILL)
        t = time.monotonic()
        kills.append(t)
        run.faults.append(Fault("SIGKILL worker", t, t, f"pid {victim}"))
        if not run.recovered(t, f"SIGKILL of worker {victim}"):
            return
        at = max(time.monotonic(), t + run.rng.uniform(*gap))


def restart_postgres(run: Run) -> None:
    """`pg_ctl stop -m immediate` a quarter of the way in, down 1 s (quick) or 3 s, then
    `pg_ctl start`; after recovery and past 60 % of the run, SIGKILL of the postmaster
    while a backend is inside a statement (a commit in flight), then start again."""
    pg = run.stack.pg
    assert pg is not None
    down_s = 1.0 if run.quick else 3.0
    run.sleep_until(run.at(0.25))
    t = time.monotonic()
    try:
        pg.stop_immediate()
        time.sleep(down_s)
    finally:
        pg.start()
    run.faults.append(Fault("pg_ctl stop -m immediate", t, time.monotonic(), f"down {down_s} s"))
    if not run.recovered(run.faults[-1].end, "PostgreSQL's immediate stop and start"):
        return
    run.sleep_until(run.at(0.6))
    # Mid-commit: poll the client backends' titles (up to 5 s) until one shows COMMIT;
    # failing that, kill anyway (what they were doing is in the detail).
    backends, busy = pg.client_backends(), []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        busy = pg.in_transaction(backends)
        if any("COMMIT" in doing for doing in busy):
            break  # no sleep in this loop: a COMMIT shows for a millisecond or two
    t = time.monotonic()
    try:
        pid, stragglers = pg.kill_postmaster()
        time.sleep(down_s / 2)
    finally:
        pg.start()
    where = f"backends in: {', '.join(sorted(set(busy)))}" if busy else "no backend busy"
    detail = f"pid {pid}, {where}; {len(stragglers)} orphans SIGKILLed"
    run.faults.append(Fault("SIGKILL postmaster", t, time.monotonic(), detail))
    run.recovered(run.faults[-1].end, "SIGKILL of the postmaster and restart")


def freeze_postgres(run: Run) -> None:
    """SIGSTOP the postmaster and all its children for 5 s (quick: 3 s), then SIGCONT."""
    pg = run.stack.pg
    assert pg is not None
    hold_s = 3.0 if run.quick else 5.0
    run.sleep_until(run.at(0.3))
    t = time.monotonic()
    with pg.frozen() as stopped:
        time.sleep(hold_s)
    run.faults.append(Fault("SIGSTOP postgres", t, time.monotonic(), f"{len(stopped)} processes"))
    run.recovered(run.faults[-1].end, "SIGCONT of PostgreSQL")


def partition(run: Run) -> None:
    """Blackhole the app's TCP path to PostgreSQL (the proxy) for 5 s (quick: 3 s)."""
    proxy = run.stack.proxy
    assert proxy is not None
    hold_s = 3.0 if run.quick else 5.0
    run.sleep_until(run.at(0.3))
    t = time.monotonic()
    try:
        proxy.blackhole()
        time.sleep(hold_s)
    finally:
        proxy.restore()
    detail = f"{hold_s:.0f} s, {proxy.connections} connections through the proxy"
    run.faults.append(Fault("partition app-postgres", t, time.monotonic(), detail))
    run.recovered(run.faults[-1].end, "the partition healed")


def _billing(run: Run, fail_rate: float) -> None:
    assert run.stack.stub is not None
    r = httpx.post(f"{run.stack.stub.url}/admin/config", json={"fail_rate": fail_rate}, timeout=5)
    r.raise_for_status()


def billing_outage(run: Run) -> None:
    """Billing answers every call 503 (`fail_rate` 1.0) from 20 % to 70 % of the run."""
    run.sleep_until(run.at(0.2))
    t = time.monotonic()
    try:
        _billing(run, 1.0)
        run.sleep_until(run.at(0.7))
    finally:
        _billing(run, 0.0)
    assert run.stack.stub is not None
    failed = httpx.get(f"{run.stack.stub.url}/usage", timeout=5).json()["failures"]
    run.faults.append(Fault("billing 503s", t, time.monotonic(), f"{failed} calls failed"))
    if failed == 0:
        run.fail("the billing outage hit no billing call: it tested nothing")


def concurrent_copies(run: Run) -> None:
    """No fault of ours: the producers send each batch 2-5 times at once (see `Load`)."""
    run.sleep_until(run.ends)


def sample_rss(run: Run) -> None:
    """Sample the workers' RSS every 0.5 s (quick) or 2 s; the slope after the first fifth
    (warm-up: pools, caches, allocator arenas) is the leak rate."""
    every = 0.5 if run.quick else 2.0
    while time.monotonic() < run.ends:
        rss = sum(rss_bytes(pid) for pid in run.stack.workers())
        run.samples.append((time.monotonic() - run.started, rss / 2**20))
        time.sleep(every)
    steady = [s for s in run.samples if s[0] >= run.duration_s / 5]
    slope = slope_per_min(steady)
    if run.samples:
        first, last = run.samples[0][1], run.samples[-1][1]
        shown = "n/a" if slope is None else f"{slope:+.2f} MB/min"
        run.notes.append(f"worker RSS {first:.0f} -> {last:.0f} MB, slope {shown}")
