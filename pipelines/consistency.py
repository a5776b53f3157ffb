"""Consistency filter stage: drop augmented copies the model no longer sees as their label.

Needs: `id`, `images`, `answer`, `split`, `parent_id`, `_reject_reason` (augmented rows), a model
bundle (`hazard.infra.bundle`: its prompt and labels; local, file:// or s3://) and a task with a
closed
label set.
Adds: `consistency_score` = p(row's answer) (float32) on every kept train row (originals and
copies), scored like the server does (`hazard.model.engines.make_engine`: the transformers engine
over the bundle, with its prompt, labels and pixel limits). A copy whose score is more than
`margin` below its parent's is rejected (`inconsistent`, stage `consistency`). Val/test rows,
unlabelled rows (answer None) and rejected rows pass through untouched; a copy whose parent was
not scored (absent or rejected) is kept.

Scoring runs in an actor pool (each actor opens, verifies and loads the bundle once through
`hazard.model.engines`, in the configured dtype, on the GPU it reserved with `gpus_per_actor` or on
CPU; the driver reads its metadata only). Parents are joined on the driver, whatever the block
layout: the scored dataset is materialized, {original id: score} is
collected from its light columns only (never the images), and a second map marks the copies.
`score_rows` and `mark_inconsistent` are the same steps without Ray.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import ray
from ray.data.expressions import col

from hazard.config.data import ConsistencyConfig, RayConfig
from hazard.core.tasks import TaskSpec
from hazard.infra.bundle import BundleMeta, read_meta
from pipelines.common import REJECT_REASON, map_rows, reject, stage_table

if TYPE_CHECKING:
    from hazard.model.engines import ScoringEngine

STAGE = "consistency"
REASON = "inconsistent"
SCORE = "consistency_score"


def require_labels(task: TaskSpec) -> tuple[str, ...]:
    """The task's labels; ValueError for a free-text task (no label set to score)."""
    if task.labels is None:
        raise ValueError(
            f"the consistency filter needs a task with a closed label set; task {task.name!r} "
            "has free-text answers (disable consistency or use a labelled task)"
        )
    return task.labels


def check_labels(task: TaskSpec, meta: BundleMeta, model_uri: str) -> tuple[str, ...]:
    """The bundle's labels; ValueError if some of the task's labels are not among them."""
    labels = tuple(meta.labels)
    missing = [label for label in require_labels(task) if label not in labels]
    if missing:
        raise ValueError(
            f"the labels {missing} of task {task.name!r} are not among the labels {list(labels)} "
            f"of the model bundle {model_uri}; score with a bundle trained for this task"
        )
    return labels


def needs_score(row: dict[str, Any]) -> bool:
    """True for the rows the filter scores: kept, labelled rows of the train split."""
    return (
        row.get(REJECT_REASON) is None
        and row.get("split") == "train"
        and row.get("answer") is not None
    )


def score_rows(
    engine: ScoringEngine, rows: Sequence[dict[str, Any]], batch_size: int | None = None
) -> list[float]:
    """p(row's answer) for each row (its `images` are encoded bytes) by `engine`, `batch_size`
    rows per forward pass (None: all at once). ValueError if an answer is not among the
    engine's labels."""
    index = {label: i for i, label in enumerate(engine.labels)}
    for row in rows:
        if row["answer"] not in index:
            raise ValueError(
                f"row {row.get('id')!r}: answer {row['answer']!r} is not among the model's labels "
                f"{list(engine.labels)}, so it cannot be scored (import should have rejected it)"
            )
        if not row["images"]:
            raise ValueError(f"row {row.get('id')!r} has no images to score")
    probs = engine.score_stored([row["images"] for row in rows], batch_size or max(1, len(rows)))
    return [float(probs[i, index[row["answer"]]]) for i, row in enumerate(rows)]


