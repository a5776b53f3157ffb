"""Batch scoring of one task's bundle: `hazard score-dataset` with `model_uri` (any task with a
closed answer set, ranked by likelihood, `hazard.model.bundle_answerer.BundleAnswerer`).

The source is planned as the cascade's (`pipelines.sources.plan_files`): a folder of images
(template tasks only: a row-prompt task has no question there) or prepared Parquet shards with
`id`, `images` and, for a row-prompt task such as `multiple_choice`, `conversation` (the row's
own turns with <image> places). Rows are decoded with the guarded `decode_image` and answered
through the same actor pool as the cascade (`pipelines.common.map_with_actors`); a row that
cannot be read, decoded or answered gets its error reason, never failing the job.

Written to `output_dir`, in the source's order:
- `predictions.parquet`: id, answer, p_<choice> per choice of the bundle, error, error_detail;
- `answers/<task>.json`: the submission in the task's form (`pipelines.eval_outputs.
  answers_files`: `[{"id", "output"}]`, "" for a failed row);
- `summary.json`: listed, scored, failed (by reason), answers, seconds, the bundle.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from hazard.config.score import ScoreDatasetConfig
from hazard.core.tasks import TaskSpec
from hazard.infra.bundle import BundleError, pixel_budget, read_meta
from hazard.infra.storage import absolute, filesystem_for, join_uri, open_output, write_bytes
from hazard.model.bundle_answerer import closed_task
from pipelines.common import map_with_actors
from pipelines.eval_outputs import answers_files, prob_column
from pipelines.score import CascadeScorer, decode_row, read_dataset
from pipelines.sources import Source, SourceError, plan_source

log = logging.getLogger("score_dataset")


def task_output_schema(choices: Sequence[str]) -> pa.Schema:
    """predictions.parquet's schema for a bundle whose closed answer set is `choices`."""
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("answer", pa.string()),  # the most probable choice; null when it failed
            *(pa.field(prob_column(c), pa.float64()) for c in choices),
            pa.field("error", pa.string()),
            pa.field("error_detail", pa.string()),
        ]
    )


def read_task_dataset(cfg: ScoreDatasetConfig, source: Source, spec: TaskSpec):
    """The source as a lazy Ray dataset of (id, images[, conversation, error, error_detail])
    rows; SourceError when a row-prompt task's source holds no `conversation`."""
    import ray

    if spec.prompt_source != "row":
        return read_dataset(cfg, source)
    where = f"task {spec.name} asks each row its own prompt"
    if source.format != "parquet":
        raise SourceError(f"{where}: give a prepared Parquet split (with `conversation`)")
    fs, _ = filesystem_for(cfg.source, cfg.storage)
    paths = [filesystem_for(uri, cfg.storage)[1] for _, uri in source.files]
    if "conversation" not in pq.read_schema(paths[0], filesystem=fs).names:
        raise SourceError(f"{where}, but {source.files[0][1]} has no `conversation` column")
    return ray.data.read_parquet(paths, filesystem=fs, columns=["id", "images", "conversation"])


class TaskScorer:
    """Holds one task's bundle; answers a batch of rows."""

    def __init__(
        self,
        model_uri: str,
        dtype: str,
        max_bytes: int,
        max_pixels: int,
        engine: str = "transformers",
        vllm: dict | None = None,
    ):
        from hazard.model.bundle_answerer import BundleAnswerer

        self.answerer = BundleAnswerer(model_uri, engine, dtype, vllm)
        self.max_bytes, self.max_pixels = max_bytes, max_pixels
        self.pixel_budget = pixel_budget((self.answerer.meta,))
        self.schema = task_output_schema(self.answerer.labels)

    def sample(self, images: list[bytes], conversation: str | None) -> tuple:
        """(messages, decoded images) of one row; ImageRejected or ValueError when it is bad."""
        from hazard.infra.images import InvalidImage

        if len(images) > 1 and not self.answerer.spec.multi_image:
            raise InvalidImage(
                "too_many_images", f"{len(images)} images; task {self.answerer.spec.name} takes one"
            )
        pics = decode_row(images, self.max_bytes, self.max_pixels, self.pixel_budget)
        return self.answerer.messages(len(pics), conversation), pics

    def __call__(self, batch: pa.Table) -> pa.Table:
        from hazard.infra.images import ImageRejected
        from hazard.model.bundle_answerer import best

        n, names = batch.num_rows, batch.column_names
        ids = batch.column("id").to_pylist()
        raw = batch.column("images").to_pylist()
        turns = batch.column("conversation").to_pylist() if "conversation" in names else [None] * n
        errors = batch.column("error").to_pylist() if "error" in names else [None] * n
        details = batch.column("error_detail").to_pylist() if "error" in names else [None] * n
        samples: dict[int, tuple] = {}
        for i in range(n):
            if errors[i] is not None:
                continue
            try:
                samples[i] = self.sample(raw[i] or [], turns[i])
            except ImageRejected as exc:
                errors[i], details[i] = exc.reason, str(exc)
            except ValueError as exc:  # malformed turns (hazard.model.vlm.conversation_messages)
                errors[i], details[i] = "bad_conversation", str(exc)
        rows = list(samples)
        probs = CascadeScorer.probabilities(self.answerer, [samples[i] for i in rows])
        answered = dict(zip(rows, probs, strict=True))
        out: dict[str, list[Any]] = {f.name: [] for f in self.schema}
        for i in range(n):
            p = answered.get(i)
            if isinstance(p, Exception):
                errors[i], details[i], p = "model_error", f"{type(p).__name__}: {p}", None
            out["id"].append(ids[i])
            out["answer"].append(best(p) if p else None)
            for choice in self.answerer.labels:
                out[prob_column(choice)].append(p[choice] if p else None)
            out["error"].append(errors[i])
            out["error_detail"].append(details[i])
        return pa.table(out, schema=self.schema)


