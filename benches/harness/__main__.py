"""`python -m benches.harness ARGS` from the repository root (what `just load ARGS` runs);
`python benches/harness ARGS` works too."""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> int:
    if not __package__:
        # Run as a script, sys.path[0] is this directory: import the package from the
        # repository root instead, so its modules (k6, cli, ...) shadow no top-level name.
        sys.path[0] = str(Path(__file__).resolve().parents[2])
    from benches.harness.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
