"""Base/specialist fusion, escalation and the hazard score (docs/architecture.md, "Fusion").

The base gives five-label probabilities; when it puts at least θ on medium+high risk, the
specialist is consulted and its p(high_risk) sets a clipped correction coefficient
k = clip(intercept + slope * p_spec_high, k_min, k_max). The fused distribution has
p_high' = min(1, p_base(high) * k) and the other four labels rescaled proportionally so the
five sum to 1. The coefficient's parameters and θ are fitted on validation data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from hazard.core.labels import HIGH_RISK, RISK_LABELS, SEVERITY

_SUM_TOL = 1e-4
_OTHERS = tuple(label for label in RISK_LABELS if label != HIGH_RISK)


@dataclass(frozen=True)
class CorrectionParams:
    """Parameters of the high-risk correction coefficient k = clip(a + b * p, k_min, k_max)."""

    slope: float = 1.5
    intercept: float = 0.5
    k_min: float = 0.5
    k_max: float = 2.0

    def __post_init__(self) -> None:
        values = asdict(self)
        if not all(math.isfinite(v) for v in values.values()):
            raise ValueError(f"CorrectionParams must be finite, got {values}")
        if not 0.0 <= self.k_min <= self.k_max:
            raise ValueError(f"need 0 <= k_min <= k_max, got {self.k_min}, {self.k_max}")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CorrectionParams:
        """Build from a mapping; missing keys take defaults, unknown keys raise ValueError."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown CorrectionParams keys: {sorted(unknown)}")
        return cls(**{k: float(v) for k, v in data.items()})


DEFAULT_PARAMS = CorrectionParams()


def _probs(p: Mapping[str, float], name: str = "probabilities") -> dict[str, float]:
    """Validate a five-label distribution and return it normalised, in RISK_LABELS order."""
    missing, extra = set(RISK_LABELS) - set(p), set(p) - set(RISK_LABELS)
    if missing or extra:
        raise ValueError(
            f"{name} must have exactly the labels {list(RISK_LABELS)}; "
            f"missing {sorted(missing)}, unexpected {sorted(extra)}"
        )
    values = {label: float(p[label]) for label in RISK_LABELS}
    bad = {k: v for k, v in values.items() if not math.isfinite(v) or v < 0}
    if bad:
        raise ValueError(f"{name} must be finite and non-negative, got {bad}")
    total = sum(values.values())
    if abs(total - 1.0) > _SUM_TOL:
        raise ValueError(f"{name} must sum to 1 (±{_SUM_TOL}), got {total:.6f}")
    return {k: v / total for k, v in values.items()}


