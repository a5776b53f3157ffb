"""hazard.core.fusion: the correction coefficient, fusion, escalation, hazard score and fitting."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hazard.core.fusion import (
    CorrectionParams,
    correction_coefficient,
    fit_correction,
    fit_escalation_threshold,
    fuse,
    hazard_score,
    mean_fused_nll,
    predict_label,
    should_escalate,
)
from hazard.core.labels import RISK_LABELS

NO, LOW, MED, HIGH, NON = RISK_LABELS
BASE = {NO: 0.4, LOW: 0.2, MED: 0.2, HIGH: 0.1, NON: 0.1}


def dist(**p: float) -> dict[str, float]:
    """A five-label distribution from keyword probabilities, missing labels at 0."""
    return {label: p.get(label, 0.0) for label in RISK_LABELS}


@pytest.mark.parametrize(
    ("p_spec", "params", "k"),
    [
        (0.0, CorrectionParams(), 0.5),  # 0.5 + 1.5 * 0
        (0.5, CorrectionParams(), 1.25),  # 0.5 + 1.5 * 0.5
        (1.0, CorrectionParams(), 2.0),  # 0.5 + 1.5 = 2.0, at k_max
        (1.0, CorrectionParams(slope=10.0), 2.0),  # 10.5 clipped to k_max
        (0.2, CorrectionParams(slope=0.0, intercept=-1.0), 0.5),  # -1 clipped to k_min
        (0.5, CorrectionParams(slope=2.0, intercept=0.0, k_min=0.0, k_max=3.0), 1.0),
    ],
)
def test_correction_coefficient_clips(p_spec: float, params: CorrectionParams, k: float) -> None:
    assert correction_coefficient(p_spec, params) == pytest.approx(k)


def test_correction_coefficient_rejects_bad_probability() -> None:
    for bad in (-0.1, 1.1, math.nan):
        with pytest.raises(ValueError, match="p_spec_high"):
            correction_coefficient(bad)


def test_params_round_trip_and_validation() -> None:
    params = CorrectionParams(slope=2.0, intercept=0.25)
    assert CorrectionParams.from_dict(params.to_dict()) == params
    assert CorrectionParams.from_dict({"slope": 3}) == CorrectionParams(slope=3.0)
    with pytest.raises(ValueError, match="unknown"):
        CorrectionParams.from_dict({"slope": 1.0, "gain": 2.0})
    with pytest.raises(ValueError, match="k_min"):
        CorrectionParams(k_min=2.0, k_max=1.0)
    with pytest.raises(ValueError, match="finite"):
        CorrectionParams(slope=math.inf)


def test_fuse_by_hand() -> None:
    fused = fuse(BASE, 1.0)
    # k = 2: p_high' = 0.2; the others share 0.8 instead of 0.9, each times 8/9
    assert fused[HIGH] == pytest.approx(0.2)
    assert fused[NO] == pytest.approx(0.4 * 8 / 9)
    assert fused[NON] == pytest.approx(0.1 * 8 / 9)
    assert list(fused) == list(RISK_LABELS)


@pytest.mark.parametrize("p_spec", [0.0, 0.1, 0.37, 0.5, 0.9, 1.0])
def test_fuse_sums_to_one_and_keeps_ratios(p_spec: float) -> None:
    rng = np.random.default_rng(7)
    for alpha in rng.dirichlet(np.ones(5), size=50):
        base = dict(zip(RISK_LABELS, alpha.tolist(), strict=True))
        fused = fuse(base, p_spec)
        assert sum(fused.values()) == pytest.approx(1.0, abs=1e-12)
        assert all(0.0 <= v <= 1.0 for v in fused.values())
        # the four non-high labels keep their ratios to no_risk
        for label in (LOW, MED, NON):
            assert fused[label] * base[NO] == pytest.approx(base[label] * fused[NO], abs=1e-12)


def test_fuse_caps_high_at_one() -> None:
    fused = fuse(dist(no_risk=0.2, high_risk=0.8), 1.0)  # 0.8 * 2 = 1.6 -> 1
    assert fused[HIGH] == 1.0
    assert sum(fused.values()) == pytest.approx(1.0)
    assert fused[NO] == 0.0


def test_fuse_spreads_remainder_when_base_is_all_high() -> None:
    fused = fuse(dist(high_risk=1.0), 0.0)  # k = 0.5: 0.5 left, no ratios to keep
    assert fused == {NO: 0.125, LOW: 0.125, MED: 0.125, HIGH: 0.5, NON: 0.125}


def test_fuse_without_specialist_returns_base_normalised() -> None:
    assert fuse(BASE, None) == pytest.approx(BASE)
    slightly_off = {**BASE, NO: 0.40005}  # sums to 1.00005, within tolerance
    fused = fuse(slightly_off, None)
    assert sum(fused.values()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(
    ("p_base", "match"),
    [
        ({NO: 0.5, LOW: 0.5, MED: 0.0, HIGH: 0.0}, "missing"),
        ({**BASE, "fire": 0.0}, "unexpected"),
        ({**BASE, NO: -0.1, LOW: 0.7}, "non-negative"),
        ({**BASE, NO: math.nan}, "finite"),
        ({**BASE, NO: 0.3}, "sum to 1"),
    ],
)
def test_fuse_rejects_bad_distributions(p_base: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fuse(p_base, 0.5)


def test_hazard_score_by_hand_and_bounds() -> None:
    # corridor mass 0.9; expected severity (0.2/3 + 0.2*2/3 + 0.1*1) / 0.9 = 0.3 / 0.9 = 1/3
    assert hazard_score(BASE) == pytest.approx(1 / 3)
    assert hazard_score(dist(non_corridor=1.0)) == 0.0
    assert hazard_score(dist(high_risk=1.0)) == 1.0
    assert hazard_score(dist(no_risk=0.5, non_corridor=0.5)) == 0.0
    assert hazard_score(dist(high_risk=0.5, non_corridor=0.5)) == 1.0
    for alpha in np.random.default_rng(3).dirichlet(np.ones(5) * 0.3, size=200):
        score = hazard_score(dict(zip(RISK_LABELS, alpha.tolist(), strict=True)))
        assert 0.0 <= score <= 1.0


def test_predict_label_argmax_ties_first() -> None:
    assert predict_label(BASE) == NO
    assert predict_label(dist(low_risk=0.4, high_risk=0.4, non_corridor=0.2)) == LOW
    assert predict_label(dist(non_corridor=1.0)) == NON


def test_should_escalate() -> None:
    assert should_escalate(dist(no_risk=1.0), 0.0)  # theta 0: always
    assert should_escalate(BASE, 0.3)  # 0.2 + 0.1 = 0.3 >= 0.3
    assert not should_escalate(BASE, 0.31)
    assert should_escalate(dist(no_risk=0.6, high_risk=0.4), 0.3)
    with pytest.raises(ValueError, match="theta"):
        should_escalate(BASE, -0.1)


def synthetic_validation(n: int, seed: int = 0) -> tuple[list[dict], list[float], list[str]]:
    """Base confuses high with medium risk; the specialist separates high from the rest."""
    rng = np.random.default_rng(seed)
    bases, specs, labels = [], [], []
    for _ in range(n):
        y = int(rng.choice(5, p=[0.25, 0.2, 0.2, 0.2, 0.15]))
        alpha = np.ones(5)
        if RISK_LABELS[y] == HIGH:
            alpha[2] += 2.0  # medium pulls mass from high
            alpha[3] += 1.0
        else:
            alpha[y] += 3.0
        bases.append(dict(zip(RISK_LABELS, rng.dirichlet(alpha).tolist(), strict=True)))
        specs.append(float(rng.beta(8, 2) if RISK_LABELS[y] == HIGH else rng.beta(2, 8)))
        labels.append(RISK_LABELS[y])
    return bases, specs, labels


def test_fit_correction_improves_nll_and_is_deterministic() -> None:
    bases, specs, labels = synthetic_validation(400)
    fitted = fit_correction(bases, specs, labels)
    assert fitted == fit_correction(bases, specs, labels)
    default_nll = mean_fused_nll(bases, specs, labels, CorrectionParams())
    fitted_nll = mean_fused_nll(bases, specs, labels, fitted)
    assert fitted_nll < default_nll - 1e-3
    # an informative specialist: boost when it says high, damp when it says not
    assert correction_coefficient(0.9, fitted) > 1.0 > correction_coefficient(0.1, fitted)
    # held-out data from the same process also improves
    bases2, specs2, labels2 = synthetic_validation(400, seed=1)
    assert mean_fused_nll(bases2, specs2, labels2, fitted) < mean_fused_nll(
        bases2, specs2, labels2, CorrectionParams()
    )


def test_fit_correction_without_high_risk_damps() -> None:
    bases, specs, labels = synthetic_validation(200)
    keep = [i for i, y in enumerate(labels) if y != HIGH]
    fitted = fit_correction(
        [bases[i] for i in keep], [specs[i] for i in keep], [labels[i] for i in keep]
    )
    assert correction_coefficient(0.5, fitted) == fitted.k_min


def test_fit_correction_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        fit_correction([], [], [])
    with pytest.raises(ValueError, match="labels"):
        fit_correction([BASE], [0.5], [NO, LOW])
    with pytest.raises(ValueError, match="unknown"):
        fit_correction([BASE], [0.5], ["fire"])


def with_mass(m: float) -> dict[str, float]:
    """A distribution with p(medium) + p(high) = m."""
    return dist(no_risk=1.0 - m, medium_risk=m / 2, high_risk=m / 2)


def test_fit_escalation_threshold() -> None:
    bases = [with_mass(m) for m in (0.9, 0.5, 0.3, 0.2, 0.6)]
    labels = [HIGH, HIGH, HIGH, NO, MED]
    # every high sample (masses 0.9, 0.5, 0.3) escalated: theta = 0.3
    theta = fit_escalation_threshold(bases, labels)
    assert theta == pytest.approx(0.3)
    assert all(should_escalate(b, theta) for b, y in zip(bases, labels, strict=True) if y == HIGH)
    assert not should_escalate(bases[3], theta)
    # 2 of 3 high samples: theta 0.5 (0.6 would keep only 1 of 3)
    assert fit_escalation_threshold(bases, labels, min_high_recall=2 / 3) == pytest.approx(0.5)
    assert fit_escalation_threshold(bases, labels, min_high_recall=0.5) == pytest.approx(0.5)
    # no requirement: the largest candidate
    assert fit_escalation_threshold(bases, labels, min_high_recall=0.0) == pytest.approx(0.9)
    # no high_risk sample: always consult
    assert fit_escalation_threshold(bases[3:], labels[3:]) == 0.0
    with pytest.raises(ValueError, match="min_high_recall"):
        fit_escalation_threshold(bases, labels, min_high_recall=1.5)
