"""hazard.core.metrics against hand-computed values."""

from __future__ import annotations

import pytest

from hazard.core.metrics import classification_report, micro_f1

NO, LOW, MED, HIGH, NON = "no_risk", "low_risk", "medium_risk", "high_risk", "non_corridor"


def approx(x: float) -> object:
    return pytest.approx(x, abs=1e-12)


def test_five_class_report_by_hand() -> None:
    y_true = [NO, NO, LOW, MED, MED, HIGH, HIGH, HIGH, NON, NON]
    y_pred = [NO, LOW, LOW, MED, HIGH, HIGH, HIGH, None, NON, NO]
    r = classification_report(y_true, y_pred)
    # rows true, cols pred (no, low, med, high, non); the None for a high_risk is in no column
    assert r["confusion_matrix"] == [
        [1, 1, 0, 0, 0],
        [0, 1, 0, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 0, 2, 0],
        [1, 0, 0, 0, 1],
    ]
    assert r["n"] == 10
    assert r["invalid_predictions"] == 1
    # correct on the diagonal: 1 + 1 + 1 + 2 + 1 = 6 of 10
    assert r["accuracy"] == approx(0.6)
    # predicted counts: no 2, low 2, med 1, high 3, non 1
    # precision: no 1/2, low 1/2, med 1/1, high 2/3, non 1/1
    # recall:    no 1/2, low 1/1, med 1/2, high 2/3 (3 true, one unparsed), non 1/2
    # f1:        no 1/2, low 2/3, med 2/3, high 2/3, non 2/3
    expected = {
        NO: (1 / 2, 1 / 2, 1 / 2, 2),
        LOW: (1 / 2, 1.0, 2 / 3, 1),
        MED: (1.0, 1 / 2, 2 / 3, 2),
        HIGH: (2 / 3, 2 / 3, 2 / 3, 3),
        NON: (1.0, 1 / 2, 2 / 3, 2),
    }
    for label, (p, rec, f1, support) in expected.items():
        pc = r["per_class"][label]
        assert (pc["precision"], pc["recall"], pc["f1"]) == (approx(p), approx(rec), approx(f1))
        assert pc["support"] == support
    # balanced accuracy: (1/2 + 1 + 1/2 + 2/3 + 1/2) / 5 = (19/6) / 5 = 19/30
    assert r["balanced_accuracy"] == approx(19 / 30)
    # macro-F1: (1/2 + 4 * 2/3) / 5 = 19/30
    assert r["macro_f1"] == approx(19 / 30)
    assert r["high_risk_recall"] == approx(2 / 3)


def test_binary_report_by_hand() -> None:
    labels = (NO, HIGH)
    y_true = [HIGH] * 4 + [NO] * 6
    y_pred = [HIGH, HIGH, HIGH, NO, HIGH, NO, NO, NO, NO, NO]
    r = classification_report(y_true, y_pred, labels=labels)
    # high: TP 3, FN 1, FP 1; no: TP 5, FN 1, FP 1
    assert r["confusion_matrix"] == [[5, 1], [1, 3]]
    assert r["accuracy"] == approx(0.8)
    # precision = recall = f1: high 3/4, no 5/6
    assert r["per_class"][HIGH]["precision"] == approx(0.75)
    assert r["per_class"][HIGH]["f1"] == approx(0.75)
    assert r["per_class"][NO]["recall"] == approx(5 / 6)
    # balanced accuracy = macro-F1 = (3/4 + 5/6) / 2 = 19/24
    assert r["balanced_accuracy"] == approx(19 / 24)
    assert r["macro_f1"] == approx(19 / 24)
    assert r["high_risk_recall"] == approx(0.75)
    assert r["invalid_predictions"] == 0
    assert set(r["per_class"]) == {NO, HIGH}