def _unit(x: float, name: str) -> float:
    x = float(x)
    if not (math.isfinite(x) and 0.0 <= x <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {x}")
    return x


def correction_coefficient(p_spec_high: float, params: CorrectionParams = DEFAULT_PARAMS) -> float:
    """k = clip(intercept + slope * p_spec_high, k_min, k_max)."""
    p = _unit(p_spec_high, "p_spec_high")
    return min(params.k_max, max(params.k_min, params.intercept + params.slope * p))


def fuse(
    p_base: Mapping[str, float],
    p_spec_high: float | None,
    params: CorrectionParams = DEFAULT_PARAMS,
) -> dict[str, float]:
    """Fuse the base distribution with the specialist's p(high_risk).

    p_high' = min(1, p_base(high) * k); the other four labels keep their ratios and share
    1 - p_high'. If p_base(high) == 1 (the others have no mass to rescale) and p_high' < 1,
    the remainder is spread uniformly over the other four labels. With p_spec_high None (not
    escalated) the base distribution is returned, normalised. Raises ValueError on a base
    distribution that is not five finite non-negative values summing to 1 (±1e-4).
    """
    p = _probs(p_base, "p_base")
    if p_spec_high is None:
        return p
    high = min(1.0, p[HIGH_RISK] * correction_coefficient(p_spec_high, params))
    rest_old = sum(p[label] for label in _OTHERS)
    rest_new = 1.0 - high
    out = {
        label: (p[label] * rest_new / rest_old if rest_old > 0 else rest_new / len(_OTHERS))
        for label in _OTHERS
    }
    out[HIGH_RISK] = high
    return {label: out[label] for label in RISK_LABELS}


def _escalation_mass(p: Mapping[str, float]) -> float:
    """p(medium_risk) + p(high_risk) of a (validated) distribution."""
    q = _probs(p, "p_base")
    return q["medium_risk"] + q[HIGH_RISK]


def should_escalate(p_base: Mapping[str, float], theta: float) -> bool:
    """Consult the specialist when p(medium) + p(high) >= theta; theta = 0 means always."""
    if not (math.isfinite(theta) and theta >= 0):
        raise ValueError(f"theta must be finite and >= 0, got {theta}")
    return _escalation_mass(p_base) >= theta


def hazard_score(probs: Mapping[str, float]) -> float:
    """Expected severity over the four corridor labels, renormalised over them, in [0, 1].

    non_corridor has no severity: its mass is left out; 0.0 when all mass is on non_corridor.
    """
    p = _probs(probs)
    mass = sum(p[label] for label in SEVERITY)
    if mass <= 0:
        return 0.0
    score = sum(SEVERITY[label] * p[label] for label in SEVERITY) / mass
    return min(1.0, max(0.0, score))


def predict_label(probs: Mapping[str, float]) -> str:
    """Most probable label; ties go to the first in RISK_LABELS order."""
    p = _probs(probs)
    return max(RISK_LABELS, key=lambda label: p[label])


def _matrix(p_base_list: Sequence[Mapping[str, float]]) -> np.ndarray:
    """(n, 5) array of validated, normalised distributions in RISK_LABELS order."""
    return np.array([[q[label] for label in RISK_LABELS] for q in map(_probs, p_base_list)])


def _true_index(y_true: Sequence[str], n: int) -> np.ndarray:
    if len(y_true) != n:
        raise ValueError(f"got {n} distributions but {len(y_true)} labels")
    unknown = sorted(set(y_true) - set(RISK_LABELS))
    if unknown:
        raise ValueError(f"unknown labels {unknown}; expected {list(RISK_LABELS)}")
    return np.array([RISK_LABELS.index(y) for y in y_true], dtype=np.int64)


def _fused_true_prob(base: np.ndarray, y: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Fused probability of the true label, vectorised over samples (last axis of k)."""
    h = RISK_LABELS.index(HIGH_RISK)
    p_high, p_true = base[:, h], base[np.arange(len(y)), y]
    high_new = np.minimum(1.0, p_high * k)
    rest_old, rest_new = 1.0 - p_high, 1.0 - high_new
    scale = np.divide(rest_new, rest_old, out=np.zeros_like(rest_new), where=rest_old > 0)
    other = np.where(rest_old > 0, p_true * scale, rest_new / len(_OTHERS))
    return np.where(y == h, high_new, other)


def fit_correction(
    p_base_list: Sequence[Mapping[str, float]],
    p_spec_high: Sequence[float],
    y_true: Sequence[str],
    *,
    k_min: float = CorrectionParams.k_min,
    k_max: float = CorrectionParams.k_max,
    eps: float = 1e-6,
) -> CorrectionParams:
    """Fit slope and intercept by grid search, minimising the mean negative log-likelihood of
    the fused distribution at the true label (probabilities clipped to [eps, 1]).

    Grid: slope 0..4 and intercept -1..2 in steps of 0.05, k_min/k_max fixed. The defaults
    (1.5, 0.5) lie on the grid, so the fit is never worse than them on the fitting data.
    Deterministic: ties go to the smallest slope, then the smallest intercept. Without any
    high_risk example the data can only reward damping p(high), so the fit drives k towards
    k_min: fit on validation data that holds high-risk cases, as the escalation fit needs too.
    """
    if len(p_base_list) == 0:
        raise ValueError("fit_correction needs at least one sample")
    base = _matrix(p_base_list)
    y = _true_index(y_true, len(base))
    if len(p_spec_high) != len(base):
        raise ValueError(f"got {len(base)} distributions but {len(p_spec_high)} p_spec_high")
    spec = np.array([_unit(s, "p_spec_high") for s in p_spec_high])
    slopes = np.round(np.arange(0, 81) * 0.05, 6)
    intercepts = np.round(np.arange(-20, 41) * 0.05, 6)
    best = (math.inf, 0.0, 0.0)  # (nll, slope, intercept)
    for slope in slopes:
        k = np.clip(intercepts[:, None] + slope * spec[None, :], k_min, k_max)
        nll = -np.log(np.clip(_fused_true_prob(base, y, k), eps, 1.0)).mean(axis=1)
        i = int(np.argmin(nll))
        if nll[i] < best[0]:
            best = (float(nll[i]), float(slope), float(intercepts[i]))
    return CorrectionParams(slope=best[1], intercept=best[2], k_min=k_min, k_max=k_max)


def mean_fused_nll(
    p_base_list: Sequence[Mapping[str, float]],
    p_spec_high: Sequence[float],
    y_true: Sequence[str],
    params: CorrectionParams = DEFAULT_PARAMS,
    eps: float = 1e-6,
) -> float:
    """Mean negative log-likelihood of the fused distributions at the true labels."""
    probs = [
        fuse(p, s, params)[y] for p, s, y in zip(p_base_list, p_spec_high, y_true, strict=True)
    ]
    return float(-np.mean(np.log(np.clip(probs, eps, 1.0))))


def fit_escalation_threshold(
    p_base_list: Sequence[Mapping[str, float]],
    y_true: Sequence[str],
    min_high_recall: float = 1.0,
) -> float:
    """Largest θ that still escalates at least `min_high_recall` of the high_risk samples.

    Candidates are 0 and every observed p(medium) + p(high); a sample is escalated when its
    mass >= θ (as in `should_escalate`). Returns 0.0 (always consult) when y_true holds no
    high_risk sample.
    """
    _unit(min_high_recall, "min_high_recall")
    masses = np.array([_escalation_mass(p) for p in p_base_list])
    y = _true_index(y_true, len(masses))
    high = masses[y == RISK_LABELS.index(HIGH_RISK)]
    if len(high) == 0:
        return 0.0
    for theta in sorted({0.0, *masses.tolist()}, reverse=True):
        if (high >= theta).mean() >= min_high_recall - 1e-12:
            return float(theta)
    return 0.0
