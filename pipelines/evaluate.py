"""Evaluation: a prepared split scored by a model; metrics, predictions, answers and a report.

`ray_jobs/eval.py` is its entrypoint. The model (`resolve_model`) is a bundle (its task, prompt,
labels and pixel limits come from its hazard_model.json), a local base model folder (no
fine-tuning: the baseline), or a base model folder plus a LoRA adapter folder (merged before
scoring). An optional `baseline` model is scored on the same split the same way and set beside
it in metrics.json and report.html.

The split, `<data>/<split>/*.parquet` (the data job's shards, sample schema), is read by Ray
Data in file-name order (the source's order) and scored with `map_batches` over an actor pool
of `EvalScorer`s (`pipelines.common.map_with_actors`), as batch scoring does. Each row is
answered as its own task says (`hazard.core.tasks`, through `hazard.model.answering.Answerer`):
asked the template prompt or its own turns, ranked by likelihood over the closed answer set or
generated and parsed, so a split may mix tasks. Rows whose `answer` is None (the submission
rows) are scored and written but left out of the metrics and counted as `unlabelled`; a row
whose images cannot be decoded or scored gets an error reason, counts as `failed` and, when
labelled, as an unparsed prediction; a generated answer that does not parse is kept (`raw`)
and counted by the parse rate.

Written to `out` (folder or s3://), rows in the split's order (`pipelines.eval_outputs`):
`predictions.parquet`, `metrics.json`, `answers/<dataset>.json`, `report.html`, and with a
baseline `baseline/predictions.parquet`.
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

from hazard.config.eval import EvalConfig
from hazard.core.tasks import MIXED, get_task
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
from pipelines.common import map_with_actors
from pipelines.eval_outputs import (
    BASELINE_DIR,
    PREDICTIONS_FILE,
    compare,
    output_schema,
    prob_column,
    summarise,
    write_outputs,
)

log = logging.getLogger("eval")

ADAPTER_WEIGHTS = "adapter_model.safetensors"


class EvalError(ValueError):
    """The model or the data cannot be evaluated (missing, empty, other task, other labels)."""


@dataclass(frozen=True)
class EvalModel:
    """What scores the split: a bundle, a base model folder, or a base folder and an adapter.

    `task`, `prompt` and `labels` are the bundle's (None/empty for a base model, and a bundle of
    a mixed run has task "mixed": each row is asked its own task's prompt and ranked over its
    task's answers)."""

    kind: str  # "bundle" | "base" | "adapter"
    uri: str
    task: str | None = None
    prompt: str | None = None
    labels: tuple[str, ...] = ()
    adapter: str | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None
    name: str | None = None  # bundle only
    version: str | None = None  # bundle only

    def describe(self) -> dict[str, Any]:
        """The model as metrics.json records it."""
        return {k: v for k, v in asdict(self).items() if k != "prompt"} | {
            "labels": list(self.labels)
        }

    def asks(self, task: str) -> tuple[str | None, tuple[str, ...] | None]:
        """(template prompt, closed answers) rows of `task` are asked and ranked over: the
        bundle's own for its task, None (the task's) otherwise."""
        if task == self.task:
            return self.prompt, self.labels or None
        return None, None


def _local_folder(uri: str, what: str, needs: str) -> str:
    scheme, path = parse_uri(uri)
    if scheme != "file" or not (Path(path) / needs).is_file():
        raise EvalError(f"{uri}: not a local {what} folder (no {needs})")
    return path


def resolve_model(uri: str, cfg: EvalConfig, adapter: str | None = None) -> EvalModel:
    """The bundle, base model or base + adapter at `uri`; EvalError when it cannot be evaluated
    with `cfg` (task, pixel limits, engine)."""
    if exists(join_uri(uri, BUNDLE_FILE), cfg.storage):
        meta = read_meta(uri, cfg.storage)
        if adapter is not None:
            raise EvalError(f"{uri} is a bundle (its adapter is merged in): drop `adapter`")
        if cfg.task is not None and meta.task not in (cfg.task, MIXED):
            raise EvalError(f"task {cfg.task!r} given, but bundle {uri} is a {meta.task} one")
        if cfg.min_pixels is not None or cfg.max_pixels is not None:
            raise EvalError("min_pixels/max_pixels are for a base model; a bundle has its own")
        if cfg.engine == "vllm" and (
            meta.task == MIXED or not get_task(meta.task).ranks_fixed_prompt
        ):
            raise EvalError(
                f"bundle {uri}: engine vllm scores fixed-prompt tasks ranked by likelihood; "
                f"{meta.task} is not one (use engine transformers)"
            )
        return EvalModel(
            "bundle", uri, meta.task, meta.prompt, tuple(meta.labels), None,
            meta.min_pixels, meta.max_pixels, meta.name, meta.version,
        )  # fmt: skip
    if not exists(uri, cfg.storage):
        raise EvalError(f"model {uri} not found")
    path = _local_folder(uri, "base model (or bundle)", "config.json")
    if cfg.engine != "transformers":
        raise EvalError(
            "a base model (with or without adapter) is scored with engine 'transformers'"
        )
    if adapter is None:
        return EvalModel("base", path, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels)
    adapter_path = _local_folder(adapter, "LoRA adapter", "adapter_config.json")
    if not (Path(adapter_path) / ADAPTER_WEIGHTS).is_file():  # never a pickled .bin
        raise EvalError(f"adapter {adapter}: no {ADAPTER_WEIGHTS} (weights load from safetensors)")
    return EvalModel(
        "adapter", path, adapter=adapter_path, min_pixels=cfg.min_pixels,
        max_pixels=cfg.max_pixels,
    )  # fmt: skip


