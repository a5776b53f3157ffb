"""Eval outputs: metrics.json, the answers files and report.html from scored rows, checked
against accuracy, confusion, MAE, F1 and counts worked out here by hand, and the comparison
with a baseline."""

from __future__ import annotations

import json

import pytest

from hazard.core.labels import RISK_LABELS
from pipelines.eval_outputs import answers_files, compare, summarise, write_outputs

# (id, reference, prediction, error): 4 right, 2 wrong, 1 failed labelled, 2 unlabelled
ROWS = [
    ("a", "no_risk", "no_risk", None),
    ("b", "high_risk", "high_risk", None),
    ("c", "high_risk", "medium_risk", None),
    ("d", "low_risk", "low_risk", None),
    ("e", "medium_risk", "medium_risk", None),
    ("f", "non_corridor", "no_risk", None),
    ("g", "high_risk", None, "undecodable"),
    ("t1", None, "low_risk", None),
    ("t2", None, "high_risk", None),
]


def _rows() -> list[dict]:
    return [
        {
            "id": i,
            "task": "corridor_risk",
            "reference": ref,
            "prediction": pred,
            "raw": None,
            "correct": None if ref is None else pred == ref,
            "error": err,
            "error_detail": None if err is None else "broken bytes",
        }
        for i, ref, pred, err in ROWS
    ]


MODEL = {"kind": "bundle", "uri": "/m", "name": "hazard-base", "version": "1.0.0"}


def test_metrics_equal_hand_counts():
    report = summarise(_rows(), MODEL, "test", "/data")
    task = report["tasks"]["corridor_risk"]
    m = task["metrics"]
    # labelled rows a..g: a, b, d, e right; c, f wrong; g failed (an invalid prediction)
    assert m["n"] == 7
    assert m["accuracy"] == pytest.approx(4 / 7)
    assert m["invalid_predictions"] == 1
    # recall per present class: no_risk 1/1, low 1/1, medium 1/1, high 1/3, non_corridor 0/1
    assert m["balanced_accuracy"] == pytest.approx((1 + 1 + 1 + 1 / 3 + 0) / 5)
    cm = [[0] * 5 for _ in RISK_LABELS]
    idx = {label: k for k, label in enumerate(RISK_LABELS)}
    for _, ref, pred, _ in ROWS:
        if ref is not None and pred is not None:
            cm[idx[ref]][idx[pred]] += 1
    assert m["confusion_matrix"] == cm
    assert m["parse"] == {"n": 7, "parsed": 6, "rate": pytest.approx(6 / 7)}
    counts = {"rows": 9, "scored": 8, "failed": 1, "labelled": 7, "unlabelled": 2}
    assert task["counts"] == dict(counts, failed_by_reason={"undecodable": 1})
    assert report["counts"] == task["counts"]
    assert report["model"] == MODEL and report["split"] == "test"
    json.dumps(report)  # every value is JSON


def test_unlabelled_only_split_has_no_metrics():
    rows = [r for r in _rows() if r["reference"] is None]
    task = summarise(rows, MODEL, "test", "/data")["tasks"]["corridor_risk"]
    assert task["metrics"] is None and task["counts"]["unlabelled"] == 2


def test_answers_one_entry_per_row_in_order():
    files = answers_files(_rows(), None)
    assert list(files) == ["corridor_risk.json"]
    assert list(answers_files(_rows(), "corridor_test")) == ["corridor_test.json"]
    entries = json.loads(files["corridor_risk.json"])
    assert [e["id"] for e in entries] == [r[0] for r in ROWS]
    assert [e["output"] for e in entries] == [r[2] or "" for r in ROWS]


