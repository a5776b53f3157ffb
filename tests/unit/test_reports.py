"""hazard.reports: hand-computed numbers for the pure parts, real PNG files for the plots."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from hazard import reports as rp
from hazard.core import metrics
from hazard.core.metrics import PRPoint

A, B, C = "a", "b", "c"


def _png(path: Path) -> tuple[tuple[int, int], str]:
    """(size in pixels, sha256 of the RGBA pixels) of a PNG file."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size, hashlib.sha256(im.convert("RGBA").tobytes()).hexdigest()


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _history(n_steps: int = 40, lr_from_zero: bool = False, slope: float = 1.0) -> dict:
    steps = [
        {
            "step": s,
            "loss": 2.0 / (1 + slope * s),
            "lr": (s - 1) * 1e-5 if lr_from_zero else 1e-4 * 0.9**s,
            "seconds": 0.5,
        }
        for s in range(1, n_steps + 1)
    ]
    evals = [
        {
            "step": s,
            "accuracy": 0.5 + s / 100,
            "balanced_accuracy": 0.4 + s / 100,
            "macro_f1": {10: 0.3, 20: 0.6, 30: 0.5}[s],
            "high_risk_recall": None,
            "per_class_recall": {A: 0.5, B: None if s == 10 else 0.7},
        }
        for s in (10, 20, 30)
    ]
    return {"steps": steps, "evals": evals, "best_step": 20, "metric": "macro_f1"}


# --- pure computations -------------------------------------------------------------------------


def test_confusion_matrix_hand_counted():
    truth = [A, A, B, C, C, C, A]
    preds = [A, B, B, C, A, None, "zzz"]
    # rows true a, b, c; columns predicted a, b, c; None and "zzz" fall in no column
    assert metrics.confusion_matrix(truth, preds, [A, B, C]) == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    # the label order drives both axes
    assert metrics.confusion_matrix(truth, preds, [C, B, A]) == [[1, 0, 1], [0, 1, 0], [0, 1, 1]]
    with pytest.raises(ValueError, match="outside"):
        metrics.confusion_matrix(["d"], [A], [A, B, C])
    with pytest.raises(ValueError, match="items"):
        metrics.confusion_matrix([A, B], [A], [A, B, C])


def test_top_label_confidence_uses_first_label_on_ties():
    probs = [[0.1, 0.7, 0.2], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]
    conf, correct = metrics.top_label_confidence(probs, [B, B, A], [A, B, C])
    assert conf == pytest.approx([0.7, 0.5, 0.5])
    assert correct == [True, False, False]  # row 2: tie a/b -> a, truth b
    with pytest.raises(ValueError, match="rows of 3"):
        metrics.top_label_confidence([[0.5, 0.5]], [A], [A, B, C])
    with pytest.raises(ValueError, match="outside"):
        metrics.top_label_confidence([[1.0, 0.0, 0.0]], ["d"], [A, B, C])


def test_reliability_table_and_ece_hand_computed():
    conf, correct = [0.2, 0.4, 0.6, 0.9], [False, True, True, False]
    table = metrics.reliability_table(conf, correct, bins=2)
    assert [(r["lo"], r["hi"], r["count"]) for r in table] == [(0.0, 0.5, 2), (0.5, 1.0, 2)]
    assert table[0]["mean_confidence"] == pytest.approx(0.3)
    assert table[0]["accuracy"] == pytest.approx(0.5)
    assert table[1]["mean_confidence"] == pytest.approx(0.75)
    assert table[1]["accuracy"] == pytest.approx(0.5)
    # 2/4 * |0.5 - 0.3| + 2/4 * |0.5 - 0.75|
    assert metrics.expected_calibration_error(conf, correct, bins=2) == pytest.approx(0.225)

    # 5 bins: 0.2 -> bin 1, 0.4 -> 2, 0.6 -> 3, 0.9 -> 4; bin 0 is empty
    five = metrics.reliability_table(conf, correct, bins=5)
    assert [r["count"] for r in five] == [0, 1, 1, 1, 1]
    assert five[0]["mean_confidence"] is None and five[0]["accuracy"] is None
    # every bin holds one sample: 1/4 * (0.2 + 0.6 + 0.4 + 0.9)
    assert metrics.expected_calibration_error(conf, correct, bins=5) == pytest.approx(0.525)


