"""Which lines blocked the server's event loop during a step, most frequent first.

Two sources, one shape (`{"line", "count", "total_s"}`): the delta of two `/debug/stalls`
answers (the case-study variants serve it), or the watchdog's `loop_stall` log records (this
service logs them). Paths are shortened to what a reader looks up: `asyncio/x.py`,
`py/analytics/x.py`, `benches/...`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

NO_STACK = "(no stack captured while it lasted)"


def short_path(where: str) -> str:
    """`.../lib/python3.11/asyncio/x.py:1 in f` → `asyncio/x.py:1 in f` (same for
    site-packages), `/any/checkout/py/analytics/x.py:1 in f` → `py/analytics/x.py:1 in f`."""
    for marker in ("/site-packages/", "/lib/python3"):
        at = where.rfind(marker)
        if at >= 0:
            rest = where[at + len(marker) :]
            return rest.split("/", 1)[1] if marker == "/lib/python3" else rest
    for marker in ("/py/analytics/", "/benches/"):
        at = where.rfind(marker)
        if at >= 0:
            return where[at + 1 :]
    return where


def _ranked(lines: dict[str, dict[str, Any]], top: int) -> list[dict[str, Any]]:
    return sorted(lines.values(), key=lambda x: (-x["count"], -x["total_s"]))[:top]


def _add(lines: dict[str, dict[str, Any]], label: str, count: int, total_s: float) -> None:
    acc = lines.setdefault(label, {"line": label, "count": 0, "total_s": 0.0})
    acc["count"] += count
    acc["total_s"] = round(acc["total_s"] + total_s, 6)


def stall_culprits(log: bytes, top: int) -> list[dict[str, Any]]:
    """The stalls a server logged (the watchdog's `loop_stall` records, phase "started"), by
    culprit line, most frequent first; a record also stands for the stalls of its stack that
    the log rate limit suppressed before it."""
    lines: dict[str, dict[str, Any]] = {}
    for raw in log.splitlines():
        if b'"loop_stall"' not in raw:
            continue
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        if rec.get("event") != "loop_stall" or rec.get("phase") != "started":
            continue
        label = short_path(str(rec.get("culprit") or NO_STACK))
        count = 1 + int(rec.get("suppressed") or 0)
        _add(lines, label, count, float(rec.get("duration_s") or 0.0))
    return _ranked(lines, top)


def blocking_delta(
    before: Sequence[Mapping[str, Any]] | None, after: Sequence[Mapping[str, Any]] | None, top: int
) -> list[dict[str, Any]] | None:
    """The stalls of a step by blocking line, most frequent first, from two `/debug/stalls`
    group lists (`signature`, `count`, `total_s`, `blocking_line`, `innermost`); None when
    the server has no such endpoint."""
    if after is None:
        return None
    seen = {g["signature"]: g for g in before or ()}
    lines: dict[str, dict[str, Any]] = {}
    for g in after:
        prev = seen.get(g["signature"], {})
        count = g["count"] - prev.get("count", 0)
        if count <= 0:
            continue
        if g.get("blocking_line"):
            label = short_path(g["blocking_line"])
        elif g.get("innermost"):
            label = f"(loop machinery) {short_path(g['innermost'])}"
        else:
            label = NO_STACK
        _add(lines, label, count, g["total_s"] - prev.get("total_s", 0.0))
    return _ranked(lines, top)
