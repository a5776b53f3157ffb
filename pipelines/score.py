"""Batch scoring: a whole dataset scored offline with the cascade, as serving scores one image
(a config with `model_uri` scores one task's bundle instead: `pipelines.score_task`).

`ray_jobs/score_dataset.py` is its entrypoint. The source, planned by
`pipelines.sources.plan_source`, is a folder of images (ids: paths relative to it), Parquet
shards with the sample schema's `id` and `images` columns, or an s3:// prefix of either. Ray
Data reads it (the driver lists names, never image bytes), decodes each image with the guarded
`decode_image`, and scores with `map_batches` over a pool of actors that each hold both
engines (`hazard.model.engines.make_engine`: `engine`, in `dtype`, on the actor's GPU when
`gpus_per_actor` reserves one): the base scores every image, the specialist only the rows
`needs_specialist` escalates, then `combine` fuses them with the fusion recorded in the
specialist bundle (refused before scoring if it was calibrated with another engine, unless
`allow_calibration_engine_mismatch`). An image that cannot be read, decoded or scored gives a
row with its error reason; it never fails the job.

Written to `output_dir` (folder or s3://), in the source's order (file names sorted, or Parquet
files sorted and their rows in order):
- `submission.csv`: header `id,label`, one line per input image (empty label for failed ones);
- `predictions.parquet`: id, label, p_<label> (fused probabilities), hazard_score, escalated,
  p_high_specialist, error, error_detail;
- `summary.json`: listed, scored, failed (by reason), escalated, seconds, the bundles.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from hazard.config.score import ScoreDatasetConfig
from hazard.core.labels import HIGH_RISK, RISK_LABELS
from hazard.infra.bundle import BundleError, check_calibration, pixel_budget, read_meta
from hazard.infra.storage import (
    StorageError,
    absolute,
    filesystem_for,
    join_uri,
    open_input,
    open_output,
    write_bytes,
)
from pipelines.common import map_with_actors
from pipelines.sources import Source, plan_source

log = logging.getLogger("score_dataset")

PROB_COLUMNS = tuple(f"p_{label}" for label in RISK_LABELS)
OUTPUT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("label", pa.string()),  # the fused argmax; null when the image failed
        *(pa.field(c, pa.float64()) for c in PROB_COLUMNS),
        pa.field("hazard_score", pa.float64()),
        pa.field("escalated", pa.bool_()),
        pa.field("p_high_specialist", pa.float64()),  # the specialist's p(high_risk) if asked
        pa.field("error", pa.string()),  # reason code: unreadable, undecodable, too_large, ...
        pa.field("error_detail", pa.string()),
    ]
)


# --- reading (the driver lists names, workers read bytes) ------------------------------------


def read_files(batch: pa.Table, fs: pafs.FileSystem) -> pa.Table:
    """map_batches fn: (id, uri) rows -> (id, images, error, error_detail); a file that cannot
    be read gets error `unreadable`."""
    images, errors, details = [], [], []
    for uri in batch.column("uri").to_pylist():
        try:
            with open_input(uri, filesystem=fs) as fh:
                images.append([fh.read()])
            errors.append(None)
            details.append(None)
        except (StorageError, OSError) as exc:
            images.append([])
            errors.append("unreadable")
            details.append(str(exc))
    return pa.table(
        {
            "id": batch.column("id"),
            "images": pa.array(images, pa.list_(pa.binary())),
            "error": pa.array(errors, pa.string()),
            "error_detail": pa.array(details, pa.string()),
        }
    )


def read_dataset(cfg: ScoreDatasetConfig, source: Source):
    """The planned source as a lazy Ray dataset of (id, images[, error, error_detail]) rows."""
    import ray

    fs, _ = filesystem_for(cfg.source, cfg.storage)
    if source.format == "parquet":
        paths = [filesystem_for(uri, cfg.storage)[1] for _, uri in source.files]
        return ray.data.read_parquet(paths, filesystem=fs, columns=["id", "images"])
    items = [{"id": rel, "uri": uri} for rel, uri in source.files]
    blocks = max(1, min(200, len(items) // max(cfg.batch_size, 1)))
    return ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        read_files, batch_format="pyarrow", fn_kwargs={"fs": fs}, num_cpus=0.25
    )


# --- the scoring actor -----------------------------------------------------------------------


def decode_row(images: list[bytes], max_bytes: int, max_pixels: int, budget: int) -> list:
    """Upright RGB images of one row, within the models' pixel `budget` (decoded as the serving
    ingress decodes); raises ImageRejected (with a reason) for bad ones."""
    from hazard.infra.images import InvalidImage, decode_image

    if not images:
        raise InvalidImage("no_image", "the row holds no image")
    # aspect ratios the models refuse are refused here too
    return [
        decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels, pixel_budget=budget).image
        for data in images
    ]


class CascadeScorer:
    """Holds the base and specialist engines; scores a batch as serving scores one image."""

    def __init__(
        self,
        base_uri: str,
        specialist_uri: str,
        dtype: str,
        max_bytes: int,
        max_pixels: int,
        engine: str = "transformers",
        vllm: dict | None = None,
    ):
        from hazard.model.engines import make_engine

        # on the actor's GPU when it reserved one (hazard.model.device; vLLM: always)
        self.base = make_engine(engine, base_uri, dtype, vllm)
        self.specialist = make_engine(engine, specialist_uri, dtype, vllm)
        self.fusion = self.specialist.meta.fusion_spec()
        self.max_bytes, self.max_pixels = max_bytes, max_pixels
        # as the serving ingress: a large photo is brought to the models' budget on decode
        self.pixel_budget = pixel_budget((self.base.meta, self.specialist.meta))

    def decode(self, images: list[bytes]) -> list:
        """Upright RGB images of one row within the models' pixel budget (`decode_row`)."""
        return decode_row(images, self.max_bytes, self.max_pixels, self.pixel_budget)

    @staticmethod
    def probabilities(engine, samples: list[list]) -> list[dict[str, float] | Exception]:
        """label -> p per sample; if the batch fails, each sample alone (its error kept)."""
        if not samples:
            return []
        try:
            return engine.probabilities(samples)
        except Exception:
            if len(samples) == 1:
                raise
        out: list[dict[str, float] | Exception] = []
        for sample in samples:
            try:
                out.append(CascadeScorer.probabilities(engine, [sample])[0])
            except Exception as exc:  # one image the model cannot take must not stop the job
                out.append(exc)
        return out

    def score_rows(self, engine, samples: dict[int, list], rows: list[int]) -> dict:
        """{row: label -> p, or the exception} for the given rows of the batch."""
        probs = self.probabilities(engine, [samples[i] for i in rows])
        return dict(zip(rows, probs, strict=True))

    def __call__(self, batch: pa.Table) -> pa.Table:
        from hazard.core.cascade import combine, needs_specialist
        from hazard.infra.images import ImageRejected

        n = batch.num_rows
        ids = batch.column("id").to_pylist()
        raw = batch.column("images").to_pylist()
        has_err = "error" in batch.column_names
        errors = batch.column("error").to_pylist() if has_err else [None] * n
        details = batch.column("error_detail").to_pylist() if has_err else [None] * n
        samples: dict[int, list] = {}
        for i in range(n):
            if errors[i] is not None:
                continue
            try:
                samples[i] = self.decode(raw[i] or [])
            except ImageRejected as exc:
                errors[i], details[i] = exc.reason, str(exc)
        order = list(samples)
        p_base = self.score_rows(self.base, samples, order)
        escalate = []
        for i, p in p_base.items():
            if isinstance(p, Exception):
                errors[i], details[i] = "model_error", f"base: {type(p).__name__}: {p}"
            elif needs_specialist(p, self.fusion):
                escalate.append(i)
        p_spec = self.score_rows(self.specialist, samples, escalate)
        out: dict[str, list[Any]] = {f.name: [] for f in OUTPUT_SCHEMA}
        for i in range(n):
            p_high = p_spec.get(i)
            if isinstance(p_high, Exception):
                errors[i], details[i] = (
                    "model_error",
                    f"specialist: {type(p_high).__name__}: {p_high}",
                )
            result = None
            if errors[i] is None:
                high = p_high[HIGH_RISK] if p_high is not None else None
                result = combine(p_base[i], high, self.fusion)
            out["id"].append(ids[i])
            out["label"].append(result.risk_level if result else None)
            for label, col in zip(RISK_LABELS, PROB_COLUMNS, strict=True):
                out[col].append(result.probabilities[label] if result else None)
            out["hazard_score"].append(result.hazard_score if result else None)
            out["escalated"].append(result.escalated if result else None)
            out["p_high_specialist"].append(
                p_high[HIGH_RISK] if result and p_high is not None else None
            )
            out["error"].append(errors[i])
            out["error_detail"].append(details[i])
        return pa.table(out, schema=OUTPUT_SCHEMA)