def plan_split(cfg: EvalConfig, model: EvalModel) -> tuple[list[FileEntry], pa.Table]:
    """The split's Parquet files (sorted) and its (id, task, answer) columns, checked: the
    split exists and has rows; every row's task is registered, is `cfg.task` when given and the
    bundle's when the model is one; every answer is a valid reference of its task (or None)."""
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
    tasks = sorted(set(light.column("task").to_pylist()))
    wanted = cfg.task or (None if model.task == MIXED else model.task)
    if wanted is not None and tasks != [wanted]:
        raise EvalError(
            f"the {cfg.split} split holds {tasks} rows; the model is asked {wanted} only"
        )
    for name in tasks:
        try:
            spec = get_task(name)
        except ValueError as exc:
            raise EvalError(f"the {cfg.split} split: {exc}") from None
        _, labels = model.asks(name)
        for row_id, task, answer in zip(
            *(light.column(c).to_pylist() for c in ("id", "task", "answer")), strict=True
        ):
            if task != name or answer is None:
                continue
            if labels is not None and answer not in labels:
                raise EvalError(
                    f"row {row_id}: answer {answer!r} is not a label of the model {labels}"
                )
            problem = spec.answer.check(answer)
            if problem:
                raise EvalError(f"row {row_id} ({name}): reference {answer!r} {problem}")
    return files, light


class EvalScorer:
    """Holds one model; answers a batch of split rows (id, task, images, answer, conversation)
    and returns them as predictions.parquet rows (`output_schema(choices)`)."""

    def __init__(
        self, model: EvalModel, choices: tuple[str, ...], dtype: str, engine: str, vllm: dict
    ):
        self.model, self.choices = model, choices
        self.schema = output_schema(choices)
        self.answerers: dict[str, Any] = {}
        self.engine = None
        if engine == "vllm":  # a bundle of a fixed-prompt likelihood task (resolve_model)
            from hazard.model.engines import make_engine

            self.engine = make_engine(engine, model.uri, dtype, vllm)
            return
        from hazard.model.answering import load_answering_model

        path = model.uri
        if model.kind == "bundle":
            from hazard.infra.bundle import open_bundle

            path = str(open_bundle(model.uri).path)
        self.net, self.processor = load_answering_model(
            path, dtype, model.max_pixels, model.min_pixels, model.adapter
        )

    def answerer(self, task: str):
        """The Answerer of `task` (built once per actor)."""
        if task not in self.answerers:
            from hazard.model.answering import Answerer

            prompt, labels = self.model.asks(task)
            self.answerers[task] = Answerer(
                self.net, self.processor, get_task(task), prompt, labels
            )
        return self.answerers[task]

    def answer_all(self, task: str, samples: list) -> list:
        """Answers of `samples` of `task`; if the batch fails, each alone (its error kept)."""
        from hazard.model.answering import Answer

        def run(part: list) -> list:
            if self.engine is not None:
                return [Answer(max(p, key=p.get), probs=p) for p in self.engine.probabilities(
                    [imgs for _, imgs in part])]  # fmt: skip
            return self.answerer(task).answer(part)

        try:
            return run(samples)
        except Exception as exc:
            if len(samples) == 1:
                return [exc]
        out = []
        for sample in samples:
            try:
                out.extend(run([sample]))
            except Exception as exc:  # one sample the model cannot take must not stop the job
                out.append(exc)
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        cols = {c: batch.column(c).to_pylist() for c in ("task", "answer", "conversation")}
        errors: list[str | None] = [None] * n
        details: list[str | None] = [None] * n
        by_task: dict[str, list[int]] = {}
        samples: dict[int, Any] = {}
        for i, images in enumerate(batch.column("images").to_pylist()):
            task = cols["task"][i]
            try:
                if not images:
                    raise ValueError("the row holds no image")
                if self.engine is not None:
                    from hazard.model.vlm import open_stored_image

                    samples[i] = (None, [open_stored_image(b) for b in images])
                else:
                    samples[i] = self.answerer(task).sample(images, cols["conversation"][i])
                by_task.setdefault(task, []).append(i)
            except Exception as exc:  # PIL raises several types; the row fails, not the job
                errors[i], details[i] = "undecodable", f"{type(exc).__name__}: {exc}"
        answers: dict[int, Any] = {}
        for task, rows in by_task.items():
            got = self.answer_all(task, [samples[i] for i in rows])
            answers.update(zip(rows, got, strict=True))
        out: dict[str, list[Any]] = {f.name: [] for f in self.schema}
        for i in range(n):
            a = answers.get(i)
            if isinstance(a, Exception):
                errors[i], details[i], a = "model_error", f"{type(a).__name__}: {a}", None
            spec, ref = get_task(cols["task"][i]), cols["answer"][i]
            pred = a.prediction if a is not None else None
            out["prediction"].append(pred)
            out["raw"].append(a.raw if a is not None else None)
            same = None
            if ref is not None:
                parsed = spec.answer.parse(pred) if pred is not None else None
                same = spec.answer.same(spec.answer.read(ref), parsed)
            out["correct"].append(same)
            probs = (a.probs if a is not None else None) or {}
            for choice in self.choices:
                out[prob_column(choice)].append(probs.get(choice))
            out["error"].append(errors[i])
            out["error_detail"].append(details[i])
        out |= {"id": batch.column("id"), "task": batch.column("task"), "reference": cols["answer"]}
        return pa.table(out, schema=self.schema)


