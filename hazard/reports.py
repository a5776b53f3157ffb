"""Training and calibration plots as PNG files (headless, thread-safe: no pyplot).

Figures are built with the object API (`matplotlib.figure.Figure` rendered by
`FigureCanvasAgg`), never through pyplot's global state, so Ray workers may draw in parallel
threads. Every `plot_*` function draws one figure, writes it as a PNG (`DPI` dots per inch,
pixel size = figure size x DPI) through `hazard.infra.storage.write_bytes` (local: temp file +
`os.replace`; `s3://` URIs work too) and returns the `Figure` for inspection. A plot with
nothing to draw (no steps, no evaluations, no samples, no high_risk sample) raises
`NothingToPlot`, a ValueError that the `write_*_report` functions catch: they skip that plot
and log the reason. Other bad input (mismatched lengths, unknown labels) raises a plain
ValueError and is not skipped.

Inputs (plain dicts and lists, as the jobs hold them in JSON):

- `TrainingHistory`: ``{"steps": [StepRecord], "evals": [EvalRecord], "best_step": int | None,
  "metric": str}``; `metric` names the selection metric (a key of `EvalRecord`) and
  `best_step` the evaluation step it selected.
- `StepRecord`: ``{"step": int (optimizer step), "loss": float, "lr": float,
  "seconds": float (optional, not plotted)}``.
- `EvalRecord`: ``{"step": int, "accuracy", "balanced_accuracy", "macro_f1": float,
  "high_risk_recall": float | None (None: no high_risk row), "per_class_recall":
  {label: float | None}}``.
- Validation predictions: ``probabilities: list[list[float]]`` (one row per sample, columns in
  the order of ``labels: list[str]``) and ``truth: list[str]``.
- Calibration (one split): ``truth``, ``base_pred`` / ``fused_pred`` (predicted labels; None or
  any value outside the labels counts as an invalid prediction), and per sample
  ``p_high_base`` / ``p_high_fused`` (probability of high_risk before and after fusion).

Conventions (the numbers come from `hazard.core.metrics`): the confusion matrix has true labels as
rows and predicted labels as columns; calibration uses the top-label confidence (max
probability, the first label on ties) in `bins` equal-width bins where bin i holds
``i/bins <= c < (i+1)/bins`` and the last bin also holds 1.0; a precision/recall point per
distinct score t predicts positive when score >= t.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import NotRequired, TypedDict

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hazard.core.labels import HIGH_RISK, RISK_LABELS
from hazard.core.metrics import (
    average_precision,
    classification_report,
    confusion_matrix,
    expected_calibration_error,
    precision_recall_curve,
    reliability_table,
    top_label_confidence,
)
from hazard.infra.storage import join_uri, write_bytes

logger = logging.getLogger(__name__)

DPI = 110
WIDE = (8.0, 5.0)  # inches: 880 x 550 px (loss/lr, validation metrics)
SQUARE = (6.0, 6.0)  # inches: 660 x 660 px (confusion, reliability, precision/recall)
EVAL_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "high_risk_recall")


class StepRecord(TypedDict):
    step: int
    loss: float
    lr: float
    seconds: NotRequired[float]


class EvalRecord(TypedDict):
    step: int
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    high_risk_recall: float | None
    per_class_recall: dict[str, float | None]


class TrainingHistory(TypedDict):
    steps: list[StepRecord]
    evals: list[EvalRecord]
    best_step: int | None
    metric: str


class NothingToPlot(ValueError):
    """The input holds no data for this plot (no steps, no evaluations, no samples, ...)."""


# --- figures --------------------------------------------------------------------------------


def _new_figure(size: tuple[float, float]) -> Figure:
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: str | os.PathLike) -> None:
    """Render `fig` to PNG at `DPI` and write it atomically to a local path or URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    write_bytes(path, buf.getvalue())


def _marker(n: int) -> str | None:
    """Markers when a line has so few points that it would be invisible or unreadable."""
    return "o" if n <= 30 else None


