"""The corridor risk taxonomy: the five stage-1 labels and their severities."""

from __future__ import annotations

RISK_LABELS: tuple[str, ...] = ("no_risk", "low_risk", "medium_risk", "high_risk", "non_corridor")
"""Stage-1 labels, in contract order (docs/architecture.md)."""

HIGH_RISK = "high_risk"

SEVERITY: dict[str, float] = {
    "no_risk": 0.0,
    "low_risk": 1.0 / 3.0,
    "medium_risk": 2.0 / 3.0,
    "high_risk": 1.0,
}
"""Severity per label for the hazard score; `non_corridor` has none."""
