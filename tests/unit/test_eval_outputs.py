"""Eval outputs: metrics.json, the answers file and report.html from scored rows, checked
against accuracy, confusion and counts worked out here by hand."""

from __future__ import annotations

import json

import pytest

from hazard.core.labels import RISK_LABELS
from pipelines.eval_outputs import answers_json, summarise, write_outputs

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
    entries = json.loads(answers_json(_rows()))
    assert [e["id"] for e in entries] == [r[0] for r in ROWS]
    assert [e["output"] for e in entries] == [r[2] or "" for r in ROWS]


def test_files_written(tmp_path):
    rows = _rows()
    report = summarise(rows, MODEL, "test", "/data") | {"date": "2026-01-01T00:00:00+00:00"}
    write_outputs(str(tmp_path), report, rows, RISK_LABELS, "corridor_risk")
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(report))
    assert len(json.loads((tmp_path / "answers" / "corridor_risk.json").read_text())) == 9
    page = (tmp_path / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 1  # the confusion matrix, inline
    assert f"{4 / 7:.4f}" in page and "hazard-base 1.0.0" in page
