"""Shared payloads for the benchmarks: realistic ~1.5 KB events."""

import json
import random

NOW_US = 1_700_000_000_000_000


def make_event(i: int, rng: random.Random) -> dict:
    """A page-view-like event of about 1.5 KB, as a web SDK would send it."""
    return {
        "name": rng.choice(["Page View", "Click", "Sign Up", "Add To Cart"]),
        "event_id": f"evt-{i:012d}-{rng.getrandbits(48):012x}",
        "ts": 1_699_999_000_000 + i,
        "user_id": f"user-{rng.randrange(100_000)}",
        "value": round(rng.random() * 100, 2),
        "properties": {
            "path": f"/products/{rng.randrange(5000)}/details",
            "referrer": "https://www.example.com/search?q=running+shoes&page=2",
            "utm": {"source": "newsletter", "medium": "email", "campaign": "winter-sale-2023"},
            "country": rng.choice(["DE", "FR", "US", "BR", "JP"]),
            "browser": {"name": "Firefox", "version": "120.0", "os": "Linux"},
            "screen": {"width": 1920, "height": 1080, "density": 1.5},
            "session": {"id": f"s-{rng.getrandbits(64):016x}", "page_count": rng.randrange(40)},
            "user_agent": (
                "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0 "
                "AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.0.0 Safari/537.36"
            ),
            "cart": {"items": rng.randrange(10), "currency": "EUR", "total": 129.95},
            "experiment": {"checkout_v2": True, "bucket": rng.randrange(100)},
            "tags": ["sale", "winter", "shoes", "running"],
            "title": "Trail Running Shoes, Waterproof, Men's Size 44 - Example Store Products",
            "description": "x" * 560,
        },
    }


def single_event_body() -> bytes:
    return json.dumps(make_event(1, random.Random(1))).encode()


def batch_body(n: int, seed: int = 7) -> bytes:
    rng = random.Random(seed)
    return json.dumps({"events": [make_event(i, rng) for i in range(n)]}).encode()


def _time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e3), ("us", 1e6)):
        if seconds * scale >= 1.0:
            return f"{seconds * scale:,.1f} {unit}"
    return f"{seconds * 1e9:,.0f} ns"


def pytest_terminal_summary(terminalreporter, config):
    """One table for every benchmark, with one throughput figure: events/s, the events one
    call handles (`extra_info["events"]`) over the median time of a call. The median, not
    the mean: on a shared machine a few slow rounds (GC, another process) move the mean, not
    the median. pytest-benchmark's own table (`just bench` runs it with --benchmark-quiet)
    would add OPS, 1 / mean per call, a second and different figure. Then the ratios."""
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    rate = {}
    write = terminalreporter.write_line
    terminalreporter.section("benchmarks: median time per call; events/s = events / median")
    rows = [("benchmark", "median", "min", "rounds", "events/call", "events/s")]
    for bench in sorted(session.benchmarks, key=lambda b: b.fullname):
        if not bench.stats:
            continue
        stats, events = bench.stats, bench.extra_info.get("events")
        if events:
            rate[bench.name] = events / stats.median
        rows.append(
            (
                bench.name,
                _time(stats.median),
                _time(stats.min),
                f"{stats.rounds}",
                f"{events:,}" if events else "-",
                f"{rate[bench.name]:,.0f}" if events else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        rest = (c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))
        write("  ".join([row[0].ljust(widths[0]), *rest]))

    def ratio(label, a, b):
        if a in rate and b in rate:
            write(f"{label:55s} {rate[a] / rate[b]:>14.2f}x")

    write("")
    write("ratios of events/s:")
    for size in ("single_event", "batch_1000"):
        ratio(f"{size}: rust / reference", f"test_{size}[rust]", f"test_{size}[reference]")
        ratio(f"{size}: rust / orjson_rules", f"test_{size}[rust]", f"test_{size}[orjson_rules]")
    for impl in ("rust", "reference"):
        ratio(
            f"{impl}: 2 threads / 1 thread",
            f"test_gil_scaling[{impl}-2]",
            f"test_gil_scaling[{impl}-1]",
        )
