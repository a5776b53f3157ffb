"""What back-propagates under gradient checkpointing, on the real tiny model built the way
training builds it (`hazard.model.training.setup.build_model`) and run through the training step
(`hazard.model.training.step.micro_batch_loss`):

- stage 1 (text-only LoRA): the vision tower and merger run forward only: no vision block
  output or merger output carries a grad_fn, no backward hook on a vision block fires, and no
  vision block is recomputed;
- stage 2 (vision attention and merger LoRA): the vision LoRA weights get non-zero gradients
  and the vision blocks are checkpointed (recomputed in backward);
- the language model is checkpointed in both (each decoder layer runs again in backward).
"""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from hazard.config.train import TrainConfig
from hazard.core.tasks import CORRIDOR_RISK_PROMPT
from hazard.model.training.setup import build_model
from hazard.model.training.step import micro_batch_loss
from hazard.model.vlm import encode


def _config(**lora) -> TrainConfig:
    return TrainConfig.model_validate(
        {
            "stage": "base",
            "data_dir": "d",
            "output_dir": "o",
            "run_name": "r",
            "model": {"name": "m", "path": "tiny", "gradient_checkpointing": True},
            "lora": {"r": 4, "alpha": 8, **lora},
        }
    )


def _encoded(processor):
    """Two samples with different images, so that the vision tower's output matters."""
    out = []
    for colour, label in (((200, 30, 30), "high_risk"), ((30, 30, 200), "no_risk")):
        buf = io.BytesIO()
        Image.new("RGB", (112, 112), colour).save(buf, "PNG")
        image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        out.append(encode(processor, [image], CORRIDOR_RISK_PROMPT, label, 4096))
    return out, ["high_risk", "no_risk"]


class _Probe:
    """Counts a module's backward hook calls and keeps its outputs' grad_fn; counts the calls
    into its attention (a submodule: a recompute enters it again whether transformers
    checkpoints the layer's `__call__` or its `forward`, and before torch's early stop)."""

    def __init__(self, module):
        self.forward_calls = 0
        self.backward_calls = 0
        self.grad_fns = []
        module.register_forward_hook(self._forward)
        module.register_full_backward_hook(self._backward)
        attention = getattr(module, "attn", None) or getattr(module, "self_attn", None)
        if attention is not None:  # the merger has none
            attention.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.forward_calls += 1

    def _forward(self, module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        self.grad_fns.append(out.grad_fn)
        if out.requires_grad:
            out.register_hook(self._tensor_grad)

    def _tensor_grad(self, grad):
        self.backward_calls += 1

    def _backward(self, module, grad_input, grad_output):
        self.backward_calls += 1


def _step(tiny_model_path, cfg: TrainConfig):
    """One training micro-batch forward and backward; (model, probes by name)."""
    model, processor = build_model(cfg, str(tiny_model_path))
    for name, p in model.named_parameters():  # non-zero B so that gradients reach A too
        if "lora_B" in name:
            torch.nn.init.constant_(p, 0.01)
    model.train()
    base = model.get_base_model().model
    probes = {f"visual.blocks.{i}": _Probe(b) for i, b in enumerate(base.visual.blocks)}
    probes["visual.merger"] = _Probe(base.visual.merger)
    for i, layer in enumerate(base.language_model.layers):
        probes[f"language_model.layers.{i}"] = _Probe(layer)
    encoded, answers = _encoded(processor)
    loss = micro_batch_loss(model, processor, encoded, answers, {})
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    return model, probes


def test_stage1_runs_the_frozen_vision_tower_forward_only(tiny_model_path):
    model, probes = _step(tiny_model_path, _config())
    vision = {k: v for k, v in probes.items() if k.startswith("visual.")}
    assert len(vision) >= 3  # the tiny model's 2 blocks and the merger
    for name, probe in vision.items():
        assert probe.forward_calls <= 1, f"{name}: recomputed in backward"
        assert probe.grad_fns == [None], f"{name}: its output is part of the autograd graph"
        assert probe.backward_calls == 0, f"{name}: backward reached it"
    assert not any(p.requires_grad for p in model.get_base_model().model.visual.parameters())
    for name, probe in probes.items():
        if name.startswith("language_model."):
            assert probe.forward_calls == 2, f"{name}: not checkpointed"  # forward + recompute
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert all(g.abs().sum() > 0 for g in grads)


def test_stage2_vision_lora_trains_under_checkpointing(tiny_model_path):
    model, probes = _step(tiny_model_path, _config(vision_attention=True, vision_merger=True))
    vision_lora = {
        n: p.grad for n, p in model.named_parameters() if p.requires_grad and ".visual." in n
    }
    names = " ".join(vision_lora)
    assert "attn.qkv.lora_A" in names and "attn.proj.lora_B" in names
    assert "merger.mlp.0.lora_A" in names and "merger.mlp.2.lora_B" in names
    for name, grad in vision_lora.items():
        assert grad is not None and grad.abs().sum() > 0, name
    for name, probe in probes.items():
        if name.startswith(("visual.blocks.", "language_model.")):
            assert probe.forward_calls == 2, f"{name}: not checkpointed"
        if name.startswith("visual."):
            assert probe.backward_calls > 0, f"{name}: backward did not reach it"


def test_lora_refuses_a_model_already_checkpointed(tiny_model_path):
    """Enabled before PEFT wraps the model, checkpointing leaves input hooks behind that make
    the frozen vision tower take part in backward."""
    from hazard.config.train import LoraSpec
    from hazard.model.finetune import apply_lora
    from hazard.model.vlm import load_model

    model = load_model(tiny_model_path)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    with pytest.raises(ValueError, match="gradient_checkpointing=True"):
        apply_lora(model, LoraSpec(r=4))
