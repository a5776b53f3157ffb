"""A training stage through real Ray Train: DeepSpeed ZeRO-2 + LoRA on 2 CPU workers.

Small sizes: a few steps on a small prepared folder. Checks evaluation during training, the
checkpoints Ray keeps, the bundle built from the best checkpoint (a merged standard
Qwen2.5-VL whose metrics are its own), the report, resuming a run by its name, refusing a
corrupt checkpoint, and early stopping.

Each test passes alone and in any order: the stage-1 run they share is a module fixture, and
the tests that continue it (resume, corrupt checkpoint) work on a copy of its folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hazard.config.train import TrainConfig
from hazard.core.labels import RISK_LABELS
from hazard.core.metrics import classification_report
from hazard.infra.bundle import open_bundle
from hazard.infra.storage import sha256_file
from hazard.model.vlm import load_model, load_processor
from ray_jobs.train import run
from tests.helpers.train import (
    ADAPTER,
    STAGE1,
    kept_checkpoints,
    prepare_small,
    score_split,
    stage_config,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("train")
    prepare_small(root)
    return root


STAGE1_STEPS = ["eval.every_steps=2", "checkpoint.every_steps=1"]


@pytest.fixture(scope="module")
def stage1(prepared) -> dict:
    """The stage-1 run the tests share (4 steps, evaluated at 2 and 4, 2 checkpoints kept),
    in `prepared/stage1_base`; its metrics. Tests read it and never write into it."""
    return run(_cfg(prepared, STAGE1, 4, [*STAGE1_STEPS, "checkpoint.keep=2"]))


def _copy_of_stage1(prepared, stage1: dict, out: str) -> Path:
    """A copy of the shared stage-1 run's folder at `prepared/out`, for a test to continue:
    the same run name, so Ray Train resumes it from the copied checkpoints."""
    target = prepared / out
    assert not target.exists(), f"{target} is already taken"
    shutil.copytree(prepared / "stage1_base", target)
    return target


def _cfg(root, stage_file: str, steps: int, overrides=(), out: str | None = None) -> TrainConfig:
    out_dir = root / (out or stage_file.split("/")[-1][:-5])
    return stage_config(root / "data", out_dir, steps, overrides, stage_file)


def _checkpoints(metrics: dict) -> dict[int, Path]:
    return kept_checkpoints(metrics["checkpoint_dir"])


def _first_best(evals: list[dict], metric: str) -> dict:
    """The earliest evaluation with the highest value (the rule, computed independently)."""
    top = max(e[metric] for e in evals)
    return next(e for e in evals if e[metric] == top)


@pytest.mark.image_lock
def test_stage1_evaluates_keeps_the_best_checkpoint_and_bundles_it(
    prepared, stage1, tiny_model_path
):
    metrics = stage1
    history = metrics["history"]
    assert [s["step"] for s in history["steps"]] == [1, 2, 3, 4]
    assert [e["step"] for e in history["evals"]] == [2, 4]
    assert all(e["n"] == 5 for e in history["evals"])  # every val row scored once over 2 ranks
    best = _first_best(history["evals"], "macro_f1")
    assert metrics["best_step"] == best["step"]
    # keep=2 by score: the two evaluated checkpoints outrank the unevaluated steps 1 and 3
    assert sorted(_checkpoints(metrics)) == [2, 4]

    opened = open_bundle(metrics["model_dir"])
    meta = opened.meta
    assert meta.labels == list(RISK_LABELS) and meta.stage == "base"
    best_ckpt = _checkpoints(metrics)[best["step"]]
    assert meta.adapter_sha256 == sha256_file(best_ckpt / ADAPTER)
    # the bundle's metrics are those of the merged model it holds, scored again here
    model, processor = load_model(opened.path).eval(), load_processor(opened.path)
    probs, truth = score_split(
        model, processor, str(prepared / "data/val"), meta.prompt, RISK_LABELS, 16
    )
    preds = [RISK_LABELS[max(range(5), key=row.__getitem__)] for row in probs]
    report = classification_report(truth, preds)
    assert meta.metrics["val_macro_f1"] == pytest.approx(report["macro_f1"], abs=1e-9)
    assert meta.metrics["val_accuracy"] == pytest.approx(report["accuracy"], abs=1e-9)
    assert np.allclose(meta.val_predictions.probabilities, probs, atol=1e-6)
    # a plain Qwen2.5-VL (no PEFT needed), changed by LoRA
    config = json.loads((opened.path / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_vl"
    name = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not load_model(tiny_model_path).state_dict()[name].equal(model.state_dict()[name])
    # the report
    out = prepared / "stage1_base"
    written = json.loads((out / "metrics.json").read_text())
    assert written["best_step"] == best["step"] and written["history"] == history
    for rel in written["plots"].values():
        with Image.open(out / rel) as png:
            assert png.format == "PNG" and png.width > 300


def test_same_run_name_resumes_and_continues_the_step_count(prepared, stage1):
    # the shared run, 2 more steps: Ray Train V2 resumes from its step-4 checkpoint
    _copy_of_stage1(prepared, stage1, "resumed")
    cfg = _cfg(prepared, STAGE1, 6, STAGE1_STEPS, out="resumed")
    metrics = run(cfg)
    assert metrics["resumed_from"] == [4]
    assert [s["step"] for s in metrics["history"]["steps"]] == [1, 2, 3, 4, 5, 6]
    assert [e["step"] for e in metrics["history"]["evals"]] == [2, 4, 6]


def test_a_corrupt_checkpoint_is_refused_naming_the_file(prepared, stage1):
    copy = _copy_of_stage1(prepared, stage1, "corrupt")
    latest = max(_checkpoints({"checkpoint_dir": copy / "ray_results/stage1-base-tiny"}).items())[1]
    target = latest / ADAPTER
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(Exception) as err:
        run(_cfg(prepared, STAGE1, 8, ["eval.every_steps=2"], out="corrupt"))
    assert str(target) in str(err.value)
    assert "sha256 does not match" in str(err.value)


def test_early_stopping_under_zero3_bundles_the_earlier_best_checkpoint(prepared):
    """Early stop and best-checkpoint selection, run under ZeRO-3: each rank then holds a slice
    of the LoRA weights, and the checkpoint's adapter is gathered from both. Scored again after
    the fp32 merge, the bundle must give exactly the figures the engine measured at the best
    step: an adapter saved from one rank's slices would not."""
    cfg = _cfg(
        prepared,
        STAGE1,
        12,
        [
            "eval.every_steps=1",
            "eval.patience=1",
            "checkpoint.keep=1",
            "optim.lr=1e-2",
            "deepspeed.zero_stage=3",
        ],
        out="early_stop",
    )
    metrics = run(cfg)
    evals = metrics["history"]["evals"]
    best = _first_best(evals, "macro_f1")
    assert metrics["stopped_early"] is True
    # stopped at the first evaluation after the best that did not beat it
    assert metrics["step"] == best["step"] + 1 < 12
    assert metrics["best_step"] == best["step"]
    kept = _checkpoints(metrics)
    assert sorted(kept) == [best["step"], metrics["step"]]  # the best and the latest
    meta = open_bundle(metrics["model_dir"]).meta
    assert meta.config["deepspeed"]["zero_stage"] == 3
    assert meta.adapter_sha256 == sha256_file(kept[best["step"]] / ADAPTER)
    assert meta.adapter_sha256 != sha256_file(kept[metrics["step"]] / ADAPTER)
    for key in ("accuracy", "macro_f1", "balanced_accuracy"):
        assert meta.metrics[f"val_{key}"] == pytest.approx(best[key], abs=1e-9), key