def _floats(values: Sequence[float | None]) -> np.ndarray:
    """None (and non-finite) as NaN, which matplotlib draws as a gap."""
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def plot_loss_lr(history: Mapping, path: str | os.PathLike) -> Figure:
    """Training loss (left axis) and learning rate (right axis) per optimizer step."""
    steps = sorted(history.get("steps") or [], key=lambda r: r["step"])
    if not steps:
        raise NothingToPlot("no training steps recorded")
    x = [r["step"] for r in steps]
    loss, lr = _floats([r["loss"] for r in steps]), _floats([r["lr"] for r in steps])
    fig = _new_figure(WIDE)
    ax = fig.add_subplot()
    (loss_line,) = ax.plot(x, loss, color="tab:blue", marker=_marker(len(x)), label="loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax_lr = ax.twinx()
    (lr_line,) = ax_lr.plot(
        x, lr, color="tab:orange", ls="--", marker=_marker(len(x)), label="learning rate"
    )
    positive = lr[np.isfinite(lr)]
    if positive.size and positive.min() > 0 and positive.max() / positive.min() >= 10:
        ax_lr.set_yscale("log")
    ax_lr.set_ylabel("learning rate")
    ax.legend(handles=[loss_line, lr_line], loc="upper right")
    final = loss[np.isfinite(loss)]
    last = f", final loss {final[-1]:.4g}" if final.size else ""
    ax.set_title(f"Training loss and learning rate ({len(x)} steps{last})")
    save_png(fig, path)
    return fig


def _best_line(axes: Sequence[Axes], history: Mapping, evals: Sequence[Mapping]) -> None:
    """Mark the best step (if any) on every axes, naming the selection metric and its value."""
    best, metric = history.get("best_step"), history.get("metric") or "?"
    if best is None:
        return
    value = next((e.get(metric) for e in evals if e["step"] == best), None)
    text = f"best step {best} ({metric}" + (f" = {value:.3f})" if value is not None else ")")
    for ax in axes:
        ax.axvline(best, color="black", ls=":", lw=1.5, label=text)


def plot_eval_metrics(history: Mapping, path: str | os.PathLike) -> Figure:
    """Validation metrics (top) and per-class recall (bottom) per evaluation step."""
    evals = sorted(history.get("evals") or [], key=lambda r: r["step"])
    if not evals:
        raise NothingToPlot("no validation evaluations recorded")
    metric = history.get("metric") or "?"
    x = [e["step"] for e in evals]
    fig = _new_figure(WIDE)
    top, bottom = fig.subplots(2, 1, sharex=True)
    for name in EVAL_METRICS:
        y = _floats([e.get(name) for e in evals])
        if np.isnan(y).all():
            continue  # e.g. high_risk_recall with no high_risk row in validation
        lw = 2.5 if name == metric else 1.5
        top.plot(x, y, marker=_marker(len(x)), lw=lw, label=name)
    labels = list(dict.fromkeys(k for e in evals for k in e.get("per_class_recall") or {}))
    for label in labels:
        y = _floats([(e.get("per_class_recall") or {}).get(label) for e in evals])
        bottom.plot(x, y, marker=_marker(len(x)), label=label)
    _best_line((top, bottom), history, evals)
    top.set_title(f"Validation metrics (selection metric: {metric})")
    top.set_ylabel("score")
    bottom.set_title("Validation recall per class")
    bottom.set_ylabel("recall")
    bottom.set_xlabel("optimizer step")
    for ax in (top, bottom):
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    save_png(fig, path)
    return fig


def plot_confusion(
    truth: Sequence[str],
    preds: Sequence[str | None],
    labels: Sequence[str],
    path: str | os.PathLike,
    title: str = "Confusion matrix",
) -> Figure:
    """Counts per (true, predicted) cell, annotated; invalid predictions noted in the title."""
    if not truth:
        raise NothingToPlot("no samples for a confusion matrix")
    cm = np.array(confusion_matrix(truth, preds, labels))
    invalid = len(truth) - int(cm.sum())
    fig = _new_figure(SQUARE)
    ax = fig.add_subplot()
    image = ax.imshow(cm, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, shrink=0.8, label="samples")
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, rotation=35, ha="right")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    dark = cm.max() / 2 if cm.max() else 1
    for (i, j), count in np.ndenumerate(cm):
        color = "white" if count > dark else "black"
        ax.text(j, i, str(count), ha="center", va="center", color=color)
    suffix = f", {invalid} invalid predictions" if invalid else ""
    ax.set_title(f"{title} (n = {len(truth)}{suffix})")
    save_png(fig, path)
    return fig


