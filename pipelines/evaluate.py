"""Evaluation: a prepared split scored by a model; metrics, predictions, answers and a report.

`ray_jobs/eval.py` is its entrypoint. The model (`resolve_model`) is a bundle (its task,
prompt, labels and pixel limits come from its hazard_model.json) or a local base model folder
asked the template prompt of `task` (no fine-tuning: the baseline). A base model plus a LoRA
adapter folder is a later slice, as are row prompts and generated answers: this slice scores
tasks asked their template prompt and ranked by likelihood over a closed answer set
(`hazard.config.eval.check_scorable`).

The split, `<data>/<split>/*.parquet` (the data job's shards, sample schema), is read by Ray
Data in file-name order (the source's order) and scored with `map_batches` over an actor pool
of `EvalScorer`s, as batch scoring does: each actor holds the model (`make_engine` for a
bundle, `hazard.model.engines.Scorer` for a base folder); the prediction is the argmax label.
Rows whose `answer` is None (the submission rows) are scored and written but left out of the
metrics and counted as `unlabelled`; a row whose images cannot be decoded or scored gets an
error reason, counts as `failed` and, when labelled, as a wrong (invalid) prediction.

Written to `out` (folder or s3://), rows in the split's order (`pipelines.eval_outputs`):
`predictions.parquet`, `metrics.json`, `answers/<dataset>.json`, `report.html`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from hazard.config.eval import EvalConfig, check_scorable
from hazard.core.tasks import get_task
from hazard.infra.bundle import BUNDLE_FILE, read_meta
from hazard.infra.storage import (
    FileEntry,
    absolute,
    exists,
    filesystem_for,
    join_uri,
    list_files,
    open_output,
    parse_uri,
    read_parquet,
)
from pipelines.eval_outputs import (
    PREDICTIONS_FILE,
    output_schema,
    prob_column,
    summarise,
    write_outputs,
)
from pipelines.score import CascadeScorer

log = logging.getLogger("eval")


class EvalError(ValueError):
    """The model or the data cannot be evaluated (missing, empty, other task, other labels)."""


@dataclass(frozen=True)
class EvalModel:
    """What scores the split: a bundle or a base model folder, with its task and label set."""

    kind: str  # "bundle" | "base"
    uri: str
    task: str
    prompt: str
    labels: tuple[str, ...]
    min_pixels: int | None = None
    max_pixels: int | None = None
    name: str | None = None  # bundle only
    version: str | None = None  # bundle only

    def describe(self) -> dict[str, Any]:
        """The model as metrics.json records it."""
        return {k: v for k, v in asdict(self).items() if k != "prompt"} | {
            "labels": list(self.labels)
        }


def resolve_model(cfg: EvalConfig) -> EvalModel:
    """The bundle or base model `cfg.model` names; EvalError when it cannot be evaluated."""
    if exists(join_uri(cfg.model, BUNDLE_FILE), cfg.storage):
        meta = read_meta(cfg.model, cfg.storage)
        if cfg.task is not None and cfg.task != meta.task:
            raise EvalError(f"task {cfg.task!r} given, but bundle {cfg.model} is a {meta.task} one")
        if cfg.min_pixels is not None or cfg.max_pixels is not None:
            raise EvalError("min_pixels/max_pixels are for a base model; a bundle has its own")
        try:
            check_scorable(get_task(meta.task))
        except ValueError as exc:
            raise EvalError(f"bundle {cfg.model}: {exc}") from None
        return EvalModel(
            "bundle", cfg.model, meta.task, meta.prompt, tuple(meta.labels),
            meta.min_pixels, meta.max_pixels, meta.name, meta.version,
        )  # fmt: skip
    scheme, path = parse_uri(cfg.model)
    if scheme != "file" or not (Path(path) / "config.json").is_file():
        raise EvalError(
            f"{cfg.model}: neither a bundle (no {BUNDLE_FILE}) nor a local base model folder "
            "(no config.json)"
        )
    if cfg.task is None:
        raise EvalError(f"{cfg.model} is a base model, not a bundle: give its task (--task)")
    if cfg.engine != "transformers":
        raise EvalError("a base model is scored with engine 'transformers'")
    spec = get_task(cfg.task)
    return EvalModel(
        "base", path, spec.name, spec.prompt, tuple(spec.labels or ()),
        cfg.min_pixels, cfg.max_pixels,
    )  # fmt: skip


def plan_split(cfg: EvalConfig, model: EvalModel) -> tuple[list[FileEntry], pa.Table]:
    """The split's Parquet files (sorted) and its (id, task, answer) columns, checked: the
    split exists and has rows, every row is of the model's task and every answer one of its
    labels (or None)."""
    split_uri = join_uri(cfg.data, cfg.split)
    if not exists(cfg.data, cfg.storage):
        raise EvalError(f"data folder {cfg.data} not found")
    if not exists(split_uri, cfg.storage):
        raise EvalError(f"{cfg.data} holds no {cfg.split} split ({split_uri} not found)")
    files = [e for e in list_files(split_uri, cfg.storage) if e.relpath.endswith(".parquet")]
    if not files:
        raise EvalError(f"{split_uri} holds no .parquet file")
    light = pa.concat_tables(
        read_parquet(e.uri, cfg.storage, columns=["id", "task", "answer"]) for e in files
    )
    if light.num_rows == 0:
        raise EvalError(f"the {cfg.split} split in {cfg.data} holds no rows")
    tasks = sorted(set(light.column("task").to_pylist()) - {model.task})
    if tasks:
        raise EvalError(
            f"the {cfg.split} split holds {tasks} rows; the model is a {model.task} one"
        )
    answers = {a for a in light.column("answer").to_pylist() if a is not None}
    unknown = sorted(answers - set(model.labels))
    if unknown:
        raise EvalError(
            f"answers {unknown} of the split are not labels of the model {model.labels}"
        )
    return files, light


class EvalScorer:
    """Holds the model; scores a batch of split rows (id, task, images, answer)."""

    def __init__(self, model: EvalModel, dtype: str, engine: str, vllm: dict | None = None):
        from hazard.model.engines import Scorer, make_engine

        self.labels = model.labels
        if model.kind == "bundle":  # on the actor's GPU when it reserved one
            self.engine = make_engine(engine, model.uri, dtype, vllm)
        else:
            self.engine = BaseModelEngine(
                Scorer(model.uri, model.prompt, model.labels, dtype, model.max_pixels,
                       model.min_pixels)
            )  # fmt: skip
        self.schema = output_schema(self.labels)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from hazard.model.vlm import open_stored_image

        n = batch.num_rows
        refs = batch.column("answer").to_pylist()
        errors: list[str | None] = [None] * n
        details: list[str | None] = [None] * n
        samples: dict[int, list] = {}
        for i, images in enumerate(batch.column("images").to_pylist()):
            try:
                if not images:
                    raise ValueError("the row holds no image")
                samples[i] = [open_stored_image(data) for data in images]
            except Exception as exc:  # PIL raises several types; the row fails, not the job
                errors[i], details[i] = "undecodable", f"{type(exc).__name__}: {exc}"
        scored = CascadeScorer.probabilities(self.engine, list(samples.values()))
        probs = dict(zip(samples, scored, strict=True))
        out: dict[str, list[Any]] = {f.name: [] for f in self.schema}
        for i in range(n):
            p = probs.get(i)
            if isinstance(p, Exception):
                errors[i], details[i], p = "model_error", f"{type(p).__name__}: {p}", None
            pred = max(self.labels, key=p.__getitem__) if p else None  # first label on ties
            out["prediction"].append(pred)
            out["correct"].append(None if refs[i] is None else pred == refs[i])
            for label in self.labels:
                out[prob_column(label)].append(p[label] if p else None)
            out["error"].append(errors[i])
            out["error_detail"].append(details[i])
        out |= {"id": batch.column("id"), "task": batch.column("task"), "reference": refs}
        return pa.table(out, schema=self.schema)


class BaseModelEngine:
    """A base model folder's `Scorer` as an engine: `probabilities` as {label: p} per sample."""

    def __init__(self, scorer):
        self.scorer = scorer

    def probabilities(self, images: list[list]) -> list[dict[str, float]]:
        rows = self.scorer.score(images)
        return [dict(zip(self.scorer.labels, map(float, r), strict=True)) for r in rows]


