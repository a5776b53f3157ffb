"""hazard.core.multilabel against hand-computed values and a brute-force re-implementation."""

from __future__ import annotations

import random

import pytest

from hazard.core.multilabel import multilabel_report
from hazard.core.parse_rate import ParseRate


def approx(x: float) -> object:
    return pytest.approx(x, abs=1e-12)


def test_report_by_hand_with_unparsed_and_invalid_labels() -> None:
    y_true = [{"a", "b"}, {"a"}, {"c"}, set(), {"b", "c"}]
    y_pred = [["a"], ("a", "b"), None, [], {"b", "c", "x"}]
    r = multilabel_report(y_true, y_pred, labels=("a", "b", "c"))
    # sample F1 = 2|T&P| / (|T|+|P|): 2/3, 2/3, 0 (unparsed), 1 (both empty), 2*2/(2+3) = 4/5
    # mean = (4/3 + 1 + 4/5) / 5 ... = (20/15 + 15/15 + 12/15) / 5 = (47/15) / 5 = 47/75
    assert r["samples_f1"] == approx(47 / 75)
    # per label (support, predicted, tp): a (2, 2, 2) b (2, 2, 1) c (2, 1, 1): the None in
    # sample 2 predicts nothing, so its c is a false negative
    assert r["per_label"] == {
        "a": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2},
        "b": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2},
        "c": {"precision": 1.0, "recall": 0.5, "f1": approx(2 / 3), "support": 2},
    }
    # macro = (1 + 1/2 + 2/3) / 3 = 13/18
    assert r["macro_f1"] == approx(13 / 18)
    # micro: TP 4; FP = 1 (b in sample 1) + 1 ("x", outside the set); FN = 6 - 4 = 2
    # precision 4/6, recall 4/6, F1 = 8 / (8 + 2 + 2) = 2/3
    assert r["micro_precision"] == approx(2 / 3)
    assert r["micro_recall"] == approx(2 / 3)
    assert r["micro_f1"] == approx(2 / 3)
    assert r["invalid_labels"] == 1
    assert r["parse"] == ParseRate(n=5, parsed=4, rate=0.8)


def test_unparsed_answer_to_an_empty_truth_is_wrong() -> None:
    # truth empty in both samples; one parsed empty answer (right), one unparsed (wrong)
    r = multilabel_report([[], []], [[], None], labels=("a",))
    assert r["samples_f1"] == approx(0.5)  # (1 + 0) / 2
    # no label anywhere: nothing to pool or average over
    assert (r["micro_precision"], r["micro_recall"], r["micro_f1"]) == (None, None, None)
    assert r["macro_f1"] is None
    assert r["parse"].parsed == 1


def test_zero_division_conventions() -> None:
    # nothing predicted: micro precision 0 (convention), recall 0, F1 0
    r = multilabel_report([["a"], ["b"]], [[], []])
    assert (r["micro_precision"], r["micro_recall"], r["micro_f1"]) == (0.0, 0.0, 0.0)
    # predictions but an empty truth: precision 0, recall 0 (convention)
    r = multilabel_report([[], []], [["a"], []])
    assert (r["micro_precision"], r["micro_recall"], r["micro_f1"]) == (0.0, 0.0, 0.0)
    assert r["samples_f1"] == approx(0.5)  # 0 for {a} vs {}, 1 for {} vs {}
    # a label of the closed set absent everywhere is left out of macro-F1: only a counts
    r = multilabel_report([["a"]], [["a"]], labels=("a", "b"))
    assert r["macro_f1"] == 1.0
    assert r["per_label"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_without_labels_the_set_is_what_was_seen() -> None:
    r = multilabel_report([["a"]], [["a", "z"]])
    assert set(r["per_label"]) == {"a", "z"}
    assert r["invalid_labels"] == 0
    # z is a valid label predicted wrongly: macro = (1 + 0) / 2
    assert r["macro_f1"] == approx(0.5)


@pytest.mark.parametrize(
    ("y_true", "y_pred", "labels", "match"),
    [
        ([["a"]], [["a"], ["b"]], None, "1 items but y_pred has 2"),
        ([], [], None, "zero samples"),
        (["ab"], [["a"]], None, r"y_true\[0\] must be a list or set"),
        ([["a"]], ["a"], None, r"y_pred\[0\] must be a list or set"),
        ([["a"]], [[1]], None, "non-string labels"),
        ([["q"]], [["a"]], ("a", "b"), r"labels \['q'\] outside"),
        ([["a"]], [["a"]], ("a", "a"), "repeat a label"),
    ],
)
def test_bad_input(y_true, y_pred, labels, match) -> None:
    with pytest.raises(ValueError, match=match):
        multilabel_report(y_true, y_pred, labels=labels)


def _brute_force(y_true, y_pred, labels):
    """Indicator-matrix F1s, written independently of the module (no invalid labels)."""
    rows = [[lab in t for lab in labels] for t in y_true]
    cols = [[p is not None and lab in p for lab in labels] for p in y_pred]
    tp = fp = fn = 0
    per_label = []
    for j in range(len(labels)):
        t_j = [r[j] for r in rows]
        p_j = [c[j] for c in cols]
        a = sum(x and y for x, y in zip(t_j, p_j, strict=True))
        b = sum(y and not x for x, y in zip(t_j, p_j, strict=True))
        c = sum(x and not y for x, y in zip(t_j, p_j, strict=True))
        tp, fp, fn = tp + a, fp + b, fn + c
        if a + b + c:  # present in truth or predictions
            per_label.append(2 * a / (2 * a + b + c))
    samples = []
    for r, c, p in zip(rows, cols, y_pred, strict=True):
        inter = sum(x and y for x, y in zip(r, c, strict=True))
        size = sum(r) + sum(c)
        samples.append(0.0 if p is None else (1.0 if size == 0 else 2 * inter / size))
    micro = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    macro = sum(per_label) / len(per_label) if per_label else None
    return micro, macro, sum(samples) / len(samples)


def test_randomised_against_indicator_matrices() -> None:
    rng = random.Random(19)
    labels = ("a", "b", "c", "d")
    for _ in range(300):
        n = rng.randint(1, 8)

        def draw() -> set[str]:
            return {lab for lab in labels if rng.random() < 0.4}

        y_true = [draw() for _ in range(n)]
        y_pred = [None if rng.random() < 0.15 else draw() for _ in range(n)]
        r = multilabel_report(y_true, y_pred, labels=labels)
        micro, macro, samples = _brute_force(y_true, y_pred, labels)
        assert r["micro_f1"] == (None if micro is None else approx(micro))
        assert r["macro_f1"] == (None if macro is None else approx(macro))
        assert r["samples_f1"] == approx(samples)
