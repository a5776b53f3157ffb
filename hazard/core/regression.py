"""Metrics for numeric answers: counts, regression targets and scores (numpy only).

Functions and their conventions:

- `mean_absolute_error(y_true, y_pred)`: mean |y_true - y_pred| of finite numbers.
- `average_ranks(x)`: 1-based ranks; tied values share the mean of the ranks they span
  ([10, 20, 20, 30] -> [1, 2.5, 2.5, 4]).
- `pearson(x, y)`: the linear correlation coefficient. `spearman(x, y)`: Pearson of the
  average ranks (so ties are handled as average ranks). Both return None, never NaN, when it is
  undefined: fewer than two pairs, or either side constant (zero variance).
- `numeric_report(y_true, y_pred, *, unparsed_error)`: n, `parse` (ParseRate), `mae`,
  `mae_parsed`, `pearson`, `spearman`. An answer of None did not parse; `unparsed_error` has no
  default, so each caller states how such answers count:
  - a number e >= 0: each unparsed answer adds an absolute error of e and `mae` averages over
    all n answers (e.g. 9 on a 1-10 scale: the worst error a parsed answer could make);
  - None: `mae` averages over the parsed answers only (None when none parsed), and `parse`
    beside it says how many that is.
  `mae_parsed` is always the MAE over the parsed answers (None when none parsed). The
  correlations use the parsed pairs only (an unparsed answer has no value to rank).
- Every number must be finite, bools are not numbers; y_true must not hold None. Bad input,
  empty input and mismatched lengths raise ValueError naming the problem.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np

from hazard.core.metrics import check_lengths
from hazard.core.parse_rate import parse_success


def _check_number(v: Any, where: str) -> None:
    if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v):
        raise ValueError(f"{where} is not a finite number: {v!r}")


def _finite(values: Sequence[Any], what: str) -> np.ndarray:
    """`values` as a float array, or ValueError naming the first entry that is not finite."""
    for i, v in enumerate(values):
        _check_number(v, f"{what}[{i}]")
    return np.asarray(values, dtype=np.float64)


def mean_absolute_error(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    """Mean |y_true - y_pred| (no None: see `numeric_report` for unparsed answers)."""
    check_lengths(y_true, y_pred)
    return float(np.mean(np.abs(_finite(y_true, "y_true") - _finite(y_pred, "y_pred"))))


def average_ranks(x: Sequence[float]) -> list[float]:
    """1-based ranks of `x`, ties given the mean of the ranks they span."""
    a = _finite(x, "x")
    order = np.argsort(a, kind="stable")
    ranks = np.empty(len(a), dtype=np.float64)
    sorted_a = a[order]
    start = 0
    for end in range(1, len(a) + 1):
        if end == len(a) or sorted_a[end] != sorted_a[start]:
            ranks[order[start:end]] = (start + 1 + end) / 2  # mean of ranks start+1 .. end
            start = end
    return ranks.tolist()


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation; None with fewer than two pairs or a constant side."""
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} items but y has {len(y)}")
    a, b = _finite(x, "x"), _finite(y, "y")
    if len(a) < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return None
    da, db = a - a.mean(), b - b.mean()
    r = float(np.sum(da * db) / math.sqrt(float(np.sum(da * da)) * float(np.sum(db * db))))
    return min(1.0, max(-1.0, r))  # rounding can step just past +-1


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); None as for `pearson`."""
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} items but y has {len(y)}")
    return pearson(average_ranks(x), average_ranks(y))


def numeric_report(
    y_true: Sequence[float], y_pred: Sequence[float | None], *, unparsed_error: float | None
) -> dict[str, Any]:
    """MAE, Pearson and Spearman of numeric answers, None = unparsed (module docstring)."""
    check_lengths(y_true, y_pred)
    if unparsed_error is not None:
        _check_number(unparsed_error, "unparsed_error")
        if unparsed_error < 0:
            raise ValueError(f"unparsed_error must be >= 0 (or None), got {unparsed_error}")
    truth = _finite(y_true, "y_true")
    kept = [i for i, p in enumerate(y_pred) if p is not None]
    for i in kept:
        _check_number(y_pred[i], f"y_pred[{i}]")
    t, p = truth[kept], np.asarray([y_pred[i] for i in kept], dtype=np.float64)
    errors = np.abs(t - p)
    mae_parsed = float(errors.mean()) if kept else None
    if unparsed_error is None:
        mae = mae_parsed
    else:
        mae = float((errors.sum() + unparsed_error * (len(truth) - len(kept))) / len(truth))
    return {
        "n": len(truth),
        "parse": parse_success(y_pred),
        "mae": mae,
        "mae_parsed": mae_parsed,
        "pearson": pearson(t, p),
        "spearman": spearman(t, p),
    }
