"""Evaluate a model on a prepared split: metrics, predictions, answers file and HTML report.

    ray job submit --address http://127.0.0.1:8265 -- \\
        python -m ray_jobs.eval --config configs/tiny/eval.yaml \\
        [--model runs/demo/stage1_base/model] [--data runs/demo/data] [--split test] \\
        [--out runs/demo/eval] [--task corridor_risk] [--set num_actors=2] \\
        [--adapter runs/x/checkpoints/.../adapter] [--baseline tiny-model-folder]

`--model` is a bundle, or a base model folder (the model without fine-tuning), with
`--adapter` a LoRA adapter merged into it; `--baseline` a second model scored on the same split
and compared per task in metrics.json and report.html. Each row is asked as its task says
(`--task` only checks that every row is of it). The flags override the config's keys (and win
over `--set`). What is scored and written is `pipelines.evaluate`'s. Run as a Ray job it
joins that cluster; run directly it starts a local Ray once the models and the split have been
checked. Exit code 2 on a bad config (unknown split or task, bad key), 1 on an unusable model,
adapter, data folder or storage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from hazard.config import add_config_args, load_job_config
from hazard.config.eval import EvalConfig

FLAGS = ("model", "adapter", "baseline", "data", "split", "out", "task")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Score a prepared split with a bundle, a base model or a base model and "
        "an adapter (optionally against a baseline); write metrics, predictions, answers files "
        "and report.html."
    )
    add_config_args(parser, "batch_size=4", config_required=False)
    for flag in FLAGS:
        parser.add_argument(f"--{flag}", help=f"the config's `{flag}` (overrides it)")
    args = parser.parse_args(argv)
    # JSON strings are YAML scalars: a path such as `123` or `null` stays a string
    args.overrides += [f"{f}={json.dumps(getattr(args, f))}" for f in FLAGS if getattr(args, f)]
    cfg = load_job_config(args, EvalConfig)
    if cfg is None:
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from hazard.infra.bundle import BundleError
    from hazard.infra.storage import StorageError
    from pipelines.evaluate import EvalError, evaluate

    try:
        evaluate(cfg)
    except (EvalError, BundleError, StorageError) as exc:
        print(f"[eval] error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
