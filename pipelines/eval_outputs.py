"""The evaluation job's outputs (`pipelines.evaluate`): counts and metrics, the answers file and
the HTML report, from the scored rows.

Files under `out` (folder or s3://):
- `predictions.parquet`: id, task, reference (None: unlabelled), prediction (None: failed),
  correct (None: unlabelled), p_<label> per label, error, error_detail (`output_schema`);
- `metrics.json` (`summarise`): `model`, `split`, `data`, `counts` and per task `tasks.<name>`
  = {counts, metrics}: the task's answer kind's `metrics` over its labelled rows (a failed
  labelled row is an invalid prediction), None when the split has no labelled row; counts are
  rows, scored, failed (and `failed_by_reason`), labelled and unlabelled;
- `answers/<dataset>.json`: `[{"id", "output"}]`, one per row in the split's order (the
  submission format; "" for a row that failed);
- `report.html`: one self-contained page, the metrics table and each task's confusion matrix
  (`hazard.reports.plot_confusion`) embedded as a PNG data URI.
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
from hazard.core.tasks import get_task
from hazard.infra.storage import join_uri, write_bytes

PREDICTIONS_FILE = "predictions.parquet"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"
ANSWERS_DIR = "answers"


def prob_column(label: str) -> str:
    """The predictions.parquet column holding p(`label`)."""
    return f"p_{label}"


def output_schema(labels: Sequence[str]) -> pa.Schema:
    """predictions.parquet's schema for a model with `labels`."""
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("task", pa.string(), nullable=False),
            pa.field("reference", pa.string()),
            pa.field("prediction", pa.string()),
            pa.field("correct", pa.bool_()),
            *(pa.field(prob_column(label), pa.float64()) for label in labels),
            pa.field("error", pa.string()),
            pa.field("error_detail", pa.string()),
        ]
    )


def _jsonable(value: Any) -> Any:
    """Metric values as JSON: named tuples (e.g. ParseRate) as objects."""
    if hasattr(value, "_asdict"):
        return {k: _jsonable(v) for k, v in value._asdict().items()}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


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


def summarise(
    rows: Sequence[dict[str, Any]], model: dict[str, Any], split: str, data: str
) -> dict[str, Any]:
    """metrics.json's content (without the run's date and timing) from the scored rows."""
    tasks = {}
    for name in sorted({r["task"] for r in rows}):
        mine = [r for r in rows if r["task"] == name]
        labelled = [r for r in mine if r["reference"] is not None]
        metrics = None
        if labelled:
            refs = [r["reference"] for r in labelled]
            metrics = get_task(name).answer.metrics(refs, [r["prediction"] for r in labelled])
        tasks[name] = {"counts": count_rows(mine), "metrics": _jsonable(metrics)}
    return {
        "model": model,
        "split": split,
        "data": data,
        "counts": count_rows(rows),
        "tasks": tasks,
    }


def answers_json(rows: Sequence[dict[str, Any]]) -> bytes:
    """The submission file: one {"id", "output"} per row, in order ("" for a failed row)."""
    entries = [{"id": r["id"], "output": r["prediction"] or ""} for r in rows]
    return json.dumps(entries, indent=1, ensure_ascii=False).encode("utf-8")


def confusion_pngs(rows: Sequence[dict[str, Any]], labels: Sequence[str]) -> dict[str, bytes]:
    """{task: PNG of its confusion matrix over the labelled rows} (tasks with some)."""
    from hazard.reports import plot_confusion

    out = {}
    with tempfile.TemporaryDirectory(prefix="hazard-eval-") as tmp:
        for name in sorted({r["task"] for r in rows}):
            labelled = [r for r in rows if r["task"] == name and r["reference"] is not None]
            if not labelled:
                continue
            path = Path(tmp) / f"{name}.png"
            truth = [r["reference"] for r in labelled]
            preds = [r["prediction"] for r in labelled]
            plot_confusion(truth, preds, labels, path, title=f"{name}: confusion matrix")
            out[name] = path.read_bytes()
    return out


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape("—" if value is None else str(value))


def render_html(report: dict[str, Any], pngs: dict[str, bytes]) -> str:
    """A self-contained page: run facts, per task its counts, scalar metrics and plot."""
    esc = html.escape
    model = report["model"]
    who = f"{model.get('name') or ''} {model.get('version') or ''}".strip() or model["uri"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>hazard eval: {esc(who)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}</style></head><body>",
        f"<h1>Evaluation of {esc(who)}</h1>",
        f"<p>{esc(model['kind'])} model <code>{esc(model['uri'])}</code>, split "
        f"<b>{esc(report['split'])}</b> of <code>{esc(report['data'])}</code>, "
        f"{esc(str(report.get('date', '')))}</p>",
    ]
    for name, task in report["tasks"].items():
        parts.append(f"<h2>{esc(name)}</h2><table><tr><th>figure</th><th>value</th></tr>")
        metrics = task["metrics"] or {}
        scalars = {k: v for k, v in metrics.items() if isinstance(v, int | float | None)}
        if isinstance(metrics.get("parse"), dict):
            scalars["parse_rate"] = metrics["parse"]["rate"]
        counts = {k: v for k, v in task["counts"].items() if not isinstance(v, dict)}
        for key, value in {**scalars, **counts}.items():
            parts.append(f"<tr><th>{esc(key)}</th><td>{_cell(value)}</td></tr>")
        parts.append("</table>")
        if name in pngs:
            data = base64.b64encode(pngs[name]).decode("ascii")
            alt = esc(f"{name} confusion matrix")
            parts.append(f"<p><img alt='{alt}' src='data:image/png;base64,{data}'></p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_outputs(
    out: str,
    report: dict[str, Any],
    rows: Sequence[dict[str, Any]],
    labels: Sequence[str],
    dataset: str,
    storage: StorageConfig | None = None,
) -> None:
    """metrics.json, answers/<dataset>.json and report.html under `out`."""
    write_bytes(join_uri(out, METRICS_FILE), json.dumps(report, indent=2).encode(), storage)
    write_bytes(join_uri(out, ANSWERS_DIR, f"{dataset}.json"), answers_json(rows), storage)
    page = render_html(report, confusion_pngs(rows, labels))
    write_bytes(join_uri(out, REPORT_FILE), page.encode("utf-8"), storage)