def test_zero_division_class_never_predicted_and_absent() -> None:
    r = classification_report([NO, NO, LOW], [NO, NO, NO])
    # no: precision 2/3, recall 1, f1 = 2 * (2/3) / (5/3) = 4/5
    assert r["per_class"][NO]["f1"] == approx(0.8)
    # low never predicted: precision 0.0 (convention), recall 0, f1 0
    assert r["per_class"][LOW] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    # medium/high/non: absent everywhere -> zeros, and left out of both averages
    assert r["per_class"][MED] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # balanced accuracy over {no, low}: (1 + 0) / 2; macro-F1 over {no, low}: (0.8 + 0) / 2
    assert r["balanced_accuracy"] == approx(0.5)
    assert r["macro_f1"] == approx(0.4)
    assert r["accuracy"] == approx(2 / 3)
    assert r["high_risk_recall"] is None


def test_macro_f1_counts_classes_only_predicted() -> None:
    r = classification_report([NO, NO], [NO, HIGH])
    # no: precision 1, recall 1/2, f1 2/3; high: predicted once, never true -> f1 0
    # macro-F1 over {no, high} = (2/3 + 0) / 2 = 1/3; balanced accuracy over {no} = 1/2
    assert r["macro_f1"] == approx(1 / 3)
    assert r["balanced_accuracy"] == approx(0.5)
    assert r["per_class"][HIGH]["precision"] == 0.0
    assert r["high_risk_recall"] is None


def test_invalid_predictions_count_as_wrong() -> None:
    r = classification_report([HIGH, LOW, LOW], [None, "garbage", LOW])
    # 1 correct of 3; two invalid predictions, in no column of the matrix
    assert r["invalid_predictions"] == 2
    assert r["accuracy"] == approx(1 / 3)
    assert sum(map(sum, r["confusion_matrix"])) == 1
    assert r["per_class"][HIGH]["support"] == 1
    assert r["high_risk_recall"] == 0.0
    # low: precision 1/1, recall 1/2; balanced accuracy over {low, high} = (1/2 + 0) / 2
    assert r["per_class"][LOW]["recall"] == approx(0.5)
    assert r["balanced_accuracy"] == approx(0.25)


@pytest.mark.parametrize(
    ("y_true", "y_pred", "match"),
    [([NO], [NO, NO], "items"), ([], [], "zero"), (["fire"], [NO], "outside")],
)
def test_report_rejects_bad_input(y_true: list, y_pred: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        classification_report(y_true, y_pred)


def test_micro_f1_equals_accuracy_when_every_prediction_is_valid() -> None:
    # TP 2 (no, low); each wrong valid prediction is one FP and one FN: FP 2, FN 2
    # micro-F1 = 2*2 / (2*2 + 2 + 2) = 1/2 = accuracy 2/4
    y_true, y_pred = [NO, NO, LOW, MED], [NO, LOW, LOW, HIGH]
    assert micro_f1(y_true, y_pred) == approx(0.5)
    assert classification_report(y_true, y_pred)["accuracy"] == approx(0.5)


def test_micro_f1_counts_an_unparsed_answer_as_a_miss() -> None:
    y_true = [NO, NO, LOW, MED, HIGH]
    y_pred = [NO, LOW, LOW, None, HIGH]
    # TP 3; FP 1 (the low for a no); FN = 5 - 3 = 2 (the no predicted low, the unparsed med)
    # micro-F1 = 6 / (6 + 1 + 2) = 2/3, above accuracy 3/5: the None is a miss, not a false alarm
    assert micro_f1(y_true, y_pred) == approx(2 / 3)
    # a string outside the label set counts like None
    assert micro_f1(y_true, [NO, LOW, LOW, "medium", HIGH]) == approx(2 / 3)
    # nothing parsed: TP 0, FP 0, FN 5 -> 0, no zero division
    assert micro_f1(y_true, [None] * 5) == 0.0


def test_micro_f1_bad_input() -> None:
    with pytest.raises(ValueError, match="2 items but y_pred has 1"):
        micro_f1([NO, LOW], [NO])
    with pytest.raises(ValueError, match="zero samples"):
        micro_f1([], [])
    with pytest.raises(ValueError, match=r"labels \['cat'\] outside"):
        micro_f1(["cat"], [NO])
