"""Multi-label classification metrics: each sample's answer is a set of labels (numpy only).

`multilabel_report(y_true, y_pred, labels=None)` gives micro-, macro- and sample-averaged F1,
per-label precision/recall/F1 and the parse-success rate. Conventions:

- A sample's labels are a list, tuple or set of strings; duplicates collapse. A bare string is a
  ValueError (it would read as its characters). Empty input and mismatched lengths: ValueError.
- Unparsed answers (None) predict no label: each of their true labels is a false negative, and
  their sample F1 is 0.0 even when the truth is the empty set (an unreadable answer is wrong,
  not "rightly empty"). They are counted in `parse` (`hazard.core.parse_rate.ParseRate`).
- `labels` is the closed label set when given: a true label outside it is a ValueError; a
  predicted label outside it is a false positive in the micro and sample figures, counted in
  `invalid_labels`, and left out of the per-label table and macro-F1. Without `labels`, the set
  is every label seen in y_true or y_pred.
- Per label: precision 0.0 when never predicted, recall 0.0 when absent from y_true, F1 0.0 when
  precision + recall = 0 (as in `hazard.core.metrics`).
- micro: TP, FP, FN pooled over samples and labels, F1 = 2 TP / (2 TP + FP + FN); the three
  micro figures are None when no label appears anywhere (TP + FP + FN = 0: nothing to score);
  otherwise micro precision is 0.0 when nothing was predicted, recall 0.0 when y_true is empty.
- macro-F1: mean per-label F1 over the labels present in y_true or (validly) in y_pred; None
  when there is none.
- samples-F1: mean over all samples of 2 |T & P| / (|T| + |P|), 1.0 for a parsed empty answer to
  an empty truth, 0.0 for an unparsed answer.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from hazard.core.metrics import _safe_div, check_lengths
from hazard.core.parse_rate import parse_success


def _label_set(value: Any, what: str, i: int) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, Collection):
        raise ValueError(f"{what}[{i}] must be a list or set of labels, got {value!r}")
    bad = [v for v in value if not isinstance(v, str)]
    if bad:
        raise ValueError(f"{what}[{i}] holds non-string labels {bad!r}")
    return frozenset(value)


def multilabel_report(
    y_true: Sequence[Collection[str]],
    y_pred: Sequence[Collection[str] | None],
    labels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Micro/macro/sample F1 and per-label figures of set-valued answers (None = unparsed).

    Conventions (zero division, unparsed answers, labels outside the set): module docstring.
    """
    check_lengths(y_true, y_pred)
    truth = [_label_set(t, "y_true", i) for i, t in enumerate(y_true)]
    preds = [None if p is None else _label_set(p, "y_pred", i) for i, p in enumerate(y_pred)]
    if labels is None:
        universe = sorted(set().union(*truth, *(p for p in preds if p is not None)))
    else:
        universe = list(labels)
        if len(set(universe)) != len(universe):
            raise ValueError(f"labels repeat a label: {universe}")
        unknown = sorted(set().union(*truth) - set(universe))
        if unknown:
            raise ValueError(f"y_true holds labels {unknown} outside {universe}")
    index = {lab: j for j, lab in enumerate(universe)}
    tp = np.zeros(len(universe), dtype=np.int64)
    n_pred = np.zeros(len(universe), dtype=np.int64)
    support = np.zeros(len(universe), dtype=np.int64)
    invalid, sample_f1 = 0, []
    for t, p in zip(truth, preds, strict=True):
        for lab in t:
            support[index[lab]] += 1
        if p is None:
            sample_f1.append(0.0)
            continue
        for lab in p:
            if lab in index:
                n_pred[index[lab]] += 1
                tp[index[lab]] += lab in t
            else:
                invalid += 1
        sample_f1.append(1.0 if not t and not p else 2 * len(t & p) / (len(t) + len(p)))
    precision = _safe_div(tp.astype(np.float64), n_pred)
    recall = _safe_div(tp.astype(np.float64), support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    present = (support > 0) | (n_pred > 0)
    all_tp = int(tp.sum())
    all_fp = int(n_pred.sum()) - all_tp + invalid
    all_fn = int(support.sum()) - all_tp
    micro: dict[str, float | None] = dict.fromkeys(("precision", "recall", "f1"))
    if all_tp + all_fp + all_fn:
        micro["precision"] = all_tp / (all_tp + all_fp) if all_tp + all_fp else 0.0
        micro["recall"] = all_tp / (all_tp + all_fn) if all_tp + all_fn else 0.0
        micro["f1"] = 2 * all_tp / (2 * all_tp + all_fp + all_fn)
    return {
        "n": len(truth),
        "parse": parse_success(preds),
        "micro_precision": micro["precision"],
        "micro_recall": micro["recall"],
        "micro_f1": micro["f1"],
        "macro_f1": float(f1[present].mean()) if present.any() else None,
        "samples_f1": float(np.mean(sample_f1)),
        "per_label": {
            lab: {
                "precision": float(precision[j]),
                "recall": float(recall[j]),
                "f1": float(f1[j]),
                "support": int(support[j]),
            }
            for j, lab in enumerate(universe)
        },
        "invalid_labels": invalid,
    }