def parent_scores(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """{id: consistency_score} of the scored originals among `rows`."""
    return {
        r["id"]: r[SCORE]
        for r in rows
        if r.get("parent_id") is None and needs_score(r) and r.get(SCORE) is not None
    }


def mark_row(row: dict[str, Any], parents: dict[str, float], margin: float) -> dict[str, Any]:
    """`row` rejected `inconsistent` when it is a scored copy more than `margin` below its
    parent's score (`parents`: {original id: score}); otherwise `row` itself."""
    if row.get("parent_id") is None or not needs_score(row) or row.get(SCORE) is None:
        return row
    parent = parents.get(row["parent_id"])
    if parent is None or not row[SCORE] < parent - margin:
        return row
    detail = f"p(label)={row[SCORE]:.3f} < parent {parent:.3f} - margin {margin:.2f}"
    return reject(row, REASON, detail, stage=STAGE)


def mark_inconsistent(rows: Sequence[dict[str, Any]], margin: float) -> list[dict[str, Any]]:
    """All `rows` (scores already set), the inconsistent copies rejected; parents and copies
    may come in any order."""
    parents = parent_scores(rows)
    return [mark_row(row, parents, margin) for row in rows]


class _Scorer:
    """Actor of the scoring map: opens the bundle once (`hazard.model.engines.make_engine`, the
    transformers engine serving uses), sets `consistency_score` per batch.

    Rows whose answer is not a label stay unscored; the driver reports them (`_unscorable`).
    """

    def __init__(self, model_uri: str, cpus: float, dtype: str):
        import torch

        from hazard.model.engines import make_engine

        torch.set_num_threads(max(1, math.floor(cpus)))
        self.engine = make_engine("transformers", model_uri, dtype)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        todo = [row for row in rows if needs_score(row) and row["answer"] in self.engine.labels]
        if todo:
            for row, score in zip(todo, score_rows(self.engine, todo), strict=True):
                row[SCORE] = score
        return stage_table(rows)


def _mark_batch(batch: pa.Table, parents: dict[str, float], margin: float) -> pa.Table:
    """map_batches fn: `mark_row` on every row of the batch."""
    return stage_table([mark_row(row, parents, margin) for row in batch.to_pylist()])


def _collect_parent_scores(scored: ray.data.Dataset) -> dict[str, float]:
    """{original id: score} of the scored originals (as `parent_scores`), from the scored
    dataset's light columns only: no images reach the driver."""
    originals = scored.select_columns(["id", "parent_id", "split", REJECT_REASON, SCORE]).filter(
        expr=(col("split") == "train")
        & col(REJECT_REASON).is_null()
        & col("parent_id").is_null()
        & col(SCORE).is_not_null()
    )
    return {r["id"]: r[SCORE] for r in originals.take_all()}


def _check_scored(scored: ray.data.Dataset, labels: tuple[str, ...]) -> None:
    """ValueError naming (up to 5) kept train rows left unscored: their answer is not a label."""
    unscored = (
        scored.select_columns(["id", "answer", "split", REJECT_REASON, SCORE])
        .filter(
            expr=(col("split") == "train") & col(REJECT_REASON).is_null() & col(SCORE).is_null()
        )
        .take(5)
    )
    if unscored:
        found = ", ".join(f"{r['id']!r} (answer {r['answer']!r})" for r in unscored)
        raise ValueError(
            f"rows whose answer is not among the model's labels {list(labels)} cannot be scored "
            f"(import should have rejected them): {found}"
        )


def consistency_filter(
    ds: ray.data.Dataset, cfg: ConsistencyConfig, task: TaskSpec | None, ray_cfg: RayConfig
) -> ray.data.Dataset:
    """Score the kept train rows and reject inconsistent copies (materialized); `ds` itself
    when the filter is disabled. ValueError for a task without labels, a bundle without the
    task's labels, or kept train rows whose answer is not a label; and for `task` None (a
    `task: mixed` job, which DataConfig refuses with the filter on: one bundle scores one
    task's labels)."""
    if not cfg.enabled:
        return ds
    if task is None:
        raise ValueError("the consistency filter cannot score a task: mixed job")
    require_labels(task)
    meta = read_meta(cfg.model_uri)  # the config guarantees a model_uri when enabled
    labels = check_labels(task, meta, cfg.model_uri)
    scored = ds.map_batches(
        _Scorer,
        batch_format="pyarrow",
        batch_size=cfg.batch_size,
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
        num_cpus=cfg.cpus_per_actor,
        num_gpus=cfg.gpus_per_actor or None,
        fn_constructor_kwargs={
            "model_uri": cfg.model_uri,
            "cpus": cfg.cpus_per_actor,
            "dtype": cfg.dtype,
        },
        udf_modifying_row_count=False,
    ).materialize()
    _check_scored(scored, labels)
    parents = _collect_parent_scores(scored)
    return map_rows(scored, _mark_batch, ray_cfg, parents=parents, margin=cfg.margin).materialize()