def evaluate(cfg: EvalConfig) -> dict:
    """Score the split and write the outputs; returns metrics.json's content (Ray is started,
    or joined, once the model and the split have been checked)."""
    import ray

    start = time.time()
    cfg = cfg.model_copy(update={k: absolute(getattr(cfg, k)) for k in ("model", "data", "out")})
    model = resolve_model(cfg)
    files, light = plan_split(cfg, model)
    if not ray.is_initialized():  # after the checks: a bad model or split starts no Ray
        ray.init()
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    fs, _ = filesystem_for(cfg.data, cfg.storage)
    paths = [filesystem_for(e.uri, cfg.storage)[1] for e in files]
    ds = ray.data.read_parquet(paths, filesystem=fs, columns=["id", "task", "images", "answer"])
    log.info("[eval] %s %s: %d rows of %s", model.kind, model.uri, light.num_rows, cfg.split)
    scored = ds.map_batches(
        EvalScorer,
        fn_constructor_kwargs={
            "model": model,
            "dtype": cfg.dtype,
            "engine": cfg.engine,
            "vllm": cfg.vllm.model_dump(),
        },
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
        num_cpus=cfg.cpus_per_actor,
        num_gpus=cfg.gpus_per_actor or None,
    )
    schema = output_schema(model.labels)
    rows: list[dict[str, Any]] = []
    last = time.time()
    with open_output(join_uri(cfg.out, PREDICTIONS_FILE), cfg.storage) as fh:
        writer = pq.ParquetWriter(fh, schema)
        for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
            batch = batch.cast(schema)
            writer.write_table(batch)
            rows.extend(batch.drop_columns([prob_column(lab) for lab in model.labels]).to_pylist())
            if time.time() - last >= cfg.progress_every_s:
                last = time.time()
                log.info("[eval] %d/%d rows scored", len(rows), light.num_rows)
        writer.close()
    if [r["id"] for r in rows] != light.column("id").to_pylist():  # one row each, in order
        raise RuntimeError(f"{light.num_rows} rows in the split but {len(rows)} scored rows")
    report = summarise(rows, model.describe(), cfg.split, cfg.data)
    report |= {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "engine": cfg.engine if model.kind == "bundle" else "transformers",
        "dtype": cfg.dtype,
        "seconds": round(time.time() - start, 2),
    }
    write_outputs(cfg.out, report, rows, model.labels, cfg.dataset or model.task, cfg.storage)
    log.info("[eval] done: %s -> %s", report["counts"], cfg.out)
    return report
