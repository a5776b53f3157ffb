"""The evaluation job's outputs (`pipelines.evaluate`): counts and metrics, the answers files and
the HTML report, from the scored rows.

Files under `out` (folder or s3://):
- `predictions.parquet`: id, task, reference (None: unlabelled), prediction (the answer kind's
  canonical text, `AnswerKind.format`; None: failed or did not parse), raw (the generated
  text; None under likelihood scoring), correct (the parsed prediction equals the reference,
  `AnswerKind.same`; None: unlabelled), p_<choice> per closed answer likelihood ranks, error,
  error_detail (`output_schema`); `baseline/predictions.parquet` likewise for a baseline;
- `metrics.json` (`summarise`): `model`, `split`, `data`, `counts`, `overall` (`overall`) and
  per task `tasks.<name>`
  = {counts, metrics, headline}: the task's answer kind's `metrics` over its labelled rows,
  references read and predictions re-read from their stored text (so the figures are those of
  predictions.parquet); a failed labelled row is an unparsed prediction; None when the task has
  no labelled row. With a baseline, `baseline` (the same for it) and `comparison` (`compare`);
- `answers/<name>.json`: per task, `[{"id", "output"}]`, one per row in the split's order
  (the submission format; "" for a row without a prediction), named `dataset` for a split of
  one task, `<dataset>_<task>` or `<task>` otherwise;
- `report.html`: one self-contained page: the comparison table and plot, then per task its
  figures and, for a closed answer set, its confusion matrix, PNGs embedded as data URIs.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from hazard.config.storage import StorageConfig
from hazard.core.metrics import as_json
from hazard.core.tasks import get_task
from hazard.infra.storage import join_uri, write_bytes

PREDICTIONS_FILE = "predictions.parquet"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
ANSWERS_DIR = "answers"
BASELINE_DIR = "baseline"


def prob_column(choice: str) -> str:
    """The predictions.parquet column holding p(`choice`)."""
    return f"p_{choice}"


def output_schema(choices: Sequence[str]) -> pa.Schema:
    """predictions.parquet's schema for a split whose likelihood-ranked answers are `choices`."""
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("task", pa.string(), nullable=False),
            pa.field("reference", pa.string()),
            pa.field("prediction", pa.string()),
            pa.field("raw", pa.string()),
            pa.field("correct", pa.bool_()),
            *(pa.field(prob_column(c), pa.float64()) for c in choices),
            pa.field("error", pa.string()),
            pa.field("error_detail", pa.string()),
        ]
    )