def plot_reliability(
    probabilities: Sequence[Sequence[float]],
    truth: Sequence[str],
    labels: Sequence[str],
    path: str | os.PathLike,
    bins: int = 10,
) -> Figure:
    """Accuracy per top-label confidence bin against the diagonal, ECE in the title."""
    conf, correct = top_label_confidence(probabilities, truth, labels)
    if not conf:
        raise NothingToPlot("no samples for a reliability diagram")
    table = reliability_table(conf, correct, bins)
    ece = expected_calibration_error(conf, correct, bins)
    fig = _new_figure(SQUARE)
    ax, ax_count = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    filled = [row for row in table if row["count"]]
    centers = [(row["lo"] + row["hi"]) / 2 for row in filled]
    width = 1.0 / bins
    ax.bar(
        centers,
        [row["accuracy"] for row in filled],
        width=width,
        edgecolor="black",
        color="tab:blue",
        alpha=0.8,
        label="accuracy in bin",
    )
    ax.plot(
        centers,
        [row["mean_confidence"] for row in filled],
        "o",
        color="tab:red",
        label="mean confidence in bin",
    )
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    ax.set_title(f"Reliability (top label): ECE = {ece:.3f}, n = {len(conf)}, {bins} bins")
    ax_count.bar(
        [(row["lo"] + row["hi"]) / 2 for row in table],
        [row["count"] for row in table],
        width=width,
        edgecolor="black",
        color="tab:gray",
    )
    ax_count.set_xlabel("top-label confidence")
    ax_count.set_ylabel("samples")
    save_png(fig, path)
    return fig


def plot_high_risk_pr(
    truth: Sequence[str],
    p_high_base: Sequence[float],
    p_high_fused: Sequence[float],
    path: str | os.PathLike,
    operating_points: Mapping[str, Mapping[str, float]] | None = None,
) -> Figure:
    """high_risk precision/recall when thresholding p(high), base vs fused.

    `operating_points`: name → {"precision", "recall"} (e.g. the high_risk entry of a
    `classification_report`'s `per_class`), drawn as markers.
    """
    positive = [t == HIGH_RISK for t in truth]
    if not any(positive):
        raise NothingToPlot(f"no {HIGH_RISK} sample, so no recall ({len(truth)} samples)")
    curves = {
        "base": precision_recall_curve(positive, p_high_base),
        "fused": precision_recall_curve(positive, p_high_fused),
    }
    fig = _new_figure(SQUARE)
    ax = fig.add_subplot()
    colors = {"base": "tab:gray", "fused": "tab:red"}
    widths = {"base": 3.5, "fused": 1.5}  # base wide underneath: visible where they coincide
    for name, curve in curves.items():
        recall = [0.0] + [p.recall for p in curve]
        precision = [curve[0].precision] + [p.precision for p in curve]
        ax.step(
            recall,
            precision,
            where="pre",
            color=colors[name],
            lw=widths[name],
            label=f"{name} p(high) sweep (AP = {average_precision(curve):.3f})",
        )
    markers = iter("os^Dv")
    for name, point in (operating_points or {}).items():
        ax.plot(
            point["recall"],
            point["precision"],
            next(markers, "o"),
            ms=9,
            color=colors.get(name, "black"),
            markeredgecolor="black",
            label=f"{name} decision (P = {point['precision']:.2f}, R = {point['recall']:.2f})",
        )
    prevalence = sum(positive) / len(positive)
    ax.axhline(prevalence, color="black", lw=0.8, ls=":", label=f"prevalence {prevalence:.2f}")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("high_risk recall")
    ax.set_ylabel("high_risk precision")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    ax.set_title(
        f"{HIGH_RISK} precision/recall, base vs fused\n"
        f"(n = {len(truth)}, {sum(positive)} {HIGH_RISK})"
    )
    save_png(fig, path)
    return fig


# --- reports ---------------------------------------------------------------------------------


