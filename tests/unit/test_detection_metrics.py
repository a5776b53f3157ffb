"""hazard.core.detection against hand-computed values and brute-force matching."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from hazard.core.detection import (
    DetectionScores,
    box_iou,
    check_box,
    detection_report,
    match_boxes,
    to_norm1000,
    to_pixels,
)
from hazard.core.parse_rate import ParseRate


def approx(x: float) -> object:
    return pytest.approx(x, abs=1e-12)


# Two references and two predictions, all spanning y 0..10, so IoU = x-overlap / x-union:
#   pred0-ref0: overlap [4,10] = 6,  union [0,14] = 14 -> 3/7  (0.43)
#   pred0-ref1: overlap [6,14] = 8,  union [4,16] = 12 -> 2/3  (0.67)
#   pred1-ref1: overlap [9,16] = 7,  union [6,19] = 13 -> 7/13 (0.54)
#   pred1-ref0: overlap [9,10] = 1,  union [0,19] = 19 -> 1/19 (0.05)
REFS = [[0, 0, 10, 10], [6, 0, 16, 10]]
PREDS = [[4, 0, 14, 10], [9, 0, 19, 10]]


def _iou(a, b) -> float:
    """Plain-Python IoU, written apart from the module."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _greedy_by_order(preds, refs, t) -> int:
    """The FLARE 2025 baseline's rule: each prediction in listed order takes its best unmatched
    reference (here with IoU >= t). Returns the number of matches."""
    taken: set[int] = set()
    for p in preds:
        free = [(_iou(p, r), j) for j, r in enumerate(refs) if j not in taken]
        best = max(free, default=(0.0, -1))
        if best[1] >= 0 and best[0] >= t:
            taken.add(best[1])
    return len(taken)


