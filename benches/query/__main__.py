"""`python -m benches.query ARGS` from the repository root (what `just querybench ARGS` runs)."""

from __future__ import annotations

from benches.query.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
