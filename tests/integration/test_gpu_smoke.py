"""GPU smoke checks (`make gpu-smoke`): the transformers engine on CUDA and one DeepSpeed bf16
training step on CUDA, on the tiny Qwen2.5-VL. `gpu` marker: skipped on CPU machines.

Each test records its figure (`record_property("figure", ...)`), which scripts/gpu_smoke.sh
prints on the check's PASS/FAIL line.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from hazard.config import load_config
from hazard.config.train import TrainConfig
from hazard.core.labels import RISK_LABELS
from hazard.demo.local_ray import free_port
from hazard.demo.synthetic import render_scene
from tests.helpers.serve import make_bundle
from tests.helpers.train import REPO, STAGE1

pytestmark = pytest.mark.gpu

BF16_TOLERANCE = 0.05
"""bf16 on CUDA against the fp32 CPU reference, per label probability. bf16 keeps 8 significant
bits: every weight and activation is rounded by up to 2^-9 relative, and the error grows through
the 2 vision blocks, 2 decoder layers and the LM head; on this model and these 10 scenes, bf16
against fp32 on the CPU differed by at most 0.0106 (2026-12-07). 0.05 is ~5x that: room for CUDA
kernels' rounding, far below what a wrong device, dtype or input moves (tenths)."""


def _scenes(n_per_label: int = 2) -> tuple[list, list[str]]:
    rng = np.random.default_rng(0)
    labels = [label for label in RISK_LABELS for _ in range(n_per_label)]
    return [render_scene(label, rng)[0] for label in labels], labels


def test_transformers_engine_runs_on_cuda_in_bf16(tmp_path, tiny_model_path, record_property):
    from hazard.model.engines import TransformersEngine
    from hazard.model.vlm import label_probabilities, load_model, load_processor

    bundle = str(make_bundle(tiny_model_path, tmp_path / "bundle", "tiny", "0", "base"))
    engine = TransformersEngine(bundle, "bfloat16")
    param = next(engine.model.parameters())
    assert (param.device.type, param.dtype) == ("cuda", torch.bfloat16)
    images, _ = _scenes()
    got = engine.score([[img] for img in images])

    # the reference: the same bundle in float32 on the CPU, through hazard.model.vlm directly
    model = load_model(engine.path, "float32").eval()
    processor = load_processor(engine.path, engine.meta.max_pixels, engine.meta.min_pixels)
    ref = label_probabilities(
        model, processor, [[img] for img in images], engine.prompt, engine.labels
    )
    dp = float(np.abs(got - ref.numpy()).max())
    record_property(
        "figure",
        f"transformers cuda bf16 vs cpu fp32 max |dp| {dp:.4f} over {len(images)} images "
        f"(tolerance {BF16_TOLERANCE})",
    )
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, ref.numpy(), atol=BF16_TOLERANCE, rtol=0)


def one_deepspeed_step(model_path: str, overrides: list[str]) -> dict:
    """Build the stage-1 engine (`build_engine`, DeepSpeed ZeRO-2, LoRA) on the tiny model in a
    1-process group, take one optimizer step on one micro-batch of 5 scenes, and report the
    loss, the learning rate applied, the LoRA weights' largest change and the device.
    The caller sets RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT (deepspeed.initialize reads them)."""
    import torch.distributed as dist

    from hazard.core.tasks import get_task
    from hazard.model.training.setup import build_engine
    from hazard.model.training.step import encode_batch, micro_batch_loss

    cfg = load_config(
        REPO / STAGE1,
        TrainConfig,
        [
            "data_dir=unused",
            "output_dir=unused",
            "optim.batch_size=5",
            "optim.warmup_steps=0",  # the first step applies the full rate
            "scaling.num_workers=1",
            *overrides,
        ],
    )
    engine, processor, n_trainable = build_engine(cfg, model_path)
    try:
        lora = {n: p for n, p in engine.module.named_parameters() if p.requires_grad}
        before = {n: p.detach().float().cpu().clone() for n, p in lora.items()}
        images, labels = _scenes(1)
        pngs = []
        for img in images:
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            pngs.append([buf.getvalue()])
        batch = {"id": labels, "images": pngs, "answer": labels}
        task = get_task(cfg.optim.task)
        encoded, answers, skipped = encode_batch(
            processor, batch, task.prompt, cfg.optim.max_length
        )
        assert not skipped
        engine.train()
        loss = micro_batch_loss(engine, processor, encoded, answers, {})
        lr = float(engine.get_lr()[0])
        engine.backward(loss)
        engine.step()
        delta = max(
            float((p.detach().float().cpu() - before[n]).abs().max()) for n, p in lora.items()
        )
        return {
            "loss": float(loss.detach().float()),
            "lr": lr,
            "max_lora_change": delta,
            "lora_tensors": len(lora),
            "n_trainable": n_trainable,
            "device": str(engine.device),
            "dtype": str(next(iter(lora.values())).dtype),
        }
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.fixture
def one_process_group(monkeypatch):
    """The environment deepspeed.initialize reads to set up a 1-process group."""
    for key, value in {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1",
    }.items():
        monkeypatch.setenv(key, value)


def test_one_deepspeed_bf16_step_on_cuda(tiny_model_path, one_process_group, record_property):
    out = one_deepspeed_step(str(tiny_model_path), ["model.dtype=bfloat16", "deepspeed.bf16=true"])
    record_property(
        "figure",
        f"deepspeed bf16 step on {out['device']}: loss {out['loss']:.4f}, LoRA max change "
        f"{out['max_lora_change']:.2e} at lr {out['lr']:.1e} ({out['lora_tensors']} tensors)",
    )
    assert out["device"].startswith("cuda")
    assert out["dtype"] == "torch.bfloat16"
    assert np.isfinite(out["loss"]) and out["loss"] > 0
    # AdamW's first step moves each weight by lr * g / (|g| + eps) ~ lr where the gradient is not
    # ~0: the largest change is the rate itself (bf16 rounding of the weight aside).
    assert 0.5 * out["lr"] <= out["max_lora_change"] <= 1.5 * out["lr"]