# --- the job ---------------------------------------------------------------------------------


def check_bundles(cfg: ScoreDatasetConfig) -> dict:
    """The bundles' names and versions; BundleError before any scoring if they do not fit
    (CalibrationMismatch: the fusion was fitted on another engine's scores than `cfg.engine`,
    unless allowed)."""
    base, spec = read_meta(cfg.base_uri), read_meta(cfg.specialist_uri)
    if base.stage != "base":
        raise BundleError(f"base_uri {cfg.base_uri} is a {base.stage} bundle, not a base one")
    if spec.stage != "specialist":
        raise BundleError(f"specialist_uri {cfg.specialist_uri} is not a specialist bundle")
    missing = [label for label in RISK_LABELS if label not in base.labels]
    if missing or HIGH_RISK not in spec.labels:
        raise BundleError(
            f"bundles lack labels: base needs {list(RISK_LABELS)} (has {base.labels}), "
            f"specialist needs {HIGH_RISK} (has {spec.labels})"
        )
    for warning in check_calibration(
        spec, cfg.specialist_uri, cfg.engine, cfg.dtype, cfg.allow_calibration_engine_mismatch
    ):
        log.warning("[score] %s", warning)
    return {
        "base": {"name": base.name, "version": base.version, "uri": cfg.base_uri},
        "specialist": {"name": spec.name, "version": spec.version, "uri": cfg.specialist_uri},
        "fusion": spec.fusion_spec().to_dict(),
        "fusion_fitted": spec.fusion is not None,
        "fusion_scoring": {"engine": spec.scoring_engine, "dtype": spec.scoring_dtype},
    }


