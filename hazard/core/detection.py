"""Detection metrics for axis-aligned boxes [x1, y1, x2, y2] (numpy only).

Functions and their conventions:

- `check_box(box, bounds=NORM_BOUNDS)`: the box as four floats, or ValueError naming the fault:
  not four numbers, not finite, x1 >= x2 or y1 >= y2 (a box has area), or outside
  [0, width] x [0, height] of `bounds`. Boxes live in one of two spaces: the 0-1000 normalised
  space (`NORM_BOUNDS`; Qwen2-VL grounding and data sets such as MIPI ViDA use it) or pixels of
  an image (bounds = its (width, height); None skips the bound check when the size is unknown).
- `to_pixels(box, width, height)` / `to_norm1000(box, width, height)`: convert between them.
  IoU is the same in both spaces (scaling x and y scales every area by the same factor).
- `box_iou(a, b)`: intersection area / union area; boxes that only touch have IoU 0.
- `match_boxes(preds, refs, iou_threshold)`: a one-to-one matching of predicted to reference
  boxes with IoU >= threshold (inclusive) holding the MOST pairs (maximum bipartite matching by
  augmenting paths). Why not greedy: generated boxes carry no confidence to sort by, and the
  order a model lists them in is arbitrary. The FLARE 2025 baseline's evaluator lets each
  prediction, in listed order, take its best unmatched reference; that can leave a later
  prediction without the only reference it overlaps (tests show one such case), so its F1
  depends on the listing order. The maximum matching does not (its size is order-free) and is
  never below any greedy rule's count. Among several maximum matchings the one returned is
  deterministic (predictions in order, each trying its references by falling IoU).
- `detection_report(preds, refs, thresholds=(0.5,), bounds=NORM_BOUNDS)`: per threshold, TP,
  FP, FN summed over all images (micro over boxes), precision, recall and F1. Each image's
  boxes are a list, or a mapping label -> list (instance detection: boxes match only within
  their label; a label missing on one side has no boxes there). A prediction of None is an
  unparsed answer: every reference box of that image is a false negative, and it is counted in
  `parse`; an empty list is a parsed "no boxes". Zero division: precision 0.0 when no box was
  predicted, recall 0.0 when there is no reference box, F1 = 2 TP / (2 TP + FP + FN); all
  three are None when there is no box at all (nothing to score). Thresholds must lie in (0, 1].
  Empty input and mismatched lengths: ValueError.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from hazard.core.metrics import check_lengths
from hazard.core.parse_rate import parse_success

NORM = 1000.0
NORM_BOUNDS = (NORM, NORM)
Box = tuple[float, float, float, float]


def check_box(box: Any, bounds: tuple[float, float] | None = NORM_BOUNDS) -> Box:
    """`box` as four floats [x1, y1, x2, y2], validated (see the module docstring)."""
    if isinstance(box, str | bytes) or not isinstance(box, Sequence) or len(box) != 4:
        raise ValueError(f"a box is four numbers [x1, y1, x2, y2], got {box!r}")
    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"a box is four numbers [x1, y1, x2, y2], got {box!r}") from None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise ValueError(f"box {list(box)} has a coordinate that is not finite")
    if not (x1 < x2 and y1 < y2):
        raise ValueError(f"box {list(box)} needs x1 < x2 and y1 < y2")
    if bounds is not None:
        width, height = bounds
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            raise ValueError(f"box {list(box)} lies outside [0, {width}] x [0, {height}]")
    return (x1, y1, x2, y2)


def _check_size(width: float, height: float) -> None:
    if not (width > 0 and height > 0 and math.isfinite(width) and math.isfinite(height)):
        raise ValueError(f"image size must be positive and finite, got {width} x {height}")


def to_pixels(box: Sequence[float], width: float, height: float) -> Box:
    """A 0-1000 normalised box in pixels of a `width` x `height` image."""
    _check_size(width, height)
    x1, y1, x2, y2 = check_box(box)
    sx, sy = width / NORM, height / NORM
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


def to_norm1000(box: Sequence[float], width: float, height: float) -> Box:
    """A pixel box of a `width` x `height` image in the 0-1000 normalised space."""
    _check_size(width, height)
    x1, y1, x2, y2 = check_box(box, (width, height))
    sx, sy = NORM / width, NORM / height
    return (x1 * sx, y1 * sy, x2 * sx, y2 * sy)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes in the same space (validated, unbounded)."""
    return float(_iou_matrix([check_box(a, None)], [check_box(b, None)])[0, 0])


def _iou_matrix(preds: Sequence[Box], refs: Sequence[Box]) -> np.ndarray:
    """IoU of every (predicted, reference) pair of checked boxes, shape (len(preds), len(refs))."""
    p = np.asarray(preds, dtype=np.float64).reshape(-1, 4)[:, None, :]
    r = np.asarray(refs, dtype=np.float64).reshape(-1, 4)[None, :, :]
    w = np.clip(np.minimum(p[..., 2], r[..., 2]) - np.maximum(p[..., 0], r[..., 0]), 0, None)
    h = np.clip(np.minimum(p[..., 3], r[..., 3]) - np.maximum(p[..., 1], r[..., 1]), 0, None)
    inter = w * h
    area_p = (p[..., 2] - p[..., 0]) * (p[..., 3] - p[..., 1])
    area_r = (r[..., 2] - r[..., 0]) * (r[..., 3] - r[..., 1])
    return inter / (area_p + area_r - inter)


