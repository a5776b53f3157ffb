"""The Grafana dashboard k8s/grafana/hazard-cascade.json queries only what serving exports.

Every PromQL expression (panel targets and template variables) is taken apart: the metric names
it reads must be among the `ray_hazard_*` series that serve/metrics.py defines (Ray's metrics
agent exports a metric `name` as `ray_<name>`, counters with `_total`, histograms as
`_bucket`/`_sum`/`_count`), and the labels it filters or groups by must be that metric's tag keys
(plus `le` for histograms) or the target labels Prometheus adds when scraping a pod.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "k8s" / "grafana" / "hazard-cascade.json"

# The serving metrics contract (docs: the lead's serving notes): series name -> labels.
CONTRACT = {
    "ray_hazard_requests_total": {"route", "status"},
    "ray_hazard_stage_latency_seconds_bucket": {"stage", "le"},
    "ray_hazard_stage_latency_seconds_sum": {"stage"},
    "ray_hazard_stage_latency_seconds_count": {"stage"},
    "ray_hazard_images_scored_total": {"escalated"},
    "ray_hazard_model_batch_size_bucket": {"model", "le"},
    "ray_hazard_queue_depth": {"state"},
    "ray_hazard_images_refused_total": {"reason"},
    "ray_hazard_admission_rejected_total": {"reason"},
}
# Labels the Prometheus Operator puts on every series scraped through a PodMonitor.
TARGET_LABELS = {"namespace", "pod", "container", "instance", "job", "endpoint"}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}  # fmt: skip


def exported_series() -> dict[str, set[str]]:
    """Series name -> labels, from the metric definitions in serve/metrics.py."""
    source = (REPO / "serve" / "metrics.py").read_text()
    series: dict[str, set[str]] = {}
    pattern = r"(Counter|Histogram|Gauge)\(\s*\"(\w+)\".*?tag_keys=\(([^)]*)\)"
    for kind, name, keys in re.findall(pattern, source, re.S):
        labels = set(re.findall(r"\"(\w+)\"", keys))
        base = f"ray_{name}"
        if kind == "Counter":
            series[f"{base}_total"] = labels
        elif kind == "Gauge":
            series[base] = labels
        else:
            series[f"{base}_bucket"] = labels | {"le"}
            series[f"{base}_sum"] = series[f"{base}_count"] = labels
    return series


def parse(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) an expression reads."""
    labels: set[str] = set()
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    for matchers in re.findall(r"\{([^}]*)\}", text):
        labels |= set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors, $__rate_interval
    for clause in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", text):
        labels |= set(re.findall(r"[A-Za-z_]\w*", clause))
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", text)
    # label_values(metric, label): Grafana's variable query
    for metric, label in re.findall(r"label_values\(\s*(\w+)\s*,\s*(\w+)\s*\)", text):
        labels.add(label)
        text = text.replace(f"label_values({metric}, {label})", f" {metric} ")
    names = {
        m.group(0)
        for m in re.finditer(r"[A-Za-z_:][\w:]*", text)
        if not re.match(r"\s*\(", text[m.end() :]) and m.group(0).lower() not in PROMQL_WORDS
    }
    return names, labels


def expressions(dashboard: dict) -> list[tuple[str, str]]:
    out = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            out.extend((panel["title"], t["expr"]) for t in panel.get("targets", []))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        if isinstance(query, dict):
            out.append((f"variable {var['name']}", query["query"]))
    return out


def problems(expr: str, series: dict[str, set[str]]) -> list[str]:
    names, labels = parse(expr)
    bad = [f"unknown metric {n}" for n in sorted(names - set(series))]
    if not names:
        bad.append("reads no metric")
    allowed = TARGET_LABELS.union(*(series.get(n, set()) for n in names))
    bad += [f"unknown label {lbl}" for lbl in sorted(labels - allowed)]
    return bad


def test_serving_exports_the_contracted_series() -> None:
    series = exported_series()
    for name, labels in CONTRACT.items():
        assert series.get(name) == labels, (name, series.get(name))


def test_every_expression_reads_only_serving_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = expressions(dashboard)
    assert len(exprs) >= 10
    series = exported_series()
    found = {f"{title}: {expr}: {p}" for title, expr in exprs for p in problems(expr, series)}
    assert not found, "\n".join(sorted(found))


def test_dashboard_shows_what_operators_watch() -> None:
    exprs = " ".join(e for _, e in expressions(json.loads(DASHBOARD.read_text())))
    squashed = re.sub(r"\s+", "", exprs)
    for needed in (
        "sumby(status)(rate(ray_hazard_requests_total",  # requests by status
        "histogram_quantile(0.5,sumby(le,stage)(rate(ray_hazard_stage_latency_seconds_bucket",
        "histogram_quantile(0.99,sumby(le,stage)(rate(ray_hazard_stage_latency_seconds_bucket",
        'ray_hazard_images_scored_total{namespace=~"$namespace",escalated="true"}',
        'ray_hazard_requests_total{namespace=~"$namespace",status="503"}',
        "ray_hazard_queue_depth",
        "ray_hazard_images_refused_total",
    ):
        assert needed in squashed, needed


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("sum(rate(ray_serve_num_http_requests_total[5m]))", ["unknown metric"]),
        ('sum by (pod) (ray_hazard_queue_depth{model="base"})', ["unknown label model"]),
        ("sum by (route) (rate(ray_hazard_requests_total[5m]))", []),
        ("histogram_quantile(0.9, rate(ray_hazard_stage_latency_seconds[1m]))", ["unknown"]),
        ('rate(ray_hazard_requests_total{status=~"5.."}[5m]) > bool 0', []),
        ("vector(1)", ["reads no metric"]),
    ],
)
def test_expression_check_is_not_vacuous(expr: str, expected: list[str]) -> None:
    found = problems(expr, exported_series())
    assert len(found) == len(expected), found
    for prefix, problem in zip(expected, found, strict=True):
        assert problem.startswith(prefix), found
