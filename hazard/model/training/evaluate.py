"""Validation during training: serving's label-likelihood scoring, sharded over the ranks."""

from __future__ import annotations

import numpy as np

from hazard.core.metrics import classification_report
from hazard.model.vlm import score_split


def evaluate_split(
    model, processor, split_dir: str, prompt: str, labels, batch_size: int, storage=None
):
    """Score every row of a split once across the ranks (read directly, not through a Ray
    Train dataset shard, which drops rows to equalise shards) and gather on every rank.

    Returns (report, probabilities, truth); every rank gets the same, so decisions taken on
    them (best checkpoint, early stop) agree across ranks."""
    import torch.distributed as dist

    dist_on = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist_on else (0, 1)
    probs, truth = score_split(
        model, processor, split_dir, prompt, labels, batch_size, rank, world, storage
    )
    parts = [(probs, truth)]
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, (probs, truth))
    probs = [p for part in parts for p in part[0]]
    truth = [t for part in parts for t in part[1]]
    preds = [labels[int(np.argmax(p))] for p in probs]
    return classification_report(truth, preds, labels=labels), probs, truth


def eval_summary(step: int, report: dict) -> dict:
    """The figures of one evaluation kept in the run's history and reported to Ray Train."""
    return {
        "step": step,
        "n": report["n"],
        "accuracy": report["accuracy"],
        "balanced_accuracy": report["balanced_accuracy"],
        "macro_f1": report["macro_f1"],
        "high_risk_recall": report["high_risk_recall"],
        "per_class_recall": {k: v["recall"] for k, v in report["per_class"].items()},
    }
