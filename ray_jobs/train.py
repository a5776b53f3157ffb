"""Train one cascade stage with Ray Train (DeepSpeed + LoRA).

    ray job submit --address http://127.0.0.1:8265 -- \\
        python -m ray_jobs.train --config configs/tiny/stage1_base.yaml [--set optim.max_steps=50]

Reads the data job's Parquet shards (local or `s3://`), enriches high-risk rows for the
specialist and runs the shared worker loop (`ray_jobs/train_loop.py`) on
`scaling.num_workers` workers. Checkpoints go to `<output_dir>/ray_results/<run_name>`; a
re-submitted job with the same run name resumes from its latest checkpoint, and a failed
worker group restarts from it (`scaling.max_failures`). After the run the bundle is built from
the best checkpoint into `<output_dir>/model`, and `<output_dir>/metrics.json` and
`<output_dir>/plots/*.png` report the run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from hazard.config import ConfigError, add_config_args, load_job_config
from hazard.config.train import TrainConfig
from hazard.core.labels import HIGH_RISK
from hazard.core.tasks import MIXED
from hazard.infra.storage import (
    StorageError,
    absolute,
    exists,
    filesystem_for,
    join_uri,
    parse_uri,
    ray_io,
    read_bytes,
    upload_dir,
)
from hazard.model.finetune import class_weight_table


def resolve_model_uri(path: str) -> str:
    """'tiny' → the cached tiny Qwen2.5-VL (built once); a local folder → its absolute path
    (the workers run elsewhere); `s3://` URIs and hub ids as given."""
    if path == "tiny":
        from hazard.demo.tiny_qwen import ensure_tiny_model

        return str(ensure_tiny_model())
    return absolute(path) if Path(path).is_dir() else path


def build_datasets(cfg: TrainConfig):
    """The training Ray Dataset and its rows per label (one pass of the data).

    Augmented copies the data job stored as recipes (`augment.store: recipes` in its
    lineage.json) are rebuilt from their parents first (`pipelines.augment.rebuild_copies`).
    `high_risk_oversample` copies of high-risk rows are added; the result is materialized once
    and then laid end to end for as many passes (epochs) as `max_steps` needs, each pass in its
    own seeded block order, so every worker streams one dataset from start to finish instead of
    restarting Ray Data's streaming split at each epoch (seconds per restart)."""
    import math

    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False  # keep job logs readable
    train_uri = join_uri(cfg.data_dir, "train")
    if not exists(train_uri, cfg.storage):
        raise ConfigError(f"no training data at {train_uri}: run the data job first")
    io = ray_io(train_uri, cfg.storage)
    train = ray.data.read_parquet(io.path, filesystem=io.filesystem)
    recipe_cfg = recipe_configs(cfg)
    if recipe_cfg is not None:  # copies stored as recipes: applied here, from the parents
        from pipelines.augment import rebuild_copies

        train = rebuild_copies(train, *recipe_cfg)
    if cfg.optim.high_risk_oversample > 1:
        high = train.filter(lambda row: row["answer"] == HIGH_RISK)
        train = train.union(*[high] * (cfg.optim.high_risk_oversample - 1))
    train = train.materialize()
    pairs = [(r["task"], r["answer"]) for r in train.select_columns(["task", "answer"]).iter_rows()]
    tasks = sorted({t for t, _ in pairs})
    if cfg.optim.task != MIXED and tasks not in ([], [cfg.optim.task]):
        raise ConfigError(
            f"the training rows in {train_uri} are of tasks {tasks}, but optim.task is "
            f"{cfg.optim.task!r}; train {MIXED!r} for rows of several tasks"
        )
    counts = dict(Counter(answer for _, answer in pairs))
    rows = sum(counts.values())
    o = cfg.optim
    needed = o.max_steps * o.batch_size * o.grad_accum_steps * cfg.scaling.num_workers
    # one pass more than the exact need: each worker drops its last partial batch per shard
    passes = max(1, math.ceil(needed / max(rows, 1)) + 1)
    shuffled = [train.randomize_block_order(seed=o.seed + k) for k in range(passes)]
    return shuffled[0].union(*shuffled[1:]) if passes > 1 else shuffled[0], counts


def recipe_configs(cfg: TrainConfig):
    """(AugmentConfig, ValidationConfig) of the data job when it stored its augmented copies
    as recipes (lineage.json's config), else None."""
    from hazard.config.data import AugmentConfig, ValidationConfig

    uri = join_uri(cfg.data_dir, "lineage.json")
    if not exists(uri, cfg.storage):
        return None
    data_cfg = json.loads(read_bytes(uri, cfg.storage)).get("config", {})
    augment = data_cfg.get("augment", {})
    if augment.get("store", "images") != "recipes":
        return None
    return (
        AugmentConfig.model_validate(augment),
        ValidationConfig.model_validate(data_cfg.get("validation", {})),
    )


def data_lineage_id(cfg: TrainConfig) -> str | None:
    """sha256 (first 16 hex digits) of the data job's lineage.json, None when there is none."""
    uri = join_uri(cfg.data_dir, "lineage.json")
    return (
        hashlib.sha256(read_bytes(uri, cfg.storage)).hexdigest()[:16]
        if exists(uri, cfg.storage)
        else None
    )


def best_checkpoint(result):
    """The retained checkpoint with the highest selection score (NaN: not evaluated)."""
    scored = [
        (metrics["selection_score"], metrics["step"], ckpt)
        for ckpt, metrics in result.best_checkpoints
        if not math.isnan(metrics.get("selection_score", math.nan))
    ]
    if not scored:
        raise RuntimeError(f"run {result.path} reported no evaluated checkpoint")
    return max(scored, key=lambda s: (s[0], -s[1]))[2]