def count_rows(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """rows = scored + failed = labelled + unlabelled, with the failures by reason."""
    failed = Counter(r["error"] for r in rows if r["error"] is not None)
    unlabelled = sum(r["reference"] is None for r in rows)
    return {
        "rows": len(rows),
        "scored": len(rows) - sum(failed.values()),
        "failed": sum(failed.values()),
        "failed_by_reason": dict(sorted(failed.items())),
        "labelled": len(rows) - unlabelled,
        "unlabelled": unlabelled,
    }


def task_metrics(name: str, labelled: Sequence[dict[str, Any]]) -> tuple[dict, dict]:
    """(metrics, headline) of task `name` over its labelled rows, from their stored text."""
    kind = get_task(name).answer
    refs = [kind.read(r["reference"]) for r in labelled]
    preds = [None if r["prediction"] is None else kind.parse(r["prediction"]) for r in labelled]
    metrics = kind.metrics(refs, preds)
    figure, value, higher = kind.headline(metrics)
    return metrics, {"name": figure, "value": value, "higher_is_better": higher}


def summarise(
    rows: Sequence[dict[str, Any]], model: dict[str, Any], split: str, data: str
) -> dict[str, Any]:
    """metrics.json's content (without the run's date and timing) from the scored rows."""
    tasks = {}
    for name in sorted({r["task"] for r in rows}):
        mine = [r for r in rows if r["task"] == name]
        labelled = [r for r in mine if r["reference"] is not None]
        metrics = headline = None
        if labelled:
            metrics, headline = task_metrics(name, labelled)
        tasks[name] = {
            "counts": count_rows(mine),
            "metrics": as_json(metrics),
            "headline": headline,
        }
    return {
        "model": model,
        "split": split,
        "data": data,
        "counts": count_rows(rows),
        "overall": overall(tasks),
        "tasks": tasks,
    }


def overall(tasks: dict[str, dict]) -> dict[str, Any]:
    """The split's one figure: the mean over tasks with labelled rows of each task's headline
    oriented so that higher wins (an error such as MAE negated), as `eval.metric: score`
    selects checkpoints in training; None when no task has one."""
    scores = []
    for task in tasks.values():
        head = task["headline"]
        if head is not None and head["value"] is not None:
            scores.append(head["value"] if head["higher_is_better"] else -head["value"])
    return {
        "score": sum(scores) / len(scores) if scores else None,
        "tasks_scored": len(scores),
    }


def compare(report: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """Per task: the headline figure of the baseline and of the model, their difference and
    whether the model is better (None when either has no value)."""
    out = {}
    for name, task in report["tasks"].items():
        head, base = task["headline"], (baseline["tasks"].get(name) or {}).get("headline")
        if head is None or base is None:
            continue
        b, m = base["value"], head["value"]
        better = None
        if b is not None and m is not None and m != b:
            better = (m > b) == head["higher_is_better"]
        out[name] = {
            "figure": head["name"],
            "baseline": b,
            "model": m,
            "delta": None if b is None or m is None else m - b,
            "model_is_better": better,
        }
    return out


def answers_files(rows: Sequence[dict[str, Any]], dataset: str | None) -> dict[str, bytes]:
    """{file name: the submission file} per task: `[{"id", "output"}]`, one per row in
    order ("" for a row without a prediction); names as the module docstring says."""
    tasks = sorted({r["task"] for r in rows})
    out = {}
    for name in tasks:
        stem = (dataset or name) if len(tasks) == 1 else "_".join(filter(None, (dataset, name)))
        entries = [
            {"id": r["id"], "output": r["prediction"] or ""} for r in rows if r["task"] == name
        ]
        out[f"{stem}.json"] = json.dumps(entries, indent=1, ensure_ascii=False).encode("utf-8")
    return out


def report_pngs(rows: Sequence[dict[str, Any]], report: dict[str, Any]) -> dict[str, bytes]:
    """{key: PNG}: each closed-answer task's confusion matrix over its labelled rows, and
    `comparison` when the report compares with a baseline."""
    from hazard.reports import plot_comparison, plot_confusion

    out = {}
    with tempfile.TemporaryDirectory(prefix="hazard-eval-") as tmp:
        for name in sorted({r["task"] for r in rows}):
            choices = get_task(name).labels
            labelled = [r for r in rows if r["task"] == name and r["reference"] is not None]
            if not labelled or choices is None:
                continue
            path = Path(tmp) / f"{name}.png"
            truth = [r["reference"] for r in labelled]
            preds = [r["prediction"] for r in labelled]
            plot_confusion(truth, preds, choices, path, title=f"{name}: confusion matrix")
            out[name] = path.read_bytes()
        if report.get("comparison"):
            path = Path(tmp) / "comparison.png"
            bars = [
                (t, c["figure"], c["baseline"], c["model"]) for t, c in report["comparison"].items()
            ]
            plot_comparison(bars, path)
            out["comparison"] = path.read_bytes()
    return out


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape("—" if value is None else str(value))


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f"<p><img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'></p>"


def _who(model: dict[str, Any]) -> str:
    return f"{model.get('name') or ''} {model.get('version') or ''}".strip() or model["uri"]


def _scalars(metrics: dict[str, Any] | None) -> dict[str, Any]:
    metrics = metrics or {}
    out = {k: v for k, v in metrics.items() if isinstance(v, int | float | None)}
    if isinstance(metrics.get("parse"), dict):
        out["parse_rate"] = metrics["parse"]["rate"]
    for t, scores in (metrics.get("by_threshold") or {}).items():
        out |= {f"{k}@{t}": scores[k] for k in ("precision", "recall", "f1")}
    return out


def render_html(report: dict[str, Any], pngs: dict[str, bytes]) -> str:
    """A self-contained page: run facts, the comparison with a baseline, then per task its
    counts, scalar metrics (the baseline's beside them) and plot."""
    esc = html.escape
    model, baseline = report["model"], report.get("baseline")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>hazard eval: {esc(_who(model))}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}</style></head><body>",
        f"<h1>Evaluation of {esc(_who(model))}</h1>",
        f"<p>{esc(model['kind'])} model <code>{esc(model['uri'])}</code>, split "
        f"<b>{esc(report['split'])}</b> of <code>{esc(report['data'])}</code>, "
        f"{esc(str(report.get('date', '')))}</p>",
    ]
    if baseline is not None:
        parts.append(
            f"<h2>Baseline and model</h2><p>Baseline: {esc(baseline['model']['kind'])} model "
            f"<code>{esc(baseline['model']['uri'])}</code></p><table><tr><th>task</th>"
            "<th>figure</th><th>baseline</th><th>model</th><th>delta</th><th>better</th></tr>"
        )
        for name, c in report.get("comparison", {}).items():
            better = {True: "model", False: "baseline", None: "—"}[c["model_is_better"]]
            cells = [c["figure"], c["baseline"], c["model"], c["delta"], better]
            parts.append(
                f"<tr><th>{esc(name)}</th>"
                + "".join(f"<td>{_cell(v)}</td>" for v in cells)
                + "</tr>"
            )
        parts.append("</table>")
        if "comparison" in pngs:
            parts.append(_img(pngs["comparison"], "baseline and model per task"))
    for name, task in report["tasks"].items():
        base_task = (baseline or {}).get("tasks", {}).get(name) or {}
        base_figures = _scalars(base_task.get("metrics"))
        head = "<th>figure</th><th>model</th>" + ("<th>baseline</th>" if baseline else "")
        parts.append(f"<h2>{esc(name)}</h2><table><tr>{head}</tr>")
        counts = {k: v for k, v in task["counts"].items() if not isinstance(v, dict)}
        for key, value in {**_scalars(task["metrics"]), **counts}.items():
            row = f"<tr><th>{esc(key)}</th><td>{_cell(value)}</td>"
            if baseline:
                row += f"<td>{_cell(base_figures.get(key))}</td>"
            parts.append(row + "</tr>")
        parts.append("</table>")
        if name in pngs:
            parts.append(_img(pngs[name], f"{name} confusion matrix"))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_outputs(
    out: str,
    report: dict[str, Any],
    rows: Sequence[dict[str, Any]],
    dataset: str | None,
    storage: StorageConfig | None = None,
) -> None:
    """metrics.json, answers/*.json and report.html under `out`."""
    write_bytes(join_uri(out, METRICS_FILE), json.dumps(report, indent=2).encode(), storage)
    for name, data in answers_files(rows, dataset).items():
        write_bytes(join_uri(out, ANSWERS_DIR, name), data, storage)
    page = render_html(report, report_pngs(rows, report))
    write_bytes(join_uri(out, REPORT_FILE), page.encode("utf-8"), storage)