def test_reliability_bin_edges():
    # 0.5 opens the upper bin; 1.0 belongs to the last bin
    table = metrics.reliability_table([0.0, 0.5, 1.0], [True, False, True], bins=2)
    assert [r["count"] for r in table] == [1, 2]
    assert table[1]["mean_confidence"] == pytest.approx(0.75)
    # 1/3 * |1 - 0| + 2/3 * |0.5 - 0.75|
    assert metrics.expected_calibration_error([0.0, 0.5, 1.0], [True, False, True], 2) == (
        pytest.approx(0.5)
    )
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.reliability_table([1.2], [True])
    with pytest.raises(ValueError, match="zero samples"):
        metrics.expected_calibration_error([], [])


def test_precision_recall_curve_with_ties():
    positive = [True, False, True, True, False]
    scores = [0.9, 0.8, 0.8, 0.3, 0.1]
    curve = metrics.precision_recall_curve(positive, scores)
    # the two 0.8 scores (one positive, one negative) enter together: one point, not two
    assert curve == [
        PRPoint(0.9, 1.0, pytest.approx(1 / 3)),
        PRPoint(0.8, pytest.approx(2 / 3), pytest.approx(2 / 3)),
        PRPoint(0.3, 0.75, 1.0),
        PRPoint(0.1, 0.6, 1.0),
    ]
    # input order does not matter
    assert metrics.precision_recall_curve(positive[::-1], scores[::-1]) == curve
    # 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/4 + 0 * 3/5
    assert metrics.average_precision(curve) == pytest.approx(29 / 36)
    # all scores tied: a single point predicting everything positive
    assert metrics.precision_recall_curve([True, False, False, True], [0.4] * 4) == [
        PRPoint(0.4, 0.5, 1.0)
    ]
    with pytest.raises(ValueError, match="positive"):
        metrics.precision_recall_curve([False, False], [0.2, 0.3])


# --- plots -------------------------------------------------------------------------------------


def test_module_does_not_touch_pyplot():
    code = "import sys, hazard.reports; print('matplotlib.pyplot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_plot_loss_lr_labels_scale_and_pixels(tmp_path):
    fig = rp.plot_loss_lr(_history(), tmp_path / "a.png")
    ax, ax_lr = fig.axes
    assert ax.get_title() == "Training loss and learning rate (40 steps, final loss 0.04878)"
    assert (ax.get_xlabel(), ax.get_ylabel(), ax_lr.get_ylabel()) == (
        "optimizer step",
        "loss",
        "learning rate",
    )
    assert _legend(ax) == ["loss", "learning rate"]
    assert ax_lr.get_yscale() == "log"  # 1e-4 * 0.9**s spans more than 10x
    assert list(ax.lines[0].get_xdata()) == list(range(1, 41))
    size, pixels_a = _png(tmp_path / "a.png")
    assert size == (880, 550)

    # same data -> same pixels; a different loss curve -> different pixels
    rp.plot_loss_lr(_history(), tmp_path / "a2.png")
    rp.plot_loss_lr(_history(slope=0.3), tmp_path / "b.png")
    assert _png(tmp_path / "a2.png")[1] == pixels_a
    assert _png(tmp_path / "b.png")[1] != pixels_a

    # a warm-up from lr = 0 cannot be drawn on a log axis
    fig = rp.plot_loss_lr(_history(lr_from_zero=True), tmp_path / "c.png")
    assert fig.axes[1].get_yscale() == "linear"