def test_specialist_uses_enrichment_and_weights_and_differs_from_the_base(prepared, stage1):
    cfg = _cfg(prepared, "configs/tiny/stage2_specialist.yaml", 2, ["scaling.num_workers=1"])
    metrics = run(cfg)
    assert metrics["step"] == 2
    assert metrics["train_rows"]["high_risk"] == 3 * metrics["train_rows"]["no_risk"]
    assert metrics["loss_weights"]["high_risk"] == 2.0
    # a different model from stage 1's (the shared run, on the same data): its adapter also
    # covers the vision tower, and it scores the same validation rows differently
    spec = open_bundle(metrics["model_dir"])
    base = open_bundle(stage1["model_dir"])
    targets = json.loads((spec.path / "adapter/adapter_config.json").read_text())
    base_targets = json.loads((base.path / "adapter/adapter_config.json").read_text())
    assert "visual" in targets["target_modules"] and "visual" not in base_targets["target_modules"]
    assert spec.meta.val_predictions.labels == base.meta.val_predictions.labels
    diff = np.abs(
        np.array(spec.meta.val_predictions.probabilities)
        - np.array(base.meta.val_predictions.probabilities)
    )
    assert diff.max() > 0.01


def test_prefetched_inputs_train_exactly_like_inputs_prepared_on_the_step_thread(prepared):
    """The loader process (optim.prefetch_batches=2) against preparing each micro-batch on
    the step's thread (0): the same micro-batches in the same order give the same losses,
    read once per optimizer step, and each step records its input waiting and preparing."""
    import ray.data

    options = ray.data.DataContext.get_current().execution_options
    preserve = options.preserve_order
    options.preserve_order = True  # Ray Data's block order, otherwise free, the same both times
    losses = {}
    try:
        for depth in (0, 2):
            losses[depth] = _prefetch_run_losses(prepared, depth)
    finally:
        options.preserve_order = preserve
    assert losses[2] == pytest.approx(losses[0], rel=1e-6)
    assert len(set(losses[0])) == 3  # three different micro-batch pairs, not one repeated


def _prefetch_run_losses(prepared, depth: int) -> list[float]:
    """3 steps of 2 micro-batches on one worker with `optim.prefetch_batches=depth`."""
    cfg = _cfg(
        prepared,
        STAGE1,
        3,
        [
            "scaling.num_workers=1",
            "optim.grad_accum_steps=2",
            "eval.every_steps=0",
            f"optim.prefetch_batches={depth}",
        ],
        out=f"prefetch-{depth}",
    )
    steps = run(cfg)["history"]["steps"]
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert all(s["prepare_s"] > 0 and s["input_wait_s"] >= 0 for s in steps)
    if depth == 0:  # prepared on the step's thread: the step waits for all of it
        assert all(s["input_wait_s"] >= s["prepare_s"] for s in steps)
    return [s["loss"] for s in steps]
