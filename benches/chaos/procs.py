"""What the experiments read from /proc and the signals they send, by process id.

Linux only, like the experiments. Every reader tolerates the process being gone already
(it may die between listing and reading: that is what the experiments do to it), and
answers "nothing" rather than raising.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def children(pid: int) -> list[int]:
    """The direct children of `pid` (from every thread's `children` file), oldest first."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found.extend(int(p) for p in (task / "children").read_text().split())
    return sorted(set(found))


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, parents before their children."""
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop(0))
        out.extend(kids)
        todo.extend(kids)
    return out


def cmdline(pid: int) -> str:
    """The command line (arguments joined by spaces; a process's own title when it set one,
    as PostgreSQL backends do), or '' when the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid`, 0 when it is gone."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return 0


def send(pids: Iterable[int], sig: signal.Signals) -> list[int]:
    """Send `sig` to each of `pids`; the ones it reached."""
    reached = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            reached.append(pid)
    return reached


def wait_gone(pids: Iterable[int], timeout_s: float) -> list[int]:
    """Poll until every one of `pids` has exited or `timeout_s` passed; those still alive."""
    pending = list(pids)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if alive(p)]
        if pending:
            time.sleep(0.05)
    return [p for p in pending if alive(p)]
