"""Metric analysis of a rollout: PromQL over the app's `ray_hazard_*` series in a cluster's
Prometheus, read before the upgrade (`baseline`) and during or after the soak (`analyse`).

Four checks, each over the last `windowSeconds` of the series selected by `labels`:
- `errorRatio`: server errors (5xx other than 503) over all requests on the scoring routes;
- `refusalRatio`: 503s (admission or an overloaded model) over the same requests;
- `p99Latency`: the `quantile` of the per-image `total` stage latency histogram;
- `escalationRate`: images the specialist was consulted on over images scored.
A check passes when its value is under its absolute `max` and within `maxIncrease` (ratios) or
`maxRatio` (latency) of the baseline. Below `minRequests` requests in the window (or with no
data) a check says so and passes, unless `failOnLowTraffic`.

Counters use `increase()`: a series born inside the window (a new replica's, the first 5xx of
a version) loses what it counted before its first scrape, at most one scrape interval's worth.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import httpx
from pydantic import Field, field_validator, model_validator

from hazard.config.serve import APP_NAME
from hazard.deploy.spec import CamelModel

REQUESTS = "ray_hazard_requests_total"
LATENCY_BUCKETS = "ray_hazard_stage_latency_seconds_bucket"
SCORED = "ray_hazard_images_scored_total"
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
CHECKS = ("error_ratio", "refusal_ratio", "p99_latency", "escalation_rate")


class PrometheusError(RuntimeError):
    """A query Prometheus did not answer with one number or an empty vector."""


class RatioCheck(CamelModel):
    """A ratio in [0, 1]: an absolute ceiling and/or a change from the baseline."""

    max: float | None = Field(None, ge=0, le=1, description="Fail above this value.")
    max_increase: float | None = Field(
        None, ge=0, description="Fail above the baseline's value plus this."
    )
    max_decrease: float | None = Field(
        None, ge=0, description="Fail below the baseline's value minus this."
    )


class LatencyCheck(CamelModel):
    """A latency quantile in seconds: an absolute ceiling and/or a multiple of the baseline."""

    quantile: float = Field(0.99, gt=0, lt=1, description="Quantile of the latency histogram.")
    stage: str = Field("total", min_length=1, description="`stage` label of the histogram.")
    max: float | None = Field(None, gt=0, description="Fail above this many seconds.")
    max_ratio: float | None = Field(
        None, ge=1, description="Fail above the baseline's value times this."
    )


class MetricAnalysis(CamelModel):
    """The metric analysis policy of a rollout (`analysis:` in the clusters file)."""

    window_seconds: int = Field(300, ge=10, description="Seconds of data each query looks at.")
    labels: dict[str, str] = Field(
        default_factory=lambda: {"application": APP_NAME},
        description="Label matchers selecting the app's series (Serve's `application`, and "
        "e.g. `namespace` where Prometheus scrapes several releases).",
    )
    routes: str = Field(
        "/v1/score|/v1/score/batch",
        min_length=1,
        description="Regex of the `route` label values whose requests count.",
    )
    min_requests: int = Field(
        50, ge=1, description="Fewer requests than this in the window: not enough traffic."
    )
    fail_on_low_traffic: bool = Field(
        False, description="Whether 'not enough traffic' or 'no data' fails a check."
    )
    timeout_seconds: float = Field(10, gt=0, description="Timeout of one Prometheus query.")
    # defaults written with the aliases (the models take their camelCase keys only); null
    # in the clusters file turns a check off
    error_ratio: RatioCheck | None = RatioCheck(max=0.02, maxIncrease=0.01)
    refusal_ratio: RatioCheck | None = RatioCheck(max=0.05, maxIncrease=0.02)
    p99_latency: LatencyCheck | None = LatencyCheck(maxRatio=1.5)
    escalation_rate: RatioCheck | None = RatioCheck(maxIncrease=0.15, maxDecrease=0.15)

    @field_validator("labels")
    @classmethod
    def _label_names(cls, labels: dict[str, str]) -> dict[str, str]:
        bad = [name for name in labels if not LABEL_NAME.match(name)]
        if bad:
            raise ValueError(f"not Prometheus label names: {bad}")
        return labels

    @model_validator(mode="after")
    def _some_check(self) -> MetricAnalysis:
        if all(getattr(self, name) is None for name in CHECKS):
            raise ValueError("every check is disabled; leave out `analysis` instead")
        return self


# -- PromQL ------------------------------------------------------------------------------------
def _quote(value: str) -> str:
    """A PromQL string literal."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _selector(labels: Mapping[str, str], *extra: str) -> str:
    matchers = [f"{name}={_quote(value)}" for name, value in labels.items()]
    return "{" + ",".join([*matchers, *extra]) + "}"