def test_files_written(tmp_path):
    rows = _rows()
    report = summarise(rows, MODEL, "test", "/data") | {"date": "2026-01-01T00:00:00+00:00"}
    write_outputs(str(tmp_path), report, rows, None)
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(report))
    assert len(json.loads((tmp_path / "answers" / "corridor_risk.json").read_text())) == 9
    page = (tmp_path / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 1  # the confusion matrix, inline
    assert f"{4 / 7:.4f}" in page and "hazard-base 1.0.0" in page


def _row(i, task, ref, pred, raw=None):
    return {"id": i, "task": task, "reference": ref, "prediction": pred, "raw": raw,
            "correct": None, "error": None, "error_detail": None}  # fmt: skip


# a mixed split: counting (generated; one unparsed), grounding and multiple choice
MIXED = [
    _row("n1", "counting", "3", "5", "five? 5"),
    _row("n2", "counting", "4", "4", "4"),
    _row("n3", "counting", "10", None, "many"),
    _row("g1", "grounding", "[[0, 0, 100, 100]]", "[[0, 0, 100, 80]]"),  # IoU 0.8
    _row("g2", "grounding", "[[500, 500, 600, 600]]", "[[0, 0, 10, 10], [500, 500, 600, 650]]"),
    _row("m1", "multiple_choice", "A", "A"),
    _row("m2", "multiple_choice", "B", "C"),
    _row("m3", "multiple_choice", None, "D"),
]


def test_mixed_split_metrics_from_the_stored_text():
    report = summarise(MIXED, MODEL, "test", "/data")
    tasks = report["tasks"]
    # counting: |5-3| and |4-4| over the 2 parsed answers = 1.0; 2 of 3 parsed
    count = tasks["counting"]
    assert count["metrics"]["mae"] == pytest.approx(1.0)
    assert count["metrics"]["parse"] == {"n": 3, "parsed": 2, "rate": pytest.approx(2 / 3)}
    assert count["headline"] == {"name": "mae", "value": 1.0, "higher_is_better": False}
    # grounding at IoU 0.5: g1 matched (IoU 0.8); g2: IoU 100*100/(100*150) = 0.667 matched,
    # [0,0,10,10] false positive -> tp 2, fp 1, fn 0: F1 = 4/5
    f1 = tasks["grounding"]["metrics"]["by_threshold"]["0.5"]
    assert (f1["tp"], f1["fp"], f1["fn"]) == (2, 1, 0) and f1["f1"] == pytest.approx(0.8)
    assert tasks["grounding"]["headline"]["name"] == "f1@0.5"
    # multiple choice: 1 of 2 labelled right
    assert tasks["multiple_choice"]["headline"]["value"] == pytest.approx(0.5)
    assert tasks["multiple_choice"]["counts"]["unlabelled"] == 1
    # overall: the mean of -MAE, F1 and accuracy = (-1.0 + 0.8 + 0.5) / 3
    assert report["overall"] == {"score": pytest.approx(0.1), "tasks_scored": 3}
    files = answers_files(MIXED, "flare")
    assert sorted(files) == ["flare_counting.json", "flare_grounding.json",
                             "flare_multiple_choice.json"]  # fmt: skip
    assert json.loads(files["flare_counting.json"]) == [
        {"id": "n1", "output": "5"}, {"id": "n2", "output": "4"}, {"id": "n3", "output": ""}
    ]  # fmt: skip


def test_comparison_with_a_baseline(tmp_path):
    base_rows = [dict(r) for r in MIXED]
    base_rows[1]["prediction"] = "7"  # counting MAE (2 + 3) / 2 = 2.5: worse than 1.0
    base_rows[6]["prediction"] = "B"  # multiple choice 2/2 = 1.0: better than 0.5
    report = summarise(MIXED, MODEL, "test", "/data")
    baseline = summarise(base_rows, dict(MODEL, kind="base"), "test", "/data")
    comparison = compare(report, baseline)
    assert comparison["counting"] == {
        "figure": "mae", "baseline": 2.5, "model": 1.0, "delta": -1.5, "model_is_better": True
    }  # fmt: skip
    assert comparison["multiple_choice"]["model_is_better"] is False
    assert comparison["multiple_choice"]["delta"] == pytest.approx(-0.5)
    assert comparison["grounding"]["model_is_better"] is None  # equal figures
    report |= {"baseline": baseline, "comparison": comparison}
    write_outputs(str(tmp_path), report, MIXED, None)
    page = (tmp_path / "report.html").read_text()
    # the comparison bars and the multiple-choice confusion matrix
    assert page.count("src='data:image/png;base64,") == 2
    assert "<td>2.5000</td><td>1.0000</td><td>-1.5000</td><td>model</td>" in page