def test_iou_by_hand() -> None:
    # overlap 5 x 5 = 25, union 100 + 100 - 25 = 175
    assert box_iou([0, 0, 10, 10], [5, 5, 15, 15]) == approx(25 / 175)
    assert box_iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0  # touching only
    assert box_iou([0, 0, 10, 10], [0, 0, 5, 10]) == approx(0.5)  # half inside
    assert box_iou([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    for (i, j), want in {(0, 0): 3 / 7, (0, 1): 2 / 3, (1, 1): 7 / 13, (1, 0): 1 / 19}.items():
        assert box_iou(PREDS[i], REFS[j]) == approx(want)


def test_conversion_between_norm1000_and_pixels() -> None:
    # 640 x 480 image: x scales by 0.64, y by 0.48
    assert to_pixels([100, 250, 500, 1000], 640, 480) == approx((64, 120, 320, 480))
    assert to_norm1000([64, 120, 320, 480], 640, 480) == approx((100, 250, 500, 1000))
    # IoU does not depend on the space
    a, b = [100, 250, 500, 1000], [300, 100, 900, 700]
    assert box_iou(to_pixels(a, 640, 480), to_pixels(b, 640, 480)) == approx(box_iou(a, b))
    with pytest.raises(ValueError, match="outside"):
        to_norm1000([0, 0, 700, 10], 640, 480)  # x2 past the image's width
    with pytest.raises(ValueError, match="image size must be positive"):
        to_pixels([0, 0, 10, 10], 0, 480)


def test_maximum_matching_beats_greedy_by_listed_order() -> None:
    # at IoU 0.3 the edges are pred0-ref0, pred0-ref1, pred1-ref1. Greedy by order: pred0 takes
    # its best, ref1, and pred1 is left with ref0 at 1/19 -> 1 match. Maximum: pred0-ref0 and
    # pred1-ref1 -> 2 matches.
    assert _greedy_by_order(PREDS, REFS, 0.3) == 1
    assert match_boxes(PREDS, REFS, 0.3) == [(0, 0), (1, 1)]
    # greedy depends on the listing order (reversed: pred1 takes ref1, pred0 ref0 -> 2); the
    # maximum matching does not
    assert _greedy_by_order(PREDS[::-1], REFS, 0.3) == 2
    assert match_boxes(PREDS[::-1], REFS, 0.3) == [(0, 1), (1, 0)]
    # at 0.5 only pred0-ref1 (2/3) and pred1-ref1 (7/13) qualify: one match, the higher IoU
    assert match_boxes(PREDS, REFS, 0.5) == [(0, 1)]
    assert match_boxes(PREDS, [], 0.5) == []


def test_report_over_images_by_hand() -> None:
    refs = [
        REFS,  # image 0: the case above
        [[100, 100, 200, 200]],  # image 1: the answer did not parse
        [],  # image 2: nothing to find, one box predicted
        [[500, 500, 600, 600]],  # image 3: parsed "no boxes"
        [[0, 0, 100, 100]],  # image 4: IoU exactly 0.5 = 5000 / 10000
    ]
    preds = [PREDS, None, [[0, 0, 50, 50]], [], [[0, 0, 100, 50]]]
    r = detection_report(preds, refs, thresholds=(0.3, 0.5))
    assert r["n_images"] == 5
    assert r["parse"] == ParseRate(n=5, parsed=4, rate=0.8)
    # predicted boxes 2 + 0 + 1 + 0 + 1 = 4, reference boxes 2 + 1 + 0 + 1 + 1 = 5
    # @0.3: TP 2 (image 0) + 1 (image 4) = 3, FP 4 - 3 = 1, FN 5 - 3 = 2
    #       precision 3/4, recall 3/5, F1 = 6 / (6 + 1 + 2) = 2/3
    at3 = r["by_threshold"][0.3]
    assert (at3.tp, at3.fp, at3.fn) == (3, 1, 2)
    assert (at3.precision, at3.recall, at3.f1) == (approx(3 / 4), approx(3 / 5), approx(2 / 3))
    # @0.5: TP 1 (image 0) + 1 (image 4, inclusive threshold) = 2, FP 2, FN 3
    #       precision 2/4, recall 2/5, F1 = 4 / (4 + 2 + 3) = 4/9
    assert r["by_threshold"][0.5] == DetectionScores(0.5, 2, 2, 3, 0.5, 0.4, approx(4 / 9))


def test_instance_boxes_match_only_within_their_label() -> None:
    left, right = [0, 0, 10, 10], [20, 0, 30, 10]
    refs = [{"chr1": [left], "chr2": [right]}]
    swapped = [{"chr1": [right], "chr2": [left]}]
    s = detection_report(swapped, refs)["by_threshold"][0.5]
    assert (s.tp, s.fp, s.fn, s.f1) == (0, 2, 2, 0.0)
    # the same boxes as plain lists match (TP 2, F1 1)
    s = detection_report([[right, left]], [[left, right]])["by_threshold"][0.5]
    assert (s.tp, s.fp, s.fn, s.f1) == (2, 0, 0, 1.0)
    # a label the answer leaves out has no predicted boxes: TP 1, FN 1, F1 = 2 / (2 + 0 + 1)
    s = detection_report([{"chr1": [left]}], refs)["by_threshold"][0.5]
    assert (s.tp, s.fp, s.fn, s.f1) == (1, 0, 1, approx(2 / 3))


def test_zero_division_conventions() -> None:
    # no box anywhere: nothing to score
    r = detection_report([[], []], [[], []])
    assert r["by_threshold"][0.5] == DetectionScores(0.5, 0, 0, 0, None, None, None)
    # nothing predicted: precision 0 (convention), recall 0; unparsed counts the same way
    s = detection_report([None], [[[0, 0, 10, 10]]])["by_threshold"][0.5]
    assert (s.precision, s.recall, s.f1, s.fn) == (0.0, 0.0, 0.0, 1)
    # boxes predicted where there are none: recall 0 (convention)
    s = detection_report([[[0, 0, 10, 10]]], [[]])["by_threshold"][0.5]
    assert (s.precision, s.recall, s.f1, s.fp) == (0.0, 0.0, 0.0, 1)


@pytest.mark.parametrize(
    ("box", "bounds", "match"),
    [
        ([5, 0, 5, 10], (1000, 1000), "x1 < x2"),
        ([0, 9, 5, 2], (1000, 1000), "y1 < y2"),
        ([0, 0, 1001, 10], (1000, 1000), r"outside \[0, 1000\]"),
        ([-1, 0, 10, 10], (1000, 1000), "outside"),
        ([0, 0, 700, 10], (640, 480), r"outside \[0, 640\] x \[0, 480\]"),
        ([0, 0, math.nan, 10], None, "not finite"),
        ([0, 0, 10], None, "four numbers"),
        ("0 0 1 1", None, "four numbers"),
        ([0, 0, "a", 1], None, "four numbers"),
    ],
)
def test_bad_boxes(box, bounds, match) -> None:
    with pytest.raises(ValueError, match=match):
        check_box(box, bounds)


def test_bad_report_input_names_the_problem() -> None:
    ok = [[0, 0, 10, 10]]
    with pytest.raises(ValueError, match=r"preds\[1\]\[None\], box 0: .*x1 < x2"):
        detection_report([ok, [[9, 0, 1, 5]]], [ok, ok])
    with pytest.raises(ValueError, match=r"refs\[0\]\[None\], box 0: .*not finite"):
        detection_report([ok], [[[0, 0, math.inf, 1]]])
    with pytest.raises(ValueError, match="1 items but y_pred has 2"):
        detection_report([ok, ok], [ok])
    with pytest.raises(ValueError, match="zero samples"):
        detection_report([], [])
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\]"):
        detection_report([ok], [ok], thresholds=(0.0,))
    with pytest.raises(ValueError, match="at least one IoU threshold"):
        detection_report([ok], [ok], thresholds=())
    with pytest.raises(ValueError, match="the other a mapping"):
        detection_report([{"a": ok}], [ok])
    with pytest.raises(ValueError, match=r"preds\[0\] must be a list of boxes"):
        detection_report(["boxes"], [ok])
    # pixel boxes of a 640 x 480 image, checked against its size when given
    assert detection_report([[[600, 0, 640, 480]]], [[[600, 0, 640, 480]]], bounds=(640, 480))
    with pytest.raises(ValueError, match="outside"):
        detection_report([[[600, 0, 641, 480]]], [ok], bounds=(640, 480))


def _brute_force_max(preds, refs, t) -> int:
    """Most one-to-one pairs at IoU >= t, by trying every injective assignment."""
    best = 0
    slots = list(range(len(refs))) + [None] * len(preds)  # None: the prediction stays unmatched
    for assignment in set(itertools.permutations(slots, len(preds))):
        pairs = [(i, j) for i, j in enumerate(assignment) if j is not None]
        if all(_iou(preds[i], refs[j]) >= t for i, j in pairs):
            best = max(best, len(pairs))
    return best


def test_randomised_against_brute_force() -> None:
    rng = random.Random(19)

    def box() -> list[int]:  # a coarse grid, so that boxes overlap often
        x1, y1 = rng.randint(0, 6), rng.randint(0, 6)
        return [x1, y1, x1 + rng.randint(1, 4), y1 + rng.randint(1, 4)]

    for _ in range(300):
        preds = [box() for _ in range(rng.randint(0, 4))]
        refs = [box() for _ in range(rng.randint(0, 4))]
        t = rng.choice((0.1, 0.3, 0.5))
        pairs = match_boxes(preds, refs, t)
        assert len({i for i, _ in pairs}) == len({j for _, j in pairs}) == len(pairs)
        assert all(_iou(preds[i], refs[j]) >= t - 1e-12 for i, j in pairs)
        assert len(pairs) == _brute_force_max(preds, refs, t)
        assert len(pairs) >= _greedy_by_order(preds, refs, t)
        s = detection_report([preds], [refs], thresholds=(t,))["by_threshold"][t]
        assert (s.tp, s.fp, s.fn) == (len(pairs), len(preds) - len(pairs), len(refs) - len(pairs))
