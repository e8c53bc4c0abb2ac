"""The `analytics` command line as a subprocess against a test database (CLI commands are
tested the way an operator runs them)."""

from __future__ import annotations

import os
import subprocess
import sys


def cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m analytics.cli ARGS` with `DATABASE_URL=dsn`; its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "analytics.cli", *args],
        env={**os.environ, "DATABASE_URL": dsn},
        capture_output=True,
        text=True,
        timeout=60,
    )