def _increase(metric: str, labels: Mapping[str, str], window: int, *extra: str) -> str:
    return f"sum(increase({metric}{_selector(labels, *extra)}[{window}s]))"


def _ratio(numerator: str, denominator: str) -> str:
    """numerator / denominator, 0 where the numerator has no series (nothing counted yet) and
    empty (no data) where the denominator has none."""
    return f"({numerator} or vector(0)) / {denominator}"


def queries(policy: MetricAnalysis, labels: Mapping[str, str] | None = None) -> dict[str, str]:
    """The PromQL of the request count (`requests`) and of each enabled check."""
    sel = {**policy.labels, **(labels or {})}
    bad = [name for name in sel if not LABEL_NAME.match(name)]
    if bad:
        raise ValueError(f"not Prometheus label names: {bad}")
    w, route = policy.window_seconds, f"route=~{_quote(policy.routes)}"
    requests = _increase(REQUESTS, sel, w, route)
    out = {"requests": requests}
    if policy.error_ratio:
        errors = _increase(REQUESTS, sel, w, route, 'status=~"5.."', 'status!="503"')
        out["error_ratio"] = _ratio(errors, requests)
    if policy.refusal_ratio:
        out["refusal_ratio"] = _ratio(_increase(REQUESTS, sel, w, route, 'status="503"'), requests)
    if lat := policy.p99_latency:
        buckets = f"{LATENCY_BUCKETS}{_selector(sel, f'stage={_quote(lat.stage)}')}[{w}s]"
        out["p99_latency"] = f"histogram_quantile({lat.quantile}, sum by (le) (rate({buckets})))"
    if policy.escalation_rate:
        escalated = _increase(SCORED, sel, w, 'escalated="true"')
        out["escalation_rate"] = _ratio(escalated, _increase(SCORED, sel, w))
    return out


# -- the Prometheus HTTP API -------------------------------------------------------------------
def query(
    prom_url: str, promql: str, at: float | None = None, timeout: float = 10.0
) -> float | None:
    """`GET {prom_url}/api/v1/query`: the one value of an instant query, None for an empty
    result (no data; not 0). NaN and infinities (0/0, no observations) are returned as such."""
    url = f"{prom_url.rstrip('/')}/api/v1/query"
    params = {"query": promql} | ({"time": f"{at:.3f}"} if at is not None else {})
    where = f"Prometheus at {url}, query {promql}"
    try:
        resp = httpx.get(url, params=params, timeout=timeout)
    except httpx.HTTPError as exc:
        raise PrometheusError(f"{where}: {type(exc).__name__}: {exc}") from exc
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise PrometheusError(
            f"{where}: HTTP {resp.status_code}, not a Prometheus answer: {resp.text[:200]}"
        )
    if resp.status_code != 200 or body.get("status") != "success":
        reason = f"{body.get('errorType', '')}: {body.get('error', resp.text[:200])}"
        raise PrometheusError(f"{where}: HTTP {resp.status_code}, {reason}")
    data = body.get("data") or {}
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        return float(result[1])
    if kind != "vector":
        raise PrometheusError(f"{where}: expected a vector result, got {kind}")
    if not result:
        return None
    if len(result) > 1:
        raise PrometheusError(f"{where}: expected one series, got {len(result)}")
    return float(result[0]["value"][1])


# -- results -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Baseline:
    """The checks' values before the upgrade (None: no data), and the requests they cover."""

    at: float
    window_seconds: int
    requests: float | None
    values: dict[str, float | None]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> Baseline:
        return cls(
            float(data["at"]), int(data["window_seconds"]), data["requests"], dict(data["values"])
        )


@dataclass(frozen=True)
class CheckResult:
    """One check: its exact PromQL, value, the baseline's value, the limits applied."""

    name: str
    query: str
    value: float | None
    baseline: float | None
    threshold: float | None  # the value must not be above this
    floor: float | None  # nor below this
    ok: bool
    detail: str


