"""The results as a picture: latency percentiles against offered load (`latency.png`).

Each mode has its colour; the references (benches/reference_apps) are drawn beside the
service with square markers and dotted p99 lines, so a ceiling never reads as a contender.

matplotlib is imported when a plot is drawn, not when the harness starts, and always with the
Agg backend (no display, same pixels everywhere).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

from benches.harness.results import Step

COLORS = {
    "naive": "tab:red",
    "threaded": "tab:orange",
    "service": "tab:blue",
    "bare": "tab:gray",
    "copy": "tab:green",
}
#: p99 line style and marker per mode: the references dotted, with squares.
STYLES = {"bare": ":s", "copy": ":s"}


def render_plot(steps: Sequence[Step], path: Path, title: str = "") -> Path:
    """One panel per scenario, one colour per mode (p99 solid, p50 dashed, saturated steps
    marked x), both axes logarithmic; batches are plotted against offered events/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    scenarios = list(dict.fromkeys(s.scenario for s in steps)) or ["none"]
    fig, axes = plt.subplots(
        1, len(scenarios), figsize=(4.6 * len(scenarios), 3.8), squeeze=False, dpi=90
    )
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        mine = [s for s in steps if s.scenario == scenario]
        per_event = any(s.events_per_request > 1 for s in mine)
        for mode in dict.fromkeys(s.mode for s in mine):
            pts = sorted((s for s in mine if s.mode == mode), key=lambda s: s.offered_rps)
            pts = [s for s in pts if s.p99_ms is not None]
            if not pts:
                continue
            xs = [s.offered_rps * (s.events_per_request if per_event else 1) for s in pts]
            color = COLORS.get(mode)
            style = STYLES.get(mode, "-o")
            ax.plot(xs, [s.p99_ms for s in pts], style, color=color, label=f"{mode} p99", ms=4)
            ax.plot(xs, [s.p50_ms for s in pts], "--", color=color, label=f"{mode} p50", lw=1)
            sat = [(x, s.p99_ms) for x, s in zip(xs, pts, strict=True) if s.saturated]
            if sat:
                ax.plot(*zip(*sat, strict=True), "x", color="black", ms=9, mew=2)
        if any(s.saturated for s in mine):
            ax.plot([], [], "x", color="black", ms=7, mew=2, label="saturated")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(ticker.FuncFormatter(_tick))
            axis.set_minor_formatter(ticker.NullFormatter())
        ax.set_title(scenario)
        ax.set_xlabel("offered events/s" if per_event else "offered requests/s")
        ax.set_ylabel("latency (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        width = round(16 * fig.get_figwidth())  # characters of 8 pt text per line
        fig.suptitle(textwrap.fill(title, width), fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _tick(value: float, _pos: object) -> str:
    return f"{value:,.0f}" if value >= 1 else f"{value:g}"
