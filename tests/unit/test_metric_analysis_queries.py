"""The metric analysis policy, its PromQL and its judgement of values against hand-computed
limits (the queries against a real Prometheus: tests/integration/test_metric_analysis.py)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from hazard.deploy.analysis import (
    Analysis,
    Baseline,
    CheckResult,
    LatencyCheck,
    MetricAnalysis,
    RatioCheck,
    judge,
    queries,
)


def policy(**keys) -> MetricAnalysis:
    return MetricAnalysis.model_validate({"windowSeconds": 120, "minRequests": 10, **keys})


def test_the_queries_are_the_promql_written_out():
    got = queries(policy(), {"namespace": "prod"})
    sel = 'application="hazard-cascade",namespace="prod"'
    reqs = f'ray_hazard_requests_total{{{sel},route=~"/v1/score|/v1/score/batch"'
    requests = f"sum(increase({reqs}}}[120s]))"
    assert got == {
        "requests": requests,
        "error_ratio": f'(sum(increase({reqs},status=~"5..",status!="503"}}[120s])) '
        f"or vector(0)) / {requests}",
        "refusal_ratio": f'(sum(increase({reqs},status="503"}}[120s])) or vector(0)) / {requests}',
        "p99_latency": "histogram_quantile(0.99, sum by (le) (rate("
        f'ray_hazard_stage_latency_seconds_bucket{{{sel},stage="total"}}[120s])))',
        "escalation_rate": "(sum(increase(ray_hazard_images_scored_total"
        f'{{{sel},escalated="true"}}[120s])) or vector(0)) / '
        f"sum(increase(ray_hazard_images_scored_total{{{sel}}}[120s]))",
    }


def test_label_values_are_escaped_and_names_checked():
    got = queries(policy(labels={"application": 'a"b\\c'}, p99Latency=None))
    assert 'application="a\\"b\\\\c"' in got["requests"]
    with pytest.raises(ValidationError, match="not Prometheus label names"):
        policy(labels={"app-name": "x"})
    with pytest.raises(ValueError, match="not Prometheus label names"):
        queries(policy(), {"bad label": "x"})


def test_a_disabled_check_has_no_query_and_all_disabled_is_an_error():
    got = queries(policy(p99Latency=None, escalationRate=None))
    assert set(got) == {"requests", "error_ratio", "refusal_ratio"}
    off = {name: None for name in ("errorRatio", "refusalRatio", "p99Latency", "escalationRate")}
    with pytest.raises(ValidationError, match="every check is disabled"):
        policy(**off)


def test_the_policy_is_strict_and_camel_case():
    with pytest.raises(ValidationError, match="extra"):
        policy(errorRatio={"max": 0.1, "maxIncrase": 0.01})
    with pytest.raises(ValidationError):
        policy(errorRatio={"max": 1.5})  # a ratio above 1
    assert policy(p99Latency={"quantile": 0.95, "max": 2}).p99_latency == LatencyCheck(
        quantile=0.95, max=2
    )


RATIO = RatioCheck(max=0.05, maxIncrease=0.01, maxDecrease=0.02)


@pytest.mark.parametrize(
    ("value", "base", "want"),
    [
        # baseline 0.02: the limit is min(0.05, 0.02 + 0.01) = 0.03; the floor 0.02 - 0.02 = 0
        (0.03, 0.02, (0.03, 0.0, True, "error_ratio 0.03 <= 0.03 and >= 0")),
        (0.031, 0.02, (0.03, 0.0, False, "error_ratio 0.031 > 0.03 (baseline 0.02 + 0.01)")),
        # baseline 0.045: 0.055 is looser than the absolute max 0.05, which applies
        (0.051, 0.045, (0.05, 0.025, False, "error_ratio 0.051 > 0.05 (max)")),
        # baseline 0.045: floor 0.025
        (0.02, 0.045, (0.05, 0.025, False, "error_ratio 0.02 < 0.025 (baseline 0.045 - 0.02)")),
        # no baseline: max only, no floor
        (0.049, None, (0.05, None, True, "error_ratio 0.049 <= 0.05")),
    ],
)
def test_a_ratio_is_judged_against_max_and_baseline(value, base, want):
    threshold, floor, ok, detail = judge("error_ratio", value, RATIO, base, 100, policy())
    assert threshold == pytest.approx(want[0])
    assert floor == (None if want[1] is None else pytest.approx(want[1]))
    assert (ok, detail) == want[2:]


def test_a_latency_is_judged_against_max_and_a_multiple_of_the_baseline():
    both = LatencyCheck(max=1.0, maxRatio=1.5)
    # baseline 0.4 s: 0.4 x 1.5 = 0.6 s is tighter than 1 s
    assert judge("p99_latency", 0.61, both, 0.4, 50, policy()) == (
        pytest.approx(0.6),
        None,
        False,
        "p99_latency 0.61 > 0.6 (baseline 0.4 x 1.5)",
    )
    # baseline 0.8 s: 1.2 s is looser than 1 s
    assert judge("p99_latency", 0.99, both, 0.8, 50, policy())[:3] == (1.0, None, True)
    # only relative, and no baseline: nothing to compare with, so it passes unlimited
    relative = LatencyCheck(maxRatio=2)
    assert judge("p99_latency", 9.0, relative, None, 50, policy()) == (
        None,
        None,
        True,
        "p99_latency 9 unlimited",
    )


def test_too_little_traffic_or_no_data_fails_only_when_asked():
    lenient, strict = policy(), policy(failOnLowTraffic=True)
    low = judge("error_ratio", 0.9, RATIO, None, 9.6, lenient)
    assert low[2:] == (
        True,
        "error_ratio: not enough traffic: 9.6 requests in 120s (min 10); not judged",
    )
    assert judge("error_ratio", 0.9, RATIO, None, None, strict)[2:] == (
        False,
        "error_ratio: not enough traffic: 0 requests in 120s (min 10); fails (failOnLowTraffic)",
    )
    assert judge("p99_latency", None, LatencyCheck(max=1), None, 500, lenient)[2:] == (
        True,
        "p99_latency: no data in the window; not judged",
    )


def test_results_and_baselines_are_json_and_round_trip():
    base = Baseline(at=1.5, window_seconds=120, requests=40.0, values={"error_ratio": None})
    assert Baseline.from_dict(json.loads(json.dumps(base.to_dict()))) == base
    row = CheckResult("error_ratio", "q", 0.1, 0.0, 0.01, None, False, "error_ratio 0.1 > 0.01")
    result = Analysis(False, "d", 2.0, 120, 40.0, "rq", [row])
    assert json.loads(json.dumps(result.to_dict()))["checks"][0] == {
        "name": "error_ratio",
        "query": "q",
        "value": 0.1,
        "baseline": 0.0,
        "threshold": 0.01,
        "floor": None,
        "ok": False,
        "detail": "error_ratio 0.1 > 0.01",
    }
