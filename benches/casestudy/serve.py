"""Serve one case-study variant: `python -m benches.casestudy.serve --variant naive --port N`
(from the repository root; `python benches/casestudy/serve.py ...` works too).

Reads `DATABASE_URL` (an already-migrated database) and `BILLING_URL` (the billing service,
e.g. `python -m analytics.billing.stub --port M --latency-ms 20`) from the environment.
Serves with Hypercorn's asyncio worker, one worker, in this process, with the real service's
Hypercorn settings (`analytics.serve.hypercorn_config`: keep-alive 5 s, read timeout 30 s,
graceful timeout 10 s). SIGTERM or SIGINT stops it gracefully: in-flight requests finish,
the lifespan closes the pool, and the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from pathlib import Path

VARIANTS = ("naive", "threaded")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="casestudy-serve", description=__doc__.split("\n")[0])
    p.add_argument("--variant", required=True, choices=VARIANTS)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--loop",
        default="asyncio",
        choices=["asyncio", "uvloop"],
        help="event loop (default asyncio, as the case study's service ran)",
    )
    p.add_argument("--db-pool-size", type=int, default=10, help="psycopg pool size (default 10)")
    p.add_argument(
        "--stall-threshold-ms",
        type=float,
        default=50.0,
        help="the loop watchdog's stall threshold (default 50)",
    )
    p.add_argument("--no-watchdog", action="store_true", help="do not run the loop watchdog")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    database_url = os.environ.get("DATABASE_URL", "")
    billing_url = os.environ.get("BILLING_URL", "")
    if not database_url or not billing_url:
        print("DATABASE_URL and BILLING_URL must be set", file=sys.stderr)
        return 2
    if not __package__:  # run as a script: make `benches.casestudy` importable
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

    from hypercorn.asyncio import serve

    from analytics.serve import hypercorn_config
    from analytics.settings import Settings
    from benches.casestudy.common import Config

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    config = Config(
        database_url=database_url,
        billing_url=billing_url,
        db_pool_size=args.db_pool_size,
        watchdog=not args.no_watchdog,
        stall_threshold_s=args.stall_threshold_ms / 1000,
    )
    app = importlib.import_module(f"benches.casestudy.{args.variant}").create_app(config)
    hc = hypercorn_config(Settings(host=args.host, port=args.port, workers=1), "asyncio")
    print(f"casestudy {args.variant} serving on http://{args.host}:{args.port}", flush=True)
    # No shutdown_trigger: Hypercorn's asyncio worker then stops on SIGTERM and SIGINT itself.
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(app, hc))
    else:
        asyncio.run(serve(app, hc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