def _write_plots(
    out_dir: str | os.PathLike, plots: dict[str, Callable[[str], Figure]]
) -> dict[str, str]:
    """Draw each plot to `out_dir/plots/<name>.png`; skip (and log) those with nothing to draw."""
    written = {}
    for name, draw in plots.items():
        rel = f"plots/{name}.png"
        try:
            draw(join_uri(out_dir, rel))
        except NothingToPlot as exc:
            logger.warning("report plot %s skipped: %s", name, exc)
            continue
        written[name] = rel
    return written


def write_training_report(
    out_dir: str | os.PathLike,
    history: Mapping,
    probabilities: Sequence[Sequence[float]] | None,
    truth: Sequence[str],
    labels: Sequence[str] = RISK_LABELS,
) -> dict[str, str]:
    """`plots/{loss_lr,val_metrics,confusion,reliability}.png` under `out_dir` (path or URI);
    the last two only with label `probabilities` (a task with an open, generated answer has
    none).

    Returns {name: path relative to out_dir} for the plots written; a plot with nothing to draw
    (no steps, no evaluations, no validation rows) is skipped and the reason logged.
    """
    plots = {
        "loss_lr": lambda p: plot_loss_lr(history, p),
        "val_metrics": lambda p: plot_eval_metrics(history, p),
    }
    if probabilities is not None:
        labels = list(labels)
        if any(len(row) != len(labels) for row in probabilities):
            raise ValueError(f"every probability row must hold {len(labels)} values ({labels})")
        preds = [labels[int(np.argmax(row))] for row in probabilities]
        plots["confusion"] = lambda p: plot_confusion(
            truth, preds, labels, p, title="Validation confusion matrix"
        )
        plots["reliability"] = lambda p: plot_reliability(probabilities, truth, labels, p)
    return _write_plots(out_dir, plots)


def write_calibration_report(
    out_dir: str | os.PathLike,
    truth: Sequence[str],
    base_pred: Sequence[str | None],
    fused_pred: Sequence[str | None],
    p_high_base: Sequence[float],
    p_high_fused: Sequence[float],
    labels: Sequence[str] = RISK_LABELS,
    split: str = "test",
) -> dict[str, str]:
    """`plots/high_risk_pr.png` (with base and fused decisions) and `plots/fused_confusion.png`.

    Returns {name: relative path} for the plots written; skips (and logs) a plot with nothing
    to draw, e.g. the precision/recall curves when the split holds no high_risk sample.
    """

    def high_risk_point(preds: Sequence[str | None]) -> dict[str, float]:
        return classification_report(truth, preds, labels)["per_class"][HIGH_RISK]

    def pr(path: str) -> Figure:
        if HIGH_RISK not in truth:
            raise NothingToPlot(f"no {HIGH_RISK} sample in the {split} split")
        points = {"base": high_risk_point(base_pred), "fused": high_risk_point(fused_pred)}
        return plot_high_risk_pr(truth, p_high_base, p_high_fused, path, points)

    return _write_plots(
        out_dir,
        {
            "high_risk_pr": pr,
            "fused_confusion": lambda p: plot_confusion(
                truth, fused_pred, labels, p, title=f"Fused cascade, {split} split"
            ),
        },
    )


def plot_comparison(
    rows: Sequence[tuple[str, str, float | None, float | None]],
    path: str | os.PathLike,
    names: tuple[str, str] = ("baseline", "model"),
) -> Figure:
    """Grouped bars of each task's headline figure, baseline beside model: `rows` are (task,
    figure name, baseline value, model value); a missing value draws no bar."""
    if not rows:
        raise NothingToPlot("no task to compare")
    fig = _new_figure((max(4.0, 1.6 * len(rows) + 1.5), 3.6))
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    for k, (name, colour) in enumerate(zip(names, ("#9e9e9e", "#1f77b4"), strict=True)):
        values = _floats([r[2 + k] for r in rows])
        bars = ax.bar(x + (k - 0.5) * 0.38, np.nan_to_num(values), 0.38, label=name, color=colour)
        for bar, v in zip(bars, values, strict=True):
            if not np.isnan(v):
                ax.annotate(f"{v:.3f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=8)  # fmt: skip
    ax.set_xticks(x, [f"{task}\n{figure}" for task, figure, _, _ in rows])
    ax.set_ylabel("headline figure")
    ax.legend()
    ax.set_title("Baseline and model per task")
    save_png(fig, path)
    return fig
