"""The cascade decision shared by serving and calibration: escalate?, then fuse.

A `FusionSpec` (correction-coefficient parameters + escalation threshold θ) is fitted by the
calibration job, recorded in the specialist bundle's hazard_model.json (`fusion`, see
`hazard.infra.bundle`) and read from there by the app.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from hazard.core.fusion import CorrectionParams, fuse, hazard_score, predict_label, should_escalate


@dataclass(frozen=True)
class FusionSpec:
    """Fusion parameters that ship with a model version; θ = 0 means always consult."""

    correction: CorrectionParams = field(default_factory=CorrectionParams)
    theta: float = 0.0

    def to_dict(self) -> dict:
        return {"correction": self.correction.to_dict(), "theta": self.theta}

    @classmethod
    def from_dict(cls, data: Mapping) -> FusionSpec:
        unknown = set(data) - {"correction", "theta", "fitted_on"}
        if unknown:
            raise ValueError(f"fusion spec has unknown keys {sorted(unknown)}")
        theta = float(data.get("theta", 0.0))
        if not 0.0 <= theta <= 1.0:
            raise ValueError(f"fusion theta must be in [0, 1], got {theta}")
        return cls(CorrectionParams.from_dict(data.get("correction", {})), theta)


@dataclass(frozen=True)
class CascadeResult:
    probabilities: dict[str, float]
    risk_level: str
    hazard_score: float
    escalated: bool


def needs_specialist(p_base: Mapping[str, float], spec: FusionSpec) -> bool:
    """Consult the specialist when the base puts at least θ on medium+high risk."""
    return should_escalate(p_base, spec.theta)


def combine(
    p_base: Mapping[str, float], p_spec_high: float | None, spec: FusionSpec
) -> CascadeResult:
    """Fuse (when the specialist answered) and summarise one image's scores."""
    probs = fuse(p_base, p_spec_high, spec.correction)
    return CascadeResult(probs, predict_label(probs), hazard_score(probs), p_spec_high is not None)