def _csv_lines(ids: list[str], labels: list[str | None]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerows([i, label or ""] for i, label in zip(ids, labels, strict=True))
    return buf.getvalue().encode("utf-8")


def score_dataset(cfg: ScoreDatasetConfig) -> dict:
    """Score the source; write submission.csv, predictions.parquet and summary.json (Ray is
    started, or joined, once the bundles and the source have been checked). A config with
    `model_uri` scores one task's bundle instead (`pipelines.score_task`)."""
    import ray

    if cfg.task_mode:
        from pipelines.score_task import score_task_dataset

        return score_task_dataset(cfg)

    start = time.time()
    # relative paths are the job directory's: resolve them before actors run elsewhere
    cfg = cfg.model_copy(
        update={
            k: absolute(getattr(cfg, k))
            for k in ("source", "base_uri", "specialist_uri", "output_dir")
        }
    )
    models = check_bundles(cfg)
    source = plan_source(cfg)
    fmt, files = source.format, source.files
    if not ray.is_initialized():  # after the checks: a bad source or bundle starts no Ray
        ray.init()
    # outputs in the source's order (a dataset copies the context when it is created)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    ds = read_dataset(cfg, source)
    total = len(files) if fmt == "folder" else ds.count()
    log.info("[score] %s source %s: %d images to score", fmt, cfg.source, total)
    scored = map_with_actors(
        ds,
        CascadeScorer,
        {
            "base_uri": cfg.base_uri,
            "specialist_uri": cfg.specialist_uri,
            "dtype": cfg.dtype,
            "max_bytes": cfg.max_image_bytes,
            "max_pixels": cfg.max_image_pixels,
            "engine": cfg.engine,
            "vllm": cfg.vllm.model_dump(),
        },
        cfg,
    )
    listed = scored_n = escalated = 0
    failed: dict[str, int] = {}
    labels: dict[str, int] = {}
    last = time.time()
    storage = cfg.storage
    sub_uri, pred_uri = (
        join_uri(cfg.output_dir, f) for f in ("submission.csv", "predictions.parquet")
    )
    with open_output(sub_uri, storage) as sub, open_output(pred_uri, storage) as pred:
        sub.write(b"id,label\n")
        writer = pq.ParquetWriter(pred, OUTPUT_SCHEMA)
        for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
            batch = batch.cast(OUTPUT_SCHEMA)
            writer.write_table(batch)
            sub.write(_csv_lines(batch.column("id").to_pylist(), batch.column("label").to_pylist()))
            for row in batch.select(["label", "escalated", "error"]).to_pylist():
                listed += 1
                if row["error"] is None:
                    scored_n += 1
                    escalated += bool(row["escalated"])
                    labels[row["label"]] = labels.get(row["label"], 0) + 1
                else:
                    failed[row["error"]] = failed.get(row["error"], 0) + 1
            if time.time() - last >= cfg.progress_every_s:
                last = time.time()
                log.info(
                    "[score] %d/%d rows done (%.1f/s), %d failed, %d escalated",
                    listed,
                    total,
                    listed / max(last - start, 1e-9),
                    sum(failed.values()),
                    escalated,
                )
        writer.close()
    summary = {
        "source": cfg.source,
        "format": fmt,
        "listed": listed,
        "scored": scored_n,
        "failed": sum(failed.values()),
        "failed_by_reason": dict(sorted(failed.items())),
        "escalated": escalated,
        "escalation_rate": escalated / scored_n if scored_n else 0.0,
        "labels": dict(sorted(labels.items())),
        "seconds": round(time.time() - start, 2),
        "models": models,
        "engine": cfg.engine,
        "dtype": cfg.dtype,
        "outputs": {"submission": sub_uri, "predictions": pred_uri},
    }
    if fmt == "folder" and listed != len(files):  # every listed file gives exactly one row
        raise RuntimeError(f"{len(files)} files listed but {listed} rows scored")
    write_bytes(
        join_uri(cfg.output_dir, "summary.json"), json.dumps(summary, indent=2).encode(), storage
    )
    log.info(
        "[score] done: %d listed, %d scored, %d failed %s, %d escalated in %.1f s -> %s",
        listed,
        scored_n,
        summary["failed"],
        summary["failed_by_reason"],
        escalated,
        summary["seconds"],
        cfg.output_dir,
    )
    return summary