@dataclass(frozen=True)
class Analysis:
    """Every check's row; `ok` when all passed, `detail` naming the first breached query."""

    ok: bool
    detail: str
    at: float
    window_seconds: int
    requests: float | None
    requests_query: str
    checks: list[CheckResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _measure(
    prom_url: str, policy: MetricAnalysis, labels: Mapping[str, str] | None, at: float | None
) -> tuple[float, dict[str, str], dict[str, float | None]]:
    at = time.time() if at is None else at
    promql = queries(policy, labels)
    values = {
        name: _finite(query(prom_url, q, at, policy.timeout_seconds)) for name, q in promql.items()
    }
    return at, promql, values


def baseline(
    prom_url: str,
    policy: MetricAnalysis,
    labels: Mapping[str, str] | None = None,
    at: float | None = None,
) -> Baseline:
    """The enabled checks' values over the window ending `at` (default now): call it before
    the upgrade. `labels` add to (and override) the policy's label matchers."""
    at, _, values = _measure(prom_url, policy, labels, at)
    requests = values.pop("requests")
    return Baseline(at, policy.window_seconds, requests, values)


def judge(
    name: str,
    value: float | None,
    check: RatioCheck | LatencyCheck,
    base: float | None,
    requests: float | None,
    policy: MetricAnalysis,
) -> tuple[float | None, float | None, bool, str]:
    """(threshold, floor, ok, detail) of one check's `value`: the tightest of its absolute
    `max` and its limit relative to `base` (None: absolute limits only)."""
    threshold, floor, why = check.max, None, "max"
    if base is not None:
        if isinstance(check, LatencyCheck):
            relative = None if check.max_ratio is None else base * check.max_ratio
            rel_why = f"baseline {base:.4g} x {check.max_ratio}"
        else:
            relative = None if check.max_increase is None else base + check.max_increase
            rel_why = f"baseline {base:.4g} + {check.max_increase}"
            if check.max_decrease is not None:
                floor = max(0.0, base - check.max_decrease)
        if relative is not None and (threshold is None or relative < threshold):
            threshold, why = relative, rel_why
    low = requests is None or requests < policy.min_requests
    if low or value is None:
        seen = 0 if requests is None else requests
        reason = (
            f"not enough traffic: {seen:.4g} requests in {policy.window_seconds}s "
            f"(min {policy.min_requests})"
            if low
            else "no data in the window"
        )
        verdict = "fails (failOnLowTraffic)" if policy.fail_on_low_traffic else "not judged"
        return threshold, floor, not policy.fail_on_low_traffic, f"{name}: {reason}; {verdict}"
    if threshold is not None and value > threshold:
        return threshold, floor, False, f"{name} {value:.4g} > {threshold:.4g} ({why})"
    if floor is not None and value < floor:
        why = f"baseline {base:.4g} - {check.max_decrease}"
        return threshold, floor, False, f"{name} {value:.4g} < {floor:.4g} ({why})"
    limits = [f"<= {threshold:.4g}"] if threshold is not None else []
    limits += [f">= {floor:.4g}"] if floor is not None else []
    return threshold, floor, True, f"{name} {value:.4g} {' and '.join(limits) or 'unlimited'}"


def analyse(
    prom_url: str,
    policy: MetricAnalysis,
    labels: Mapping[str, str] | None = None,
    baseline: Baseline | None = None,
    at: float | None = None,
) -> Analysis:
    """Judge the enabled checks over the window ending `at` (default now) against their
    limits and `baseline` (None: absolute limits only). Raises PrometheusError when a query
    fails; a breach is a result with ok False, not an exception."""
    at, promql, values = _measure(prom_url, policy, labels, at)
    requests = values.pop("requests")
    # a baseline that saw too little traffic is not compared with
    usable = baseline is not None and (baseline.requests or 0) >= policy.min_requests
    rows = []
    for name in CHECKS:
        check = getattr(policy, name)
        if check is None:
            continue
        base = baseline.values.get(name) if baseline else None
        threshold, floor, ok, detail = judge(
            name, values[name], check, base if usable else None, requests, policy
        )
        if baseline is not None and not usable:
            seen = baseline.requests or 0
            detail += f" (baseline not compared: {seen:.4g} requests < {policy.min_requests})"
        rows.append(
            CheckResult(name, promql[name], values[name], base, threshold, floor, ok, detail)
        )
    breached = [r for r in rows if not r.ok]
    if breached:
        detail = f"{breached[0].detail}; query: {breached[0].query}"
    else:
        detail = f"{len(rows)} checks passed over {policy.window_seconds}s"
    return Analysis(
        not breached, detail, at, policy.window_seconds, requests, promql["requests"], rows
    )
