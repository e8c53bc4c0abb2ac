"""`--profile`: py-spy sampling the server during a step, summed by where the code lives.

Sampling runs on k6's core and does not pause the server (`--nonblocking`: some stacks come
out torn, a fair price for not perturbing the run). Without py-spy installed a step simply
has no profile.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from benches.harness.cpu import pinned, proc_stats
from benches.harness.stack import Stack, stop_process

#: Where a sampled frame's code lives, by the first marker in its "func (file:line)" text.
PROFILE_GROUPS = (
    ("analytics/", "analytics (this service)"),
    ("benches/casestudy/", "case-study variant"),
    ("benches/reference_apps/", "reference app"),
    ("hypercorn/", "hypercorn + h11"),
    ("h11/", "hypercorn + h11"),
    ("starlette/", "starlette"),
    ("asyncpg/", "asyncpg"),
    ("psycopg", "psycopg"),
    ("anyio/", "anyio"),
    ("prometheus_client/", "prometheus_client"),
    ("asyncio/", "asyncio"),
    ("uvloop/", "asyncio"),
    ("logging/", "logging"),
    ("threading.py", "threads (waits, log and watchdog threads)"),
    ("concurrent/", "threads (waits, log and watchdog threads)"),
)


def summarize_profile(raw: str, top: int = 8) -> dict[str, Any]:
    """py-spy's raw (collapsed) output, `frame;frame;... count` per line, summed by where
    the innermost frame's code lives (`by_group`, shares of all samples) and by innermost
    function (`top_self`). Empty for no samples."""
    groups: dict[str, int] = {}
    leaves: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, n = line.rstrip().rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        total += count
        leaf = stack.rsplit(";", 1)[-1]
        group = next((name for marker, name in PROFILE_GROUPS if marker in leaf), "other")
        groups[group] = groups.get(group, 0) + count
        leaves[leaf] = leaves.get(leaf, 0) + count
    if not total:
        return {}
    share = sorted(((k, round(v / total, 3)) for k, v in groups.items()), key=lambda kv: -kv[1])
    tops = sorted(leaves.items(), key=lambda kv: -kv[1])[:top]
    return {
        "samples": total,
        "by_group": dict(share),
        "top_self": [{"frame": k, "share": round(v / total, 3)} for k, v in tops],
    }


class Profiler:
    """py-spy recording the server's Python processes (the Hypercorn workers, or the server
    itself without any) for `seconds`, started on construction; `result()` waits for it."""

    def __init__(
        self, stack: Stack, seconds: int, opts: argparse.Namespace, out: Path, step: str
    ) -> None:
        self.procs: list[tuple[subprocess.Popen, Path]] = []
        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which(
            "py-spy"
        )
        if spy is None or stack.server is None:
            return
        server = stack.server.pid
        stats = proc_stats() if os.path.isdir("/proc") else {}
        workers = [pid for pid, (ppid, _) in stats.items() if ppid == server] or [server]
        for pid in workers:
            raw = out / f"py-spy-{stack.mode}-{step}-{pid}.txt"
            cmd = [spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "250"]
            cmd += ["--nonblocking", "--format", "raw", "--output", str(raw)]
            proc = subprocess.Popen(
                pinned(opts.k6_cpus, cmd),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            self.procs.append((proc, raw))

    def result(self) -> dict[str, Any]:
        """The summary of every recording (each given 30 s to finish writing, then stopped).
        The raw recordings stay in the run's directory as collapsed stacks, one file per
        step and process (`py-spy-<mode>-<scenario>-<rate>-<pid>.txt`: `inferno-flamegraph`
        or speedscope read them)."""
        text = []
        for proc, raw in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stop_process(proc, timeout=5)
            with contextlib.suppress(OSError):
                text.append(raw.read_text())  # kept beside the results, for flame graphs
        return summarize_profile("\n".join(text))
