"""One experiment's result (`Outcome`, plain data: the table row and the JSON) and the
verdict: the invariants every experiment must hold, whatever its fault.

- lost = 0: every event a 2xx acknowledged has a row in `events`;
- doubled = 0: no event id has two rows, and the rollups count no more than is stored;
- the rollups (with the events not folded yet) count exactly what is stored: the fold moves
  events into rollups and the watermark past them in one transaction;
- no event was answered `accepted` twice (a retry of a stored event is a duplicate);
- billing was told exactly what is stored, once (the outbox commits with the events);
- every fault was followed by a 2xx (the service came back).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Outcome:
    experiment: str
    title: str
    duration_s: float
    offered_requests: int = 0
    offered_events: int = 0
    #: Requests answered or failed (every copy and every retry of every batch).
    requests: int = 0
    faults: list[dict[str, Any]] = field(default_factory=list)
    acknowledged: int = 0
    accepted: int = 0
    duplicates: int = 0
    over_acknowledged: int = 0
    abandoned: int = 0
    stored: int = 0
    rollup: int = 0
    lost: int = 0
    doubled: int = 0
    events_total: int = 0
    billed: int | None = None
    errors: dict[str, int] = field(default_factory=dict)
    recovery_s: list[float | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    skipped: str | None = None
    samples: list[tuple[float, float]] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.skipped is not None or not self.failures


def judge(o: Outcome) -> list[str]:
    """The invariants `o` breaks, each as a sentence (empty: it holds them all)."""
    broken = []
    if o.lost:
        broken.append(f"{o.lost} acknowledged events are not stored (lost)")
    if o.doubled:
        broken.append(f"{o.doubled} events stored or rolled up more than once (doubled)")
    if o.rollup != o.stored:
        broken.append(f"rollups count {o.rollup} events, {o.stored} are stored")
    if o.over_acknowledged:
        broken.append(f"{o.over_acknowledged} events were answered `accepted` twice")
    if o.accepted > o.stored:
        broken.append(f"answers accepted {o.accepted} events, only {o.stored} are stored")
    if o.billed is not None and o.billed != o.events_total:
        broken.append(
            f"billing recorded {o.billed} events, {o.events_total} are stored"
            + (" (counted twice)" if o.billed > o.events_total else " (usage missing)")
        )
    if o.acknowledged == 0:
        broken.append("nothing was acknowledged: the experiment measured nothing")
    for fault, rec in zip(o.faults, o.recovery_s, strict=True):
        if rec is None and fault.get("recovers", True):
            broken.append(f"no 2xx after `{fault['kind']}` (server did not come back)")
    return broken
