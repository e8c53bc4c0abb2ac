"""The load harness, runnable without the `analytics` command: the same as
`analytics loadtest ...` and `just load ...` (see `analytics.loadtest` for what it does).

    python benches/load/run.py --quick
    python benches/load/run.py --compare --quick
    python benches/load/run.py --scenarios ingest_single --rates 1000,2000,3000 --duration 20
"""

from __future__ import annotations

import sys

from analytics.loadtest import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