def score_choices(model: EvalModel, tasks: list[str]) -> tuple[str, ...]:
    """The closed answers likelihood ranks for the split's tasks, in order (p_<choice> columns)."""
    out: list[str] = []
    for name in tasks:
        spec = get_task(name)
        _, labels = model.asks(name)
        if spec.inference.mode == "likelihood":
            out += [c for c in labels or spec.labels or () if c not in out]
    return tuple(out)


def score_model(cfg: EvalConfig, model: EvalModel, files, light, out: str) -> list[dict]:
    """Score the split with `model` through the actor pool; write predictions.parquet to `out`;
    the rows (without the probability columns), in the split's order."""
    import ray

    tasks = sorted(set(light.column("task").to_pylist()))
    choices = score_choices(model, tasks)
    fs, _ = filesystem_for(cfg.data, cfg.storage)
    paths = [filesystem_for(e.uri, cfg.storage)[1] for e in files]
    ds = ray.data.read_parquet(
        paths, filesystem=fs, columns=["id", "task", "images", "answer", "conversation"]
    )
    log.info("[eval] %s %s: %d rows of %s", model.kind, model.uri, light.num_rows, cfg.split)
    scored = map_with_actors(
        ds,
        EvalScorer,
        {
            "model": model,
            "choices": choices,
            "dtype": cfg.dtype,
            "engine": cfg.engine,
            "vllm": cfg.vllm.model_dump(),
        },
        cfg,
    )
    schema = output_schema(choices)
    rows: list[dict[str, Any]] = []
    last = time.time()
    with open_output(join_uri(out, PREDICTIONS_FILE), cfg.storage) as fh:
        writer = pq.ParquetWriter(fh, schema)
        for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
            batch = batch.cast(schema)
            writer.write_table(batch)
            rows.extend(batch.drop_columns([prob_column(c) for c in choices]).to_pylist())
            if time.time() - last >= cfg.progress_every_s:
                last = time.time()
                log.info("[eval] %d/%d rows scored", len(rows), light.num_rows)
        writer.close()
    if [r["id"] for r in rows] != light.column("id").to_pylist():  # one row each, in order
        raise RuntimeError(f"{light.num_rows} rows in the split but {len(rows)} scored rows")
    return rows


def evaluate(cfg: EvalConfig) -> dict:
    """Score the split (and the baseline) and write the outputs; returns metrics.json's content
    (Ray is started, or joined, once the models and the split have been checked)."""
    import ray

    start = time.time()
    keys = ("model", "data", "out", "adapter", "baseline")
    cfg = cfg.model_copy(
        update={k: absolute(getattr(cfg, k)) for k in keys if getattr(cfg, k) is not None}
    )
    model = resolve_model(cfg.model, cfg, cfg.adapter)
    baseline = resolve_model(cfg.baseline, cfg) if cfg.baseline is not None else None
    files, light = plan_split(cfg, model)
    if baseline is not None:
        plan_split(cfg, baseline)
    if not ray.is_initialized():  # after the checks: a bad model or split starts no Ray
        ray.init()
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    rows = score_model(cfg, model, files, light, cfg.out)
    report = summarise(rows, model.describe(), cfg.split, cfg.data)
    if baseline is not None:
        base_rows = score_model(cfg, baseline, files, light, join_uri(cfg.out, BASELINE_DIR))
        report["baseline"] = summarise(base_rows, baseline.describe(), cfg.split, cfg.data)
        report["comparison"] = compare(report, report["baseline"])
    report |= {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "engine": cfg.engine,
        "dtype": cfg.dtype,
        "seconds": round(time.time() - start, 2),
    }
    write_outputs(cfg.out, report, rows, cfg.dataset, cfg.storage)
    log.info("[eval] done: %s -> %s", report["counts"], cfg.out)
    return report
