"""FusionSpec (the calibration artefact, kept in the specialist bundle) and the cascade decision."""

from __future__ import annotations

import json

import pytest

from hazard.core.cascade import FusionSpec, combine, needs_specialist
from hazard.core.fusion import CorrectionParams

P_BASE = {
    "no_risk": 0.1,
    "low_risk": 0.1,
    "medium_risk": 0.3,
    "high_risk": 0.4,
    "non_corridor": 0.1,
}


def test_fusion_spec_round_trips_through_json():
    spec = FusionSpec(CorrectionParams(slope=2.0, intercept=0.2), theta=0.35)
    stored = json.loads(json.dumps(dict(spec.to_dict(), fitted_on="val")))  # as calibration does
    assert FusionSpec.from_dict(stored) == spec


@pytest.mark.parametrize("bad, match", [({"theta": 1.5}, "theta"), ({"thetta": 0.1}, "unknown")])
def test_fusion_spec_rejects_bad_files(bad, match):
    with pytest.raises(ValueError, match=match):
        FusionSpec.from_dict(bad)


def test_cascade_escalates_on_theta_and_fuses():
    spec = FusionSpec(CorrectionParams(slope=1.0, intercept=1.0, k_min=0.5, k_max=2.0), 0.5)
    assert needs_specialist(P_BASE, spec)  # 0.3 + 0.4 >= 0.5
    assert not needs_specialist(dict(P_BASE, medium_risk=0.05, no_risk=0.35), spec)
    res = combine(P_BASE, 1.0, spec)  # k = 2 -> p_high 0.8
    assert res.escalated and res.risk_level == "high_risk"
    assert res.probabilities["high_risk"] == pytest.approx(0.8)
    assert sum(res.probabilities.values()) == pytest.approx(1.0)
    plain = combine(P_BASE, None, spec)
    assert not plain.escalated and plain.probabilities == pytest.approx(P_BASE)
