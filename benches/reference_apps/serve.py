"""Serve one reference: `python -m benches.reference_apps.serve --variant bare|copy --port N`
(from the repository root; `python benches/reference_apps/serve.py ...` works too).

Exactly the service's Hypercorn: `analytics.serve.hypercorn_config` (keep-alive 5 s, read
timeout 30 s, header cap, graceful timeout), the same worker class (uvloop by default) and
worker count (1 by default), run by `hypercorn.run.run` as `analytics serve` runs the
service (a supervising process and its worker processes), so only the app differs. `copy`
reads `DATABASE_URL` (an already-migrated database) and stores every row as
`--customer-id`'s. SIGTERM or SIGINT stops it gracefully.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

#: Variant -> the app Hypercorn's workers load (its module is imported in each worker).
APPS = {
    "bare": "benches.reference_apps.bare:create_app()",
    "copy": "benches.reference_apps.plain_copy:create_app()",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="reference-serve", description=__doc__.split("\n")[0])
    p.add_argument("--variant", required=True, choices=sorted(APPS))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="Hypercorn workers (default 1)")
    p.add_argument(
        "--worker-class",
        default="uvloop",
        choices=["asyncio", "uvloop", "trio"],
        help="Hypercorn worker class (default uvloop, as the service)",
    )
    p.add_argument("--customer-id", type=int, help="copy: the customer of every row")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.variant == "copy" and (args.customer_id is None or not os.environ.get("DATABASE_URL")):
        print("copy needs --customer-id and DATABASE_URL", file=sys.stderr)
        return 2
    if not __package__:  # run as a script: import the package from the repository root
        sys.path[0] = str(Path(__file__).resolve().parents[2])

    from hypercorn.run import run

    from analytics.serve import hypercorn_config
    from analytics.settings import Settings
    from benches.reference_apps.plain_copy import CUSTOMER_ENV

    if args.customer_id is not None:
        os.environ[CUSTOMER_ENV] = str(args.customer_id)  # read by every worker
    settings = Settings.from_env(host=args.host, port=args.port, workers=args.workers)
    config = hypercorn_config(settings, args.worker_class)
    config.application_path = APPS[args.variant]
    print(f"reference {args.variant} serving on http://{args.host}:{args.port}", flush=True)
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