def test_plot_loss_lr_single_step_and_unsorted(tmp_path):
    one = {"steps": [{"step": 7, "loss": 1.5, "lr": 2e-5}], "evals": []}
    fig = rp.plot_loss_lr(one, tmp_path / "one.png")
    assert fig.axes[0].lines[0].get_marker() == "o"  # a lone point is visible
    assert _png(tmp_path / "one.png")[0] == (880, 550)
    shuffled = {
        "steps": [{"step": 2, "loss": 1.0, "lr": 1e-5}, {"step": 1, "loss": 2.0, "lr": 1e-5}]
    }
    line = rp.plot_loss_lr(shuffled, tmp_path / "s.png").axes[0].lines[0]
    assert list(line.get_xdata()) == [1, 2] and list(line.get_ydata()) == [2.0, 1.0]
    with pytest.raises(rp.NothingToPlot):
        rp.plot_loss_lr({"steps": []}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_plot_eval_metrics_marks_best_step(tmp_path):
    fig = rp.plot_eval_metrics(_history(), tmp_path / "m.png")
    top, bottom = fig.axes
    assert top.get_title() == "Validation metrics (selection metric: macro_f1)"
    assert (top.get_ylabel(), bottom.get_ylabel(), bottom.get_xlabel()) == (
        "score",
        "recall",
        "optimizer step",
    )
    best = "best step 20 (macro_f1 = 0.600)"
    # high_risk_recall is None at every step: left out rather than drawn empty
    assert _legend(top) == ["accuracy", "balanced_accuracy", "macro_f1", best]
    assert _legend(bottom) == [A, B, best]
    for ax in (top, bottom):
        vertical = [ln for ln in ax.lines if ln.get_label() == best]
        assert len(vertical) == 1 and list(vertical[0].get_xdata()) == [20, 20]
    macro = next(ln for ln in top.lines if ln.get_label() == "macro_f1")
    assert list(macro.get_ydata()) == [0.3, 0.6, 0.5]
    recall_b = next(ln for ln in bottom.lines if ln.get_label() == B)
    assert recall_b.get_ydata()[0] != recall_b.get_ydata()[0]  # None -> NaN gap
    assert _png(tmp_path / "m.png")[0] == (880, 550)

    no_best = dict(_history(), best_step=None)
    fig = rp.plot_eval_metrics(no_best, tmp_path / "n.png")
    assert not any(t.startswith("best step") for t in _legend(fig.axes[0]))
    with pytest.raises(rp.NothingToPlot):
        rp.plot_eval_metrics(dict(_history(), evals=[]), tmp_path / "e.png")


def test_plot_confusion_annotates_counts(tmp_path):
    truth = [A, A, B, C, C, C, A]
    preds = [A, B, B, C, A, None, "zzz"]
    fig = rp.plot_confusion(truth, preds, [A, B, C], tmp_path / "cm.png")
    ax = fig.axes[0]
    assert ax.get_title() == "Confusion matrix (n = 7, 2 invalid predictions)"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted label", "true label")
    assert [t.get_text() for t in ax.get_xticklabels()] == [A, B, C]
    cells = {
        (round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts
    }
    assert cells == {
        (i, j): str(v)
        for i, row in enumerate([[1, 1, 0], [0, 1, 0], [1, 0, 1]])
        for j, v in enumerate(row)
    }
    assert _png(tmp_path / "cm.png")[0] == (660, 660)


def test_plot_reliability_title_and_bars(tmp_path):
    probs = [[0.2, 0.8], [0.4, 0.6], [0.6, 0.4], [0.9, 0.1]]
    truth = [B, A, A, B]  # confidences 0.8 (right), 0.6 (wrong), 0.6 (right), 0.9 (wrong)
    fig = rp.plot_reliability(probs, truth, [A, B], tmp_path / "r.png", bins=2)
    ax, ax_count = fig.axes
    # one bin [0.5, 1]: accuracy 0.5, mean confidence 0.725
    assert ax.get_title() == "Reliability (top label): ECE = 0.225, n = 4, 2 bins"
    assert [p.get_height() for p in ax.containers[0]] == [0.5]
    assert [p.get_height() for p in ax_count.containers[0]] == [0, 4]
    assert (ax.get_ylabel(), ax_count.get_xlabel()) == ("accuracy", "top-label confidence")
    assert _png(tmp_path / "r.png")[0] == (660, 660)
    with pytest.raises(rp.NothingToPlot):
        rp.plot_reliability([], [], [A, B], tmp_path / "e.png")


def test_plot_high_risk_pr_curves_and_operating_points(tmp_path):
    truth = ["high_risk", "no_risk", "high_risk", "high_risk", "low_risk"]
    base = [0.9, 0.8, 0.8, 0.3, 0.1]  # AP 29/36, see test_precision_recall_curve_with_ties
    fused = [0.9, 0.2, 0.8, 0.7, 0.1]  # positives ranked first: AP 1
    points = {
        "base": {"precision": 0.5, "recall": 1 / 3},
        "fused": {"precision": 1.0, "recall": 1.0},
    }
    fig = rp.plot_high_risk_pr(truth, base, fused, tmp_path / "pr.png", points)
    ax = fig.axes[0]
    assert ax.get_title() == "high_risk precision/recall, base vs fused\n(n = 5, 3 high_risk)"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("high_risk recall", "high_risk precision")
    assert _legend(ax) == [
        "base p(high) sweep (AP = 0.806)",
        "fused p(high) sweep (AP = 1.000)",
        "base decision (P = 0.50, R = 0.33)",
        "fused decision (P = 1.00, R = 1.00)",
        "prevalence 0.60",
    ]
    marker = next(ln for ln in ax.lines if ln.get_label().startswith("base decision"))
    assert (marker.get_xdata()[0], marker.get_ydata()[0]) == pytest.approx((1 / 3, 0.5))
    base_line = next(ln for ln in ax.lines if ln.get_label().startswith("base p(high)"))
    assert list(base_line.get_xdata()) == pytest.approx([0, 1 / 3, 2 / 3, 1, 1])
    assert list(base_line.get_ydata()) == pytest.approx([1, 1, 2 / 3, 0.75, 0.6])
    assert _png(tmp_path / "pr.png")[0] == (660, 660)
    with pytest.raises(rp.NothingToPlot):
        rp.plot_high_risk_pr(["no_risk"], [0.1], [0.2], tmp_path / "e.png")


def test_plots_in_threads_match_sequential(tmp_path):
    histories = [_history(slope=s) for s in (0.2, 0.5, 1.0, 2.0)]
    for i, h in enumerate(histories):
        rp.plot_loss_lr(h, tmp_path / f"seq{i}.png")
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: rp.plot_loss_lr(histories[i], tmp_path / f"thr{i}.png"), range(4)))
    for i in range(4):
        assert _png(tmp_path / f"thr{i}.png") == _png(tmp_path / f"seq{i}.png")


