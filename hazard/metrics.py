"""Evaluation metrics for label predictions (imports numpy only).

Zero-division conventions, used throughout:
- precision of a class never predicted = 0.0; recall of a class absent from y_true = 0.0;
  F1 = 0.0 when precision + recall = 0;
- balanced accuracy averages recall over the classes present in y_true;
- macro-F1 averages F1 over the classes present in y_true or (validly) in y_pred;
- empty inputs raise ValueError (a metric over nothing is not 0 or 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hazard.labels import HIGH_RISK, RISK_LABELS


def _check_lengths(y_true: Sequence[Any], y_pred: Sequence[Any]) -> None:
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError("cannot compute metrics over zero samples")


def _confusion(
    y_true: Sequence[str], y_pred: Sequence[Any], labels: Sequence[str]
) -> tuple[np.ndarray, int]:
    """(confusion matrix rows=true cols=pred, number of predictions outside `labels`)."""
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({str(t) for t in y_true if t not in index})
    if unknown:
        raise ValueError(f"y_true holds labels {unknown} outside {list(labels)}")
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    invalid = 0
    for t, p in zip(y_true, y_pred, strict=True):
        if isinstance(p, str) and p in index:
            cm[index[t], index[p]] += 1
        else:
            invalid += 1
    return cm, invalid


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0.0 where den == 0."""
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def classification_report(
    y_true: Sequence[str], y_pred: Sequence[str | None], labels: Sequence[str] = RISK_LABELS
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro-F1, per-class figures and the confusion matrix.

    Predictions outside `labels` (e.g. None for an unparseable answer) count as wrong: they
    lower accuracy and the recall of their true class, appear in no column of the confusion
    matrix (so a row may sum to less than its support) and are counted in
    `invalid_predictions`. `high_risk_recall` is None when y_true holds no high_risk.
    Zero-division conventions: see the module docstring.
    """
    _check_lengths(y_true, y_pred)
    labels = list(labels)
    cm, invalid = _confusion(y_true, y_pred, labels)
    tp = np.diag(cm).astype(np.float64)
    support = np.array([list(y_true).count(lab) for lab in labels])
    predicted = cm.sum(axis=0)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    in_true, in_either = support > 0, (support > 0) | (predicted > 0)
    per_class = {
        lab: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, lab in enumerate(labels)
    }
    high = per_class.get(HIGH_RISK)
    return {
        "n": len(y_true),
        "accuracy": float(tp.sum() / len(y_true)),
        "balanced_accuracy": float(recall[in_true].mean()),
        "macro_f1": float(f1[in_either].mean()),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "high_risk_recall": high["recall"] if high and high["support"] > 0 else None,
        "invalid_predictions": invalid,
    }
