"""Which cores each process runs on, and how much CPU a process tree used (Linux /proc).

The server and the load generator are pinned apart with `taskset` so that one cannot steal
the other's core and the report can say which side ran out. Where `taskset` or a second core
is missing nothing is pinned, and where /proc is missing no CPU is reported.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence


def cpu_plan(workers: int) -> tuple[str | None, str | None]:
    """(server cores, k6 cores) for taskset, or (None, None) when pinning is unavailable.

    One worker: the server on core 0, k6 on the last core. More workers: the server on cores
    0..workers-1 (sharing with k6 when that is every core). PostgreSQL and the billing stub
    are not pinned: with PostgreSQL on k6's core, commits wait behind k6 and the client's
    own timing suffers (measured: p50 doubled at 1,000 req/s).
    """
    n = os.cpu_count() or 1
    if shutil.which("taskset") is None or n < 2:
        return None, None
    top = min(max(workers, 1), n) - 1
    return ("0" if top == 0 else f"0-{top}"), str(n - 1)


def pinned(cpus: str | None, argv: list[str]) -> list[str]:
    """`argv` run on `cpus` (a taskset list), or as is when `cpus` is None."""
    return ["taskset", "-c", cpus, *argv] if cpus is not None else argv


def proc_stats() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, utime + stime in seconds) of every process, from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                raw = f.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()  # after "pid (comm) "
        out[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return out


def tree_cpu(roots: Mapping[str, int | Sequence[int] | None]) -> dict[str, float]:
    """CPU seconds used so far by each named process (or processes) and its descendants
    (Linux; empty elsewhere). Exited descendants' time is not counted: compare live process
    trees only."""
    if not os.path.isdir("/proc"):
        return {}
    stats = proc_stats()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[str, float] = {}
    for name, root in roots.items():
        tops = [root] if isinstance(root, int) else list(root or ())
        todo = [pid for pid in tops if pid in stats]
        if not todo:
            continue
        total = 0.0
        while todo:
            pid = todo.pop()
            total += stats[pid][1]
            todo += children.get(pid, [])
        out[name] = total
    return out