def _check_threshold(t: float) -> float:
    t = float(t)
    if not 0 < t <= 1:
        raise ValueError(f"an IoU threshold must lie in (0, 1], got {t}")
    return t


def _max_matching(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Most (pred, ref) pairs with IoU >= threshold, one-to-one (augmenting paths)."""
    n_pred, n_ref = iou.shape
    candidates = [
        [int(j) for j in np.argsort(-iou[i], kind="stable") if iou[i, j] >= threshold]
        for i in range(n_pred)
    ]
    owner = [-1] * n_ref  # ref -> matched pred

    def augment(i: int, seen: list[bool]) -> bool:
        for j in candidates[i]:
            if not seen[j]:
                seen[j] = True
                if owner[j] < 0 or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    for i in range(n_pred):
        augment(i, [False] * n_ref)
    return sorted((i, j) for j, i in enumerate(owner) if i >= 0)


def match_boxes(
    preds: Sequence[Sequence[float]], refs: Sequence[Sequence[float]], iou_threshold: float
) -> list[tuple[int, int]]:
    """(pred index, ref index) pairs of a maximum one-to-one matching at IoU >= threshold,
    sorted by pred index. Boxes are checked without bounds (see the module docstring)."""
    threshold = _check_threshold(iou_threshold)
    p = [check_box(b, None) for b in preds]
    r = [check_box(b, None) for b in refs]
    if not p or not r:
        return []
    return _max_matching(_iou_matrix(p, r), threshold)


class DetectionScores(NamedTuple):
    threshold: float
    tp: int
    fp: int
    fn: int
    precision: float | None  # None when there is no box at all
    recall: float | None
    f1: float | None


def _groups(value: Any, what: str, i: int) -> dict[Any, list[Any]]:
    """An image's boxes as label -> list (a plain list is one group under the key None)."""
    if isinstance(value, Mapping):
        groups = dict(value)
    elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
        groups = {None: value}
    else:
        raise ValueError(f"{what}[{i}] must be a list of boxes or a label -> boxes mapping")
    for label, boxes in groups.items():
        if isinstance(boxes, str | bytes) or not isinstance(boxes, Sequence):
            raise ValueError(f"{what}[{i}][{label!r}] must be a list of boxes, got {boxes!r}")
    return groups


def _checked(boxes: Sequence[Any], bounds: tuple[float, float] | None, where: str) -> list[Box]:
    out = []
    for k, box in enumerate(boxes):
        try:
            out.append(check_box(box, bounds))
        except ValueError as e:
            raise ValueError(f"{where}, box {k}: {e}") from None
    return out


def detection_report(
    preds: Sequence[Sequence[Sequence[float]] | Mapping[Any, Any] | None],
    refs: Sequence[Sequence[Sequence[float]] | Mapping[Any, Any]],
    thresholds: Sequence[float] = (0.5,),
    bounds: tuple[float, float] | None = NORM_BOUNDS,
) -> dict[str, Any]:
    """Micro precision/recall/F1 over all boxes of all images at each IoU threshold.

    Returns {"n_images", "parse" (ParseRate of the predictions), "by_threshold": {t:
    DetectionScores}}. Matching, unparsed answers, labels and zero division: module docstring.
    """
    check_lengths(refs, preds)
    ts = [_check_threshold(t) for t in thresholds]
    if not ts:
        raise ValueError("give at least one IoU threshold")
    # per image and label: the IoU matrix (None when one side has no box) and the box counts
    pairs: list[tuple[np.ndarray | None, int, int]] = []
    for i, (ref, pred) in enumerate(zip(refs, preds, strict=True)):
        ref_groups = _groups(ref, "refs", i)
        pred_groups = {} if pred is None else _groups(pred, "preds", i)
        if pred is not None and (None in ref_groups) != (None in pred_groups):
            raise ValueError(f"image {i}: one side has a list of boxes, the other a mapping")
        for label in {**ref_groups, **pred_groups}:
            r = _checked(ref_groups.get(label, []), bounds, f"refs[{i}][{label!r}]")
            p = _checked(pred_groups.get(label, []), bounds, f"preds[{i}][{label!r}]")
            pairs.append((_iou_matrix(p, r) if p and r else None, len(p), len(r)))
    by_threshold = {}
    for t in ts:
        tp = sum(len(_max_matching(iou, t)) for iou, _, _ in pairs if iou is not None)
        n_pred = sum(n for _, n, _ in pairs)
        n_ref = sum(n for _, _, n in pairs)
        fp, fn = n_pred - tp, n_ref - tp
        if tp + fp + fn == 0:
            by_threshold[t] = DetectionScores(t, 0, 0, 0, None, None, None)
            continue
        by_threshold[t] = DetectionScores(
            threshold=t,
            tp=tp,
            fp=fp,
            fn=fn,
            precision=tp / n_pred if n_pred else 0.0,
            recall=tp / n_ref if n_ref else 0.0,
            f1=2 * tp / (2 * tp + fp + fn),
        )
    return {"n_images": len(refs), "parse": parse_success(preds), "by_threshold": by_threshold}
