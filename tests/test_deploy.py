"""The files under deploy/: Prometheus rules and the Grafana dashboard.

- Every metric the dashboard and the rules query is one the service exports, with labels it
  has (derived from `analytics.runtime.prometheus` and the prometheus-client registry, so a
  renamed metric breaks this test rather than a panel in production).
- `promtool check rules` accepts alerts.yml, `promtool test rules` passes alerts_test.yml,
  and every dashboard query parses as PromQL.

promtool comes from Debian's `prometheus` package, PyYAML from the dev dependencies. Without
them these tests skip, except when the `CI` environment variable is set (and not "0" or
"false"): then they fail, so CI cannot skip them silently.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from analytics.runtime import prometheus

IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false")

try:
    import yaml
except ImportError:
    if IN_CI:
        raise
    pytest.skip("PyYAML (a dev dependency) is not installed", allow_module_level=True)

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "analytics.json"

# Labels Prometheus attaches to every scraped series (the target's), besides the metric's own.
TARGET_LABELS = {"job", "instance"}
# Metrics that are not the service's but that the rules may use.
EXTERNAL_SERIES = {"up"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VAR = re.compile(r"\$\{?\w+\}?")
_IDENT = re.compile(r"(?<![\w:.])[A-Za-z_:][\w:]*")
_SELECTOR = re.compile(r"(?<![\w:])(analytics_\w+)\s*\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")


def exported_series() -> dict[str, set[str]]:
    """Every series name the service exposes, mapped to the label names it carries.

    Names come from the registry's metric families, as a scrape would show them: a counter
    family `x` is exposed as `x_total` (its `x_created` series is not for querying), a
    histogram `x` as `x_bucket` (with `le`), `x_sum` and `x_count`, a gauge as itself.
    """
    labels = {
        m._name: set(m._labelnames)
        for m in vars(prometheus).values()
        if isinstance(m, MetricWrapperBase)
    }
    series: dict[str, set[str]] = {}
    for family in REGISTRY.collect():
        if not family.name.startswith("analytics_"):
            continue
        own = labels[family.name]
        if family.type == "counter":
            series[f"{family.name}_total"] = own
        elif family.type == "histogram":
            series[f"{family.name}_bucket"] = own | {"le"}
            series[f"{family.name}_sum"] = own
            series[f"{family.name}_count"] = own
        else:
            series[family.name] = own
    return series


def test_exported_series_are_the_ones_in_prometheus_py() -> None:
    series = exported_series()
    assert "analytics_http_requests_total" in series
    assert "analytics_http_requests" not in series
    assert series["analytics_loop_lag_seconds_bucket"] == {"le"}
    assert series["analytics_limiter_waiting"] == {"limiter"}


def check_expr(expr: str, series: dict[str, set[str]], recorded: set[str]) -> list[str]:
    """Problems with the metric names and label matchers `expr` uses (empty if none)."""
    problems = []
    # String literals hold label values and regexes, never metric names; Grafana variables
    # ($instance, $__rate_interval, ${route}) stand for values and durations.
    code = _GRAFANA_VAR.sub("1", _STRING.sub('""', expr))
    for name in _IDENT.findall(code):
        if name.startswith("analytics_") and name not in series:
            problems.append(f"{name} is not a series the service exports")
        elif ":" in name and name not in recorded:
            problems.append(f"{name} is not a recording rule in {ALERTS.name}")
    for name, matchers in _SELECTOR.findall(code):
        allowed = series.get(name, set()) | TARGET_LABELS
        for label in _MATCHER_LABEL.findall(matchers):
            if label not in allowed and label != "__name__":
                problems.append(f"{name} has no label {label!r}")
    used = {n for n in _IDENT.findall(code) if n.startswith("analytics_") or ":" in n}
    if not used and not set(_IDENT.findall(code)) & EXTERNAL_SERIES:
        problems.append("queries no analytics metric")
    return problems


def test_check_expr_catches_mistakes() -> None:
    series = exported_series()
    good = 'sum by (le) (rate(analytics_loop_lag_seconds_bucket{instance=~"$instance"}[5m]))'
    assert check_expr(good, series, set()) == []
    assert check_expr("rate(analytics_http_requests[5m])", series, set())
    assert check_expr("rate(analytics_http_requests_created[5m])", series, set())
    assert check_expr("analytics_loop_lag_seconds", series, set())  # the histogram's bare name
    assert check_expr('analytics_http_request_duration_seconds_count{status="500"}', series, set())
    assert check_expr("job:analytics_nope:rate5m", series, set())
    assert check_expr('analytics_limiter_waiting{limiter="analytics_x"}', series, set()) == []


# ---- Prometheus rules -------------------------------------------------------------------------


def load_rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_rules_use_only_exported_metrics() -> None:
    series = exported_series()
    rules = load_rules()
    recorded = {r["record"] for r in rules if "record" in r}
    problems = {
        r.get("alert") or r["record"]: p
        for r in rules
        if (p := check_expr(r["expr"], series, recorded))
    }
    assert problems == {}


def test_alerts_are_complete() -> None:
    doc = yaml.safe_load(ALERTS.read_text())
    groups = {g["name"]: g["rules"] for g in doc["groups"]}
    alerts = [r for r in groups["analytics"] if "alert" in r]
    names = {a["alert"] for a in alerts}
    assert {
        "AnalyticsLoopLagHigh",
        "AnalyticsLoopStallsFrequent",
        "AnalyticsHigh5xxRatio",
        "AnalyticsWriterInboxSaturated",
        "AnalyticsLimiterQueueing",
        "AnalyticsLimiterExhausted",
        "AnalyticsBillingBacklog",
        "AnalyticsBillingFailures",
    } <= names
    for a in alerts:
        assert re.fullmatch(r"\d+[smh]", a.get("for", "")), a["alert"]
        assert a["labels"]["severity"] in {"warning", "critical"}, a["alert"]
        assert {"summary", "description", "runbook"} <= a["annotations"].keys(), a["alert"]
    lag = next(a for a in alerts if a["alert"] == "AnalyticsLoopLagHigh")
    assert "analytics_loop_lag_seconds_bucket" in lag["expr"]
    assert "> 0.05" in lag["expr"]
    assert lag["for"] == "5m"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if IN_CI:
            pytest.fail("promtool is missing in CI: apt-get install -y prometheus")
        pytest.skip("promtool is not installed (apt-get install prometheus); CI must have it")
    return path


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_promtool_check_rules() -> None:
    result = run(promtool(), "check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    """The loop-lag, stall, 5xx, queue, limiter and billing alerts fire on unhealthy series,
    only after their `for:`, and not on healthy ones (see alerts_test.yml)."""
    result = run(promtool(), "test", "rules", ALERTS_TEST.name, cwd=ALERTS_TEST.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = yaml.safe_load(ALERTS_TEST.read_text())
    alertnames = {
        case["alertname"]
        for test in tested["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {"AnalyticsLoopLagHigh", "AnalyticsHigh5xxRatio"} <= alertnames


# ---- Grafana dashboard ------------------------------------------------------------------------


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def walk_panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def dashboard_queries(dashboard: dict) -> dict[str, str]:
    """Every PromQL query of the dashboard (panel targets and query variables) by where it is."""
    queries = {}
    for panel in walk_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            queries[f"panel {panel['title']!r} target {target['refId']}"] = target["expr"]
    for var in dashboard.get("templating", {}).get("list", []):
        if var["type"] == "query":
            query = var["query"]
            query = query["query"] if isinstance(query, dict) else query
            # label_values(<selector>, <label>): the selector is PromQL.
            if m := re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", query):
                query = m.group(1)
            queries[f"variable {var['name']!r}"] = query
    return queries


def test_dashboard_parses_and_is_portable() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = list(walk_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in ("loop lag", "stall", "in-flight", "inbox", "latency", "limiter", "billing"):
        assert topic in titles


def test_dashboard_uses_only_exported_metrics() -> None:
    series = exported_series()
    recorded = {r["record"] for r in load_rules() if "record" in r}
    queries = dashboard_queries(load_dashboard())
    assert len(queries) > 20
    problems = {
        where: p for where, expr in queries.items() if (p := check_expr(expr, series, recorded))
    }
    assert problems == {}


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool has no offline expression checker, so the queries (Grafana variables replaced
    by sample values) go into a throwaway rules file for `promtool check rules`."""
    values = {"__rate_interval": "5m", "__interval": "1m", "instance": ".*", "route": "/v1/events"}

    def substitute(expr: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], expr)

    queries = dashboard_queries(load_dashboard())
    rules = [
        {"record": f"dashboard:query_{i}:check", "expr": substitute(expr)}
        for i, expr in enumerate(queries.values())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(promtool(), "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