def _export_task(cfg: TrainConfig, model_uri, checkpoint, out_uri, lineage, summary) -> dict:
    """Ray task body: build the bundle of `checkpoint`; returns its metadata as a dict."""
    from hazard.model.training.export import export_bundle

    with checkpoint.as_directory() as ckpt_dir:
        meta = export_bundle(cfg, model_uri, Path(ckpt_dir), out_uri, lineage, summary)
    return meta.model_dump(mode="json")


def run(cfg: TrainConfig) -> dict:
    """Fit the stage, export the bundle from the best checkpoint; returns metrics.json."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from hazard.model.training.checkpoint import STATE_FILE
    from hazard.model.training.state import TrainState
    from ray_jobs.train_loop import train_loop

    # paths from the config are relative to the job's directory: resolve them here, on the
    # driver, since the Ray Train workers run in a directory of their own
    cfg = cfg.model_copy(
        update={"data_dir": absolute(cfg.data_dir), "output_dir": absolute(cfg.output_dir)}
    )
    model_uri = resolve_model_uri(cfg.model.path)
    train, counts = build_datasets(cfg)
    weights = class_weight_table(cfg.optim.class_weights, counts)
    print(f"[train] stage={cfg.stage} model={model_uri}")
    print(f"[train] train rows per label: {json.dumps(counts, sort_keys=True)}")
    print(f"[train] loss weights: { {k: round(v, 3) for k, v in sorted(weights.items())} }")
    fs, storage_path = filesystem_for(join_uri(cfg.output_dir, "ray_results"), cfg.storage)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "config": cfg.model_dump(mode="json"),
            "model_uri": model_uri,
            "class_weights": weights,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.scaling.num_workers,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker={"CPU": cfg.scaling.cpus_per_worker},
        ),
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        run_config=RunConfig(
            name=cfg.run_name,
            storage_path=storage_path,
            storage_filesystem=fs if parse_uri(cfg.output_dir)[0] == "s3" else None,
            failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.checkpoint.keep,
                checkpoint_score_attribute="selection_score",
                checkpoint_score_order="max",
            ),
        ),
        datasets={"train": train},
    )
    start = time.time()
    result = trainer.fit()
    wall = round(time.time() - start, 1)
    # only the small state file of the latest checkpoint, not its weights and optimizer states
    latest = result.checkpoint
    with latest.filesystem.open_input_stream(f"{latest.path}/{STATE_FILE}") as fh:
        state = TrainState.from_dict(json.loads(fh.read()))
    best = best_checkpoint(result)
    summary = {
        "best_step": state.tracker.best_step,
        "selection_metric": cfg.eval.metric,
        "steps": state.step,
        "stopped_early": state.stopped_early,
        "resumed_from": state.resumed_from,
        "samples": state.samples,
        "skipped_samples": state.skipped,
        "skipped_ids": state.skipped_ids,
        "train_seconds": wall,
    }
    bundle_uri = join_uri(cfg.output_dir, "model")
    print(f"[train] building the bundle from the checkpoint of step {summary['best_step']}")
    export = ray.remote(
        num_cpus=cfg.scaling.cpus_per_worker, num_gpus=1 if cfg.scaling.use_gpu else 0
    )(_export_task)
    meta = ray.get(export.remote(cfg, model_uri, best, bundle_uri, data_lineage_id(cfg), summary))
    metrics = {
        **meta["metrics"],
        "step": state.step,
        "val_n": meta["val_report"]["n"],
        "wall_seconds": round(time.time() - start, 1),
        "train_rows": counts,
        "loss_weights": weights,
        "model_dir": bundle_uri,
        "checkpoint_dir": result.path,
        "history": {"steps": state.steps, "evals": state.evals},
    }
    metrics["plots"] = write_report(cfg, metrics, meta, state)
    return metrics


def write_report(cfg: TrainConfig, metrics: dict, meta: dict, state) -> dict:
    """metrics.json and plots/*.png under output_dir (local or `s3://`)."""
    from hazard.reports import write_training_report

    with tempfile.TemporaryDirectory(prefix="hazard-report-") as tmp:
        history = {
            "steps": state.steps,
            "evals": state.evals,
            "best_step": state.tracker.best_step,
            "metric": cfg.eval.metric,
        }
        preds = meta["val_predictions"] or {"probabilities": None, "labels": []}
        plots = write_training_report(
            tmp, history, preds["probabilities"], preds["labels"], meta["labels"]
        )
        Path(tmp, "metrics.json").write_text(json.dumps({**metrics, "plots": plots}, indent=2))
        upload_dir(tmp, cfg.output_dir, cfg.storage)
    return plots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train one hazard-cascade stage on Ray Train.")
    add_config_args(parser, "optim.max_steps=50")
    cfg = load_job_config(parser.parse_args(argv), TrainConfig)
    if cfg is None:
        return 2
    import ray

    ray.init()
    try:
        metrics = run(cfg)
    except (ConfigError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    hr = metrics["val_high_risk_recall"]
    print(
        f"[train] done in {metrics['wall_seconds']}s: best step {metrics['best_step']} of "
        f"{metrics['step']}; bundle val macro-F1 {metrics['val_macro_f1']:.3f}, accuracy "
        f"{metrics['val_accuracy']:.3f}, high-risk recall {hr}; bundle {metrics['model_dir']}, "
        f"report {join_uri(cfg.output_dir, 'metrics.json')}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
