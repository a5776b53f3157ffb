"""Evaluation metrics for label predictions (imports numpy only).

Zero-division conventions, used throughout:
- precision of a class never predicted = 0.0; recall of a class absent from y_true = 0.0;
  F1 = 0.0 when precision + recall = 0;
- balanced accuracy averages recall over the classes present in y_true;
- macro-F1 averages F1 over the classes present in y_true or (validly) in y_pred;
- micro-F1 (`micro_f1`) pools every class: 2 TP / (2 TP + FP + FN); with every prediction
  valid it equals accuracy;
- empty inputs raise ValueError (a metric over nothing is not 0 or 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, TypedDict

import numpy as np

from hazard.core.labels import HIGH_RISK, RISK_LABELS


def check_lengths(y_true: Sequence[Any], y_pred: Sequence[Any]) -> None:
    """Raise ValueError unless the two sequences are equally long and not empty (the check
    every metric over reference/prediction pairs starts with)."""
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
    check_lengths(y_true, y_pred)
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


def micro_f1(
    y_true: Sequence[str], y_pred: Sequence[str | None], labels: Sequence[str] = RISK_LABELS
) -> float:
    """Micro-averaged F1 of single-label predictions: 2 TP / (2 TP + FP + FN) over all classes.

    A valid wrong prediction is one FP (its predicted class) and one FN (its true class). A
    prediction outside `labels` (None for an unparsed answer) predicts no class: one FN, no FP,
    so it lowers recall and F1 but not precision, and micro-F1 then exceeds accuracy. The
    denominator is at least len(y_true), so there is no zero division; empty input and true
    labels outside `labels` raise ValueError.
    """
    check_lengths(y_true, y_pred)
    cm, _ = _confusion(y_true, y_pred, list(labels))
    tp = int(np.trace(cm))
    fp = int(cm.sum()) - tp  # valid predictions that are wrong
    fn = len(y_true) - tp  # every true sample not predicted correctly, unparsed ones included
    return 2 * tp / (2 * tp + fp + fn)


# --- calibration, confusion and precision/recall (the report plots draw these) ---------------


class ReliabilityBin(TypedDict):
    lo: float
    hi: float
    count: int
    mean_confidence: float | None  # None for an empty bin
    accuracy: float | None


class PRPoint(NamedTuple):
    threshold: float
    precision: float
    recall: float


def confusion_matrix(
    truth: Sequence[str], preds: Sequence[str | None], labels: Sequence[str]
) -> list[list[int]]:
    """Counts, rows = true label, columns = predicted label, both in `labels` order.

    A prediction outside `labels` (e.g. None) is in no column, as in
    `classification_report`; a true label outside `labels` is a ValueError.
    """
    if len(truth) != len(preds):
        raise ValueError(f"truth has {len(truth)} items but preds has {len(preds)}")
    return _confusion(truth, preds, list(labels))[0].tolist()


def top_label_confidence(
    probabilities: Sequence[Sequence[float]], truth: Sequence[str], labels: Sequence[str]
) -> tuple[list[float], list[bool]]:
    """Per sample: (max probability, whether its label — the first on ties — is the truth)."""
    labels = list(labels)
    if len(probabilities) != len(truth):
        raise ValueError(f"{len(probabilities)} probability rows but {len(truth)} true labels")
    unknown = sorted({t for t in truth if t not in labels})
    if unknown:
        raise ValueError(f"truth holds labels {unknown} outside {labels}")
    if not probabilities:
        return [], []
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(labels):
        raise ValueError(f"probabilities must be rows of {len(labels)} values, got {p.shape}")
    top = p.argmax(axis=1)
    correct = [labels[i] == t for i, t in zip(top.tolist(), truth, strict=True)]
    return p.max(axis=1).tolist(), correct


def reliability_table(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = 10
) -> list[ReliabilityBin]:
    """One row per equal-width bin of [0, 1] (empty bins included, with None means)."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if len(confidences) != len(correct):
        raise ValueError(f"{len(confidences)} confidences but {len(correct)} correctness flags")
    if not confidences:
        raise ValueError("cannot compute calibration over zero samples")
    c = np.asarray(confidences, dtype=np.float64)
    if not np.all((c >= 0) & (c <= 1)):
        raise ValueError("confidences must lie in [0, 1]")
    ok = np.asarray(correct, dtype=bool)
    index = np.minimum((c * bins).astype(np.int64), bins - 1)
    table: list[ReliabilityBin] = []
    for i in range(bins):
        members = index == i
        n = int(members.sum())
        table.append(
            ReliabilityBin(
                lo=i / bins,
                hi=(i + 1) / bins,
                count=n,
                mean_confidence=float(c[members].mean()) if n else None,
                accuracy=float(ok[members].mean()) if n else None,
            )
        )
    return table


def expected_calibration_error(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = 10
) -> float:
    """Sum over bins of (bin share of samples) x |accuracy - mean confidence|."""
    table = reliability_table(confidences, correct, bins)
    n = len(confidences)
    return float(
        sum(
            row["count"] / n * abs(row["accuracy"] - row["mean_confidence"])
            for row in table
            if row["count"]
        )
    )


def precision_recall_curve(is_positive: Sequence[bool], scores: Sequence[float]) -> list[PRPoint]:
    """(threshold, precision, recall) for every distinct score, highest threshold first.

    Samples with score >= threshold are predicted positive, so tied scores enter together.
    No (recall 0, precision 1) end point is added. ValueError without any positive sample.
    """
    if len(is_positive) != len(scores):
        raise ValueError(f"{len(is_positive)} labels but {len(scores)} scores")
    pos = np.asarray(is_positive, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if not pos.any():
        raise ValueError("precision/recall needs at least one positive sample")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    order = np.argsort(-s, kind="stable")
    s, pos = s[order], pos[order]
    tp, fp = np.cumsum(pos), np.cumsum(~pos)
    last_of_tie = np.r_[s[1:] != s[:-1], True]  # the cumulative counts once a tie is complete
    total = int(pos.sum())
    return [
        PRPoint(float(s[i]), float(tp[i] / (tp[i] + fp[i])), float(tp[i] / total))
        for i in np.flatnonzero(last_of_tie)
    ]


def average_precision(curve: Sequence[PRPoint]) -> float:
    """Sum of precision x recall increase over a curve from `precision_recall_curve`."""
    ap, prev_recall = 0.0, 0.0
    for point in curve:
        ap += (point.recall - prev_recall) * point.precision
        prev_recall = point.recall
    return float(ap)


def as_json(value: Any) -> Any:
    """Metric values as JSON-ready data: named tuples (ParseRate, DetectionScores) as objects,
    float keys (IoU thresholds) as their shortest text ("0.5"), tuples as lists."""
    if hasattr(value, "_asdict"):
        return {k: as_json(v) for k, v in value._asdict().items()}
    if isinstance(value, dict):
        return {(f"{k:g}" if isinstance(k, float) else k): as_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(v) for v in value]
    return value
