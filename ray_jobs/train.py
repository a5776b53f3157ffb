"""Train one cascade stage with Ray Train (DeepSpeed + LoRA).

    ray job submit --address http://127.0.0.1:8265 -- \\
        python -m ray_jobs.train --config configs/tiny/stage1_base.yaml [--set optim.max_steps=50]

Reads the data job's Parquet shards, enriches high-risk rows for the specialist, runs the shared
worker loop (`ray_jobs/train_loop.py`) on `scaling.num_workers` workers and prints the
validation metrics. The model bundle lands in `<output_dir>/model`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from hazard.config import ConfigError, add_config_args, load_job_config
from hazard.config.train import TrainConfig
from hazard.finetune import class_weight_table
from hazard.labels import HIGH_RISK
from hazard.storage import absolute


def resolve_model_path(path: str) -> str:
    """'tiny' → the cached tiny Qwen2.5-VL (built once); a local folder → its absolute path
    (the workers run elsewhere); anything else (a hub id) as given."""
    if path == "tiny":
        from hazard.demo.tiny_qwen import ensure_tiny_model

        return str(ensure_tiny_model())
    return absolute(path) if Path(path).is_dir() else path


def build_datasets(cfg: TrainConfig):
    """The training Ray Dataset (with `high_risk_oversample` copies of high-risk rows) and
    its rows per label."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False  # keep job logs readable
    train_dir = Path(cfg.data_dir) / "train"
    if not train_dir.exists() and "://" not in cfg.data_dir:
        raise ConfigError(f"no training data at {train_dir}: run the data job first")
    train = ray.data.read_parquet(str(train_dir))
    if cfg.optim.high_risk_oversample > 1:
        high = train.filter(lambda row: row["answer"] == HIGH_RISK)
        train = train.union(*[high] * (cfg.optim.high_risk_oversample - 1))
    counts = dict(Counter(row["answer"] for row in train.select_columns(["answer"]).iter_rows()))
    return train.randomize_block_order(seed=cfg.optim.seed), counts


def run(cfg: TrainConfig) -> dict:
    """Fit the stage; returns the final metrics reported by rank 0."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from ray_jobs.train_loop import train_loop

    # paths from the config are relative to the job's directory: resolve them here, on the
    # driver, since the Ray Train workers run in a directory of their own
    cfg = cfg.model_copy(
        update={"data_dir": absolute(cfg.data_dir), "output_dir": absolute(cfg.output_dir)}
    )
    model_path = resolve_model_path(cfg.model.path)
    train, counts = build_datasets(cfg)
    weights = class_weight_table(cfg.optim.class_weights, counts)
    print(f"[train] stage={cfg.stage} model={model_path}")
    print(f"[train] train rows per label: {json.dumps(counts, sort_keys=True)}")
    print(f"[train] loss weights: { {k: round(v, 3) for k, v in sorted(weights.items())} }")
    output = Path(cfg.output_dir).resolve()
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "config": cfg.model_dump(),
            "model_path": model_path,
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
            storage_path=str(output / "ray_results"),
            failure_config=FailureConfig(max_failures=cfg.scaling.max_failures),
        ),
        datasets={"train": train},
    )
    start = time.time()
    result = trainer.fit()
    metrics = dict(result.metrics)
    metrics["wall_seconds"] = round(time.time() - start, 1)
    metrics["train_rows"] = counts
    metrics["loss_weights"] = weights
    metrics["model_dir"] = str(output / "model")
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


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
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"[train] done in {metrics['wall_seconds']}s: val macro-F1 {metrics['val_macro_f1']:.3f}, "
        f"accuracy {metrics['val_accuracy']:.3f}, high-risk recall "
        f"{metrics['val_high_risk_recall']}, model bundle {metrics['model_dir']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