# --- reports -----------------------------------------------------------------------------------


def _validation() -> tuple[list[list[float]], list[str]]:
    probs = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.1, 0.4]]
    return probs, [A, B, C, C]


def test_write_training_report(tmp_path):
    probs, truth = _validation()
    plots = rp.write_training_report(tmp_path, _history(), probs, truth, [A, B, C])
    assert plots == {
        "loss_lr": "plots/loss_lr.png",
        "val_metrics": "plots/val_metrics.png",
        "confusion": "plots/confusion.png",
        "reliability": "plots/reliability.png",
    }
    sizes = {name: _png(tmp_path / rel)[0] for name, rel in plots.items()}
    assert sizes == {
        "loss_lr": (880, 550),
        "val_metrics": (880, 550),
        "confusion": (660, 660),
        "reliability": (660, 660),
    }
    # atomic writes leave no temp files behind
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(
        Path(rel).name for rel in plots.values()
    )


def test_write_training_report_skips_what_has_no_data(tmp_path, caplog):
    one_step = {"steps": [{"step": 1, "loss": 2.0, "lr": 1e-5}], "evals": [], "best_step": None}
    with caplog.at_level(logging.WARNING, logger="hazard.reports"):
        plots = rp.write_training_report(tmp_path, one_step, [], [], [A, B, C])
    assert plots == {"loss_lr": "plots/loss_lr.png"}
    assert _png(tmp_path / "plots" / "loss_lr.png")[0] == (880, 550)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["loss_lr.png"]
    assert "val_metrics skipped: no validation evaluations recorded" in caplog.text
    assert "reliability skipped: no samples" in caplog.text
    # bad input is an error, not a skipped plot
    with pytest.raises(ValueError, match="3 values"):
        rp.write_training_report(tmp_path, one_step, [[0.5, 0.5]], [A], [A, B, C])


def test_write_calibration_report(tmp_path, caplog):
    truth = ["high_risk", "no_risk", "high_risk", "medium_risk"]
    base_pred = ["medium_risk", "no_risk", "high_risk", "medium_risk"]
    fused_pred = ["high_risk", "no_risk", "high_risk", "high_risk"]
    p_base, p_fused = [0.3, 0.1, 0.6, 0.2], [0.6, 0.1, 0.9, 0.5]
    plots = rp.write_calibration_report(tmp_path, truth, base_pred, fused_pred, p_base, p_fused)
    assert plots == {
        "high_risk_pr": "plots/high_risk_pr.png",
        "fused_confusion": "plots/fused_confusion.png",
    }
    assert all(_png(tmp_path / rel)[0] == (660, 660) for rel in plots.values())

    no_high = ["no_risk", "medium_risk"]
    with caplog.at_level(logging.WARNING, logger="hazard.reports"):
        plots = rp.write_calibration_report(
            tmp_path / "nh", no_high, no_high, no_high, [0.1, 0.2], [0.1, 0.3]
        )
    assert plots == {"fused_confusion": "plots/fused_confusion.png"}
    assert "high_risk_pr skipped: no high_risk sample in the test split" in caplog.text


def test_write_training_report_to_s3(moto_s3):
    probs, truth = _validation()
    plots = rp.write_training_report(
        f"s3://{moto_s3.bucket}/run1", _history(), probs, truth, [A, B, C]
    )
    assert moto_s3.keys("run1/") == sorted(f"run1/{rel}" for rel in plots.values())
    body = moto_s3.client().get_object(Bucket=moto_s3.bucket, Key="run1/plots/confusion.png")
    assert body["Body"].read()[:8] == b"\x89PNG\r\n\x1a\n"