def score_task_dataset(cfg: ScoreDatasetConfig) -> dict:
    """Answer every row of the source with the bundle at `cfg.model_uri`; write
    predictions.parquet, answers/<task>.json and summary.json. BundleError (before Ray starts)
    when the bundle's task has no closed answer set; SourceError when the source cannot give
    the task's prompts."""
    import ray

    start = time.time()
    cfg = cfg.model_copy(
        update={k: absolute(getattr(cfg, k)) for k in ("source", "model_uri", "output_dir")}
    )
    meta = read_meta(cfg.model_uri)
    spec = closed_task(meta, cfg.model_uri)
    if cfg.engine == "vllm" and not spec.ranks_fixed_prompt:
        raise BundleError(f"engine vllm scores fixed-prompt tasks, not {spec.name}")
    source = plan_source(cfg)
    if not ray.is_initialized():  # after the checks: a bad source or bundle starts no Ray
        ray.init()
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    ds = read_task_dataset(cfg, source, spec)
    scored = map_with_actors(
        ds,
        TaskScorer,
        {
            "model_uri": cfg.model_uri,
            "dtype": cfg.dtype,
            "max_bytes": cfg.max_image_bytes,
            "max_pixels": cfg.max_image_pixels,
            "engine": cfg.engine,
            "vllm": cfg.vllm.model_dump(),
        },
        cfg,
    )
    schema = task_output_schema(meta.labels)
    rows: list[dict[str, Any]] = []
    pred_uri = join_uri(cfg.output_dir, "predictions.parquet")
    with open_output(pred_uri, cfg.storage) as pred:
        writer = pq.ParquetWriter(pred, schema)
        for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
            batch = batch.cast(schema)
            writer.write_table(batch)
            rows.extend(batch.select(["id", "answer", "error"]).to_pylist())
        writer.close()
    outputs = {"predictions": pred_uri}
    for name, data in answers_files(
        [{"id": r["id"], "task": spec.name, "prediction": r["answer"]} for r in rows], None
    ).items():
        outputs["answers"] = join_uri(cfg.output_dir, f"answers/{name}")
        write_bytes(outputs["answers"], data, cfg.storage)
    failed: dict[str, int] = {}
    answers: dict[str, int] = {}
    for r in rows:
        if r["error"] is None:
            answers[r["answer"]] = answers.get(r["answer"], 0) + 1
        else:
            failed[r["error"]] = failed.get(r["error"], 0) + 1
    summary = {
        "source": cfg.source,
        "format": source.format,
        "task": spec.name,
        "listed": len(rows),
        "scored": len(rows) - sum(failed.values()),
        "failed": sum(failed.values()),
        "failed_by_reason": dict(sorted(failed.items())),
        "answers": dict(sorted(answers.items())),
        "seconds": round(time.time() - start, 2),
        "model": {"name": meta.name, "version": meta.version, "uri": cfg.model_uri},
        "engine": cfg.engine,
        "dtype": cfg.dtype,
        "outputs": outputs,
    }
    if source.format == "folder" and len(rows) != len(source.files):
        raise RuntimeError(f"{len(source.files)} files listed but {len(rows)} rows scored")
    write_bytes(
        join_uri(cfg.output_dir, "summary.json"),
        json.dumps(summary, indent=2).encode(),
        cfg.storage,
    )
    log.info("[score] %s: %d rows, %d failed -> %s", spec.name, len(rows), summary["failed"],
             cfg.output_dir)  # fmt: skip
    return summary
