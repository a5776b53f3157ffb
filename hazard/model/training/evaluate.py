"""Validation during training and at export: a split answered as its task says, sharded over
the ranks.

Each row is asked as `hazard.model.answering.Answerer` asks it (the template prompt, or the
row's own turns for a row-prompt task) and answered by likelihood over the task's closed answer
set or by generation. A closed, likelihood-ranked task is reported as before
(`classification_report`: accuracy, balanced accuracy, macro-F1, per class) with the label
probabilities (what calibration and the bundle's val_predictions keep); any other task by its
answer kind's metrics. Every report carries `headline` (the kind's figure) and `score`: that
figure oriented so that higher wins (an error such as MAE negated), what `eval.metric: score`
selects checkpoints by.
"""

from __future__ import annotations

from typing import Any

from hazard.core.metrics import as_json, classification_report
from hazard.core.tasks import TaskSpec

CLASSIFICATION_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "high_risk_recall")


def answer_split(answerer, split_dir: str, batch_size: int, rank=0, world=1, storage=None):
    """(predictions, probabilities or None, references) of every `world`-th row of a Parquet
    split (local folder or s3://), starting at `rank`, so `world` workers answer each row once."""
    from hazard.infra.storage import read_parquet

    columns = ["images", "answer"]
    if answerer.spec.prompt_source == "row":
        columns.append("conversation")
    table = read_parquet(split_dir, storage, columns=columns)
    return answer_rows(answerer, table, list(range(rank, table.num_rows, world)), batch_size)


def answer_rows(answerer, table, rows: list[int], batch_size: int):
    """`answer_split` of the given rows of `table` (images, answer, [conversation])."""
    preds, probs, truth = [], [], []
    for i in range(0, len(rows), batch_size):
        part = table.take(rows[i : i + batch_size]).to_pydict()
        turns = part.get("conversation") or [None] * len(part["answer"])
        samples = [
            answerer.sample(imgs, conv) for imgs, conv in zip(part["images"], turns, strict=True)
        ]
        for answer in answerer.answer(samples):
            preds.append(answer.prediction)
            probs.append(
                None if answer.probs is None else [answer.probs[c] for c in answerer.choices]
            )
        truth.extend(part["answer"])
    return preds, probs, truth


def split_report(spec: TaskSpec, labels, preds: list, truth: list) -> dict[str, Any]:
    """The report of answers `preds` against references `truth` (see the module docstring)."""
    kind = spec.answer
    if labels and spec.inference.mode == "likelihood":
        report = classification_report(truth, preds, labels=labels)
    else:
        refs = [kind.read(t) for t in truth]
        parsed = [None if p is None else kind.parse(p) for p in preds]
        report = kind.metrics(refs, parsed)
    name, value, higher = kind.headline(report)
    score = None if value is None else (value if higher else -value)
    return as_json(report) | {"headline": {"name": name, "value": value}, "score": score}


def _gather(mine: tuple, world: int) -> tuple[list, list, list]:
    """Every rank's (predictions, probabilities, truth), concatenated in rank order."""
    import torch.distributed as dist

    parts = [mine]
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, mine)
    return tuple([x for part in parts for x in part[k]] for k in range(3))


def evaluate_split(
    model, processor, split_dir: str, spec: TaskSpec | None, prompt: str | None, labels,
    batch_size: int, storage=None,
):  # fmt: skip
    """Answer every row of a split once across the ranks (read directly, not through a Ray
    Train dataset shard, which drops rows to equalise shards) and gather on every rank.

    `spec` None (a mixed run) answers each row as its own task says and reports per task
    (`mixed_report`). Returns (report, probabilities or None, truth); every rank gets the
    same, so decisions taken on them (best checkpoint, early stop) agree across ranks."""
    import torch.distributed as dist

    from hazard.model.answering import Answerer

    dist_on = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist_on else (0, 1)
    if spec is None:
        return _evaluate_mixed(model, processor, split_dir, batch_size, rank, world, storage)
    answerer = Answerer(model, processor, spec, prompt, labels or None)
    preds, probs, truth = _gather(
        answer_split(answerer, split_dir, batch_size, rank, world, storage), world
    )
    if any(p is None for p in probs):
        probs = None
    return split_report(spec, labels, preds, truth), probs, truth


def _evaluate_mixed(model, processor, split_dir, batch_size, rank, world, storage):
    from hazard.core.tasks import get_task
    from hazard.infra.storage import read_parquet
    from hazard.model.answering import Answerer

    table = read_parquet(split_dir, storage, columns=["images", "answer", "task", "conversation"])
    tasks = table.column("task").to_pylist()
    reports, truth = {}, []
    for name in sorted(set(tasks)):
        spec = get_task(name)
        rows = [i for i, t in enumerate(tasks) if t == name][rank::world]
        answerer = Answerer(model, processor, spec)
        preds, _, refs = _gather(answer_rows(answerer, table, rows, batch_size), world)
        reports[name] = split_report(spec, spec.labels, preds, refs)
        truth += refs
    return mixed_report(reports), None, truth


def mixed_report(reports: dict[str, dict]) -> dict[str, Any]:
    """A mixed split's report: each task's (`split_report`) and, as `score`, the mean of their
    scores (tasks without one left out; None when none has one)."""
    scores = [r["score"] for r in reports.values() if r["score"] is not None]
    mean = sum(scores) / len(scores) if scores else None
    return {
        "n": sum(r.get("n", r.get("n_images", 0)) for r in reports.values()),
        "tasks": reports,
        "headline": {"name": "mean task score", "value": mean},
        "score": mean,
    }


def eval_summary(step: int, report: dict) -> dict:
    """The figures of one evaluation kept in the run's history and reported to Ray Train:
    `score` and the headline for every task, the classification figures for closed ones."""
    out = {
        "step": step,
        "n": report.get("n", report.get("n_images")),
        "score": report["score"],
        "headline": report["headline"],
    }
    if "macro_f1" in report:
        out |= {k: report[k] for k in CLASSIFICATION_KEYS}
        out["per_class_recall"] = {k: v["recall"] for k, v in report["per_class"].items()}
    return out
