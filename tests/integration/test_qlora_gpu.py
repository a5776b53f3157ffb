"""QLoRA on CUDA: the tiny Qwen2.5-VL loaded in 4 bits (`lora.quantize: 4bit`) through
`build_engine`, a few DeepSpeed bf16 steps on one micro-batch, the checkpoint saved as training
saves it, and its adapter merged into the full-precision base as the bundle export does.
`gpu` marker: skipped on CPU machines (the config checks run on CPU:
tests/unit/test_qlora_config.py).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hazard.config import load_config
from hazard.config.train import TrainConfig
from hazard.core.labels import RISK_LABELS
from hazard.demo.local_ray import free_port
from hazard.demo.synthetic import render_scene
from tests.helpers.train import ADAPTER, REPO, STAGE1

pytestmark = pytest.mark.gpu

STEPS = 10
QLORA = [
    "lora.quantize=4bit",
    "model.dtype=bfloat16",
    "deepspeed.bf16=true",
    "scaling.use_gpu=true",
]


def train_steps(model_path: str, overrides: list[str], steps: int, out_dir) -> dict:
    """Build the stage-1 engine with `overrides`, take `steps` optimizer steps on one
    micro-batch of 5 scenes (one per label), save a checkpoint into `out_dir`; the losses,
    the engine's 4-bit layer count and its trainable parameters. The caller sets up a
    1-process group (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)."""
    import torch.distributed as dist

    from hazard.core.tasks import get_task
    from hazard.model.training.checkpoint import save_checkpoint
    from hazard.model.training.setup import build_engine
    from hazard.model.training.state import TrainState
    from hazard.model.training.step import encode_batch, micro_batch_loss

    cfg = load_config(
        REPO / STAGE1,
        TrainConfig,
        [
            "data_dir=unused",
            "output_dir=unused",
            "optim.batch_size=5",
            "optim.warmup_steps=0",
            f"optim.max_steps={steps}",
            "scaling.num_workers=1",
            *overrides,
        ],
    )
    engine, processor, n_trainable = build_engine(cfg, model_path)
    try:
        rng = np.random.default_rng(0)
        pngs = []
        for label in RISK_LABELS:
            buf = io.BytesIO()
            render_scene(label, rng)[0].save(buf, format="PNG")
            pngs.append([buf.getvalue()])
        batch = {"id": list(RISK_LABELS), "images": pngs, "answer": list(RISK_LABELS)}
        encoded, answers, skipped = encode_batch(
            processor, batch, get_task(cfg.optim.task).prompt, cfg.optim.max_length
        )
        assert not skipped
        engine.train()
        losses = []
        for _ in range(steps):
            loss = micro_batch_loss(engine, processor, encoded, answers, {})
            engine.backward(loss)
            engine.step()
            losses.append(float(loss.detach().float()))
        save_checkpoint(engine, out_dir, 0, "qlora-test", TrainState(step=steps))
        four_bit = sum(type(m).__name__ == "Linear4bit" for m in engine.module.modules())
        return {"losses": losses, "four_bit_layers": four_bit, "n_trainable": n_trainable}
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.fixture
def one_process_group(monkeypatch):
    for key, value in {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1",
    }.items():
        monkeypatch.setenv(key, value)


def test_qlora_trains_over_a_4bit_base_and_saves_a_mergeable_safetensors_adapter(
    tiny_model_path, one_process_group, tmp_path, record_property
):
    from hazard.model.training.export import merge_adapter

    out = train_steps(str(tiny_model_path), QLORA, STEPS, tmp_path / "ckpt")
    losses = out["losses"]
    record_property(
        "figure",
        f"QLoRA 4-bit: loss {losses[0]:.4f} -> {losses[-1]:.4f} in {STEPS} steps, "
        f"{out['four_bit_layers']} Linear4bit layers, {out['n_trainable']} trainable",
    )
    assert out["four_bit_layers"] > 0  # the base really is 4-bit
    assert all(np.isfinite(losses))
    # one repeated micro-batch: the adapters overfit it, so the loss falls well below the start
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses

    adapter = tmp_path / "ckpt" / ADAPTER
    assert adapter.is_file()
    assert not list(adapter.parent.glob("*.bin"))
    tensors = load_file(str(adapter))
    assert tensors and all("lora_" in name for name in tensors)
    assert all(torch.isfinite(t.float()).all() for t in tensors.values())
    assert any(float(t.float().abs().max()) > 0 for n, t in tensors.items() if "lora_B" in n)

    # the export merges it into the full-precision base (no 4-bit layer survives)
    merged = merge_adapter(str(tiny_model_path), adapter.parent, "bfloat16")
    assert not any(type(m).__name__ == "Linear4bit" for m in merged.modules())
    assert next(merged.parameters()).dtype == torch.bfloat16
