"""The corridor risk taxonomy: the five stage-1 labels and their severities."""

from __future__ import annotations

RISK_LABELS: tuple[str, ...] = ("no_risk", "low_risk", "medium_risk", "high_risk", "non_corridor")
"""Stage-1 labels, in contract order (DESIGN.md)."""

HIGH_RISK = "high_risk"
NON_CORRIDOR = "non_corridor"

SEVERITY: dict[str, float] = {
    "no_risk": 0.0,
    "low_risk": 1.0 / 3.0,
    "medium_risk": 2.0 / 3.0,
    "high_risk": 1.0,
}
"""Severity per label for the hazard score; `non_corridor` has none."""

LABEL_DESCRIPTIONS: dict[str, str] = {
    "high_risk": "an electric bike or battery inside (above all while charging), a blocked fire "
    "exit or stair, open flame or exposed live wiring",
    "medium_risk": "flammable clutter (cardboard, furniture, rubbish bags) narrowing the passage",
    "low_risk": "a few small items along the walls, passage clear",
    "no_risk": "a clear corridor",
    "non_corridor": "not a corridor at all (street, room, screenshot)",
}


def label_index(label: str) -> int:
    """Index of `label` in RISK_LABELS; raises ValueError naming the valid labels."""
    try:
        return RISK_LABELS.index(label)
    except ValueError:
        raise ValueError(
            f"unknown risk label {label!r}; expected one of {list(RISK_LABELS)}"
        ) from None
