"""`python -m benches.chaos ARGS` from the repository root (what `just chaos ARGS` runs)."""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> int:
    if not __package__:
        # Run as a script: import the package from the repository root instead.
        sys.path[0] = str(Path(__file__).resolve().parents[2])
    from benches.chaos.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
