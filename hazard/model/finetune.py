"""LoRA fine-tuning pieces: adapters, DeepSpeed config, weighted loss.

Imports torch, and peft inside `apply_lora`; the DeepSpeed config is a plain dict.

Stage 2's "high-risk feature amplifier" and "attention reweighting" are expressed as LoRA on the
vision tower's attention and the merger plus a class-weighted loss, so that after merging the
checkpoint is a standard Qwen2.5-VL that vLLM can serve.
"""

from __future__ import annotations

import math

import torch

from hazard.config.train import DeepSpeedSpec, LoraSpec, OptimSpec
from hazard.model.vlm import IGNORE_INDEX

VISION_ATTENTION = r"model\.visual\.blocks\.\d+\.attn\.(qkv|proj)"
VISION_MERGER = r"model\.visual\.merger\.mlp\.(0|2)"


def lora_target_regex(spec: LoraSpec) -> str:
    """A full-match regex over module names selecting every adapted linear layer."""
    parts = []
    if spec.language_targets:
        names = "|".join(spec.language_targets)
        parts.append(rf"model\.language_model\.layers\.\d+\.(self_attn|mlp)\.({names})")
    if spec.vision_attention:
        parts.append(VISION_ATTENTION)
    if spec.vision_merger:
        parts.append(VISION_MERGER)
    if not parts:
        raise ValueError("LoRA spec selects no module: set language_targets or a vision option")
    return "(" + "|".join(parts) + ")"


def _checkpointing(model) -> bool:
    return any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def apply_lora(model, spec: LoraSpec, seed: int = 0, gradient_checkpointing: bool = False):
    """Wrap `model` with PEFT LoRA adapters; only adapter weights stay trainable.

    `gradient_checkpointing` turns on non-reentrant activation checkpointing (decoder layers
    and vision blocks) after the wrap, and removes the forward hooks that transformers' enable
    adds to every input embedding, the vision patch embedding included: non-reentrant
    checkpointing needs no input that requires grad, and with them a frozen vision tower
    (text-only LoRA) would be recomputed and back-propagated through for nothing. Frozen
    towers then run forward only; adapted ones (stage 2) still get gradients."""
    from peft import LoraConfig, get_peft_model

    if _checkpointing(model):
        raise ValueError(
            "the model already has gradient checkpointing on: enable it through "
            "apply_lora(..., gradient_checkpointing=True), after the LoRA wrap, or PEFT hooks "
            "every input embedding and the frozen vision tower takes part in backward"
        )
    torch.manual_seed(seed)
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=lora_target_regex(spec),
        bias="none",
    )
    model = get_peft_model(model, config)
    if gradient_checkpointing:
        base = model.get_base_model()
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.disable_input_require_grads()
    return model


def lr_factor(step: int, optim: OptimSpec) -> float:
    """The share of `optim.lr` used by optimizer step `step` (0-based).

    Linear warm-up that starts above zero ((step+1)/(warmup+1): no step is wasted at lr 0),
    then cosine to `min_lr_ratio` or linear towards 0 over the remaining steps."""
    warmup = min(optim.warmup_steps, optim.max_steps - 1)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, optim.max_steps - warmup))
    if optim.schedule == "linear":
        return 1.0 - progress
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_scheduler(optim: OptimSpec):
    """A callable for `deepspeed.initialize(lr_scheduler=...)`: optimizer -> LambdaLR following
    `lr_factor`; DeepSpeed steps it once per optimizer step and checkpoints its state."""

    def build(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: lr_factor(k, optim))

    return build


def deepspeed_config(optim: OptimSpec, ds: DeepSpeedSpec) -> dict:
    """DeepSpeed config: micro-batch and accumulation, AdamW, ZeRO stage with optional CPU
    offload, bf16. The learning-rate schedule is `lr_scheduler`, passed beside it."""
    zero: dict = {"stage": ds.zero_stage}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": optim.batch_size,
        "gradient_accumulation_steps": optim.grad_accum_steps,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": optim.lr, "weight_decay": optim.weight_decay, "torch_adam": True},
        },
        "zero_optimization": zero,
        "bf16": {"enabled": ds.bf16},
        "gradient_clipping": ds.gradient_clipping,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def class_weight_table(
    weights: dict[str, float] | str | None, label_counts: dict[str, int]
) -> dict[str, float]:
    """Per-label loss weights: explicit, 'balanced' (inverse frequency, mean 1) or all 1."""
    if weights is None:
        return {label: 1.0 for label in label_counts}
    if weights == "balanced":
        total = sum(label_counts.values())
        present = {k: v for k, v in label_counts.items() if v > 0}
        return {k: total / (len(present) * v) for k, v in present.items()}
    return {label: float(weights.get(label, 1.0)) for label in label_counts}


def answer_logit_mask(labels: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: the positions whose next token is an answer token (labels not ignored).

    Given to `hazard.model.vlm.logits_at`, only these hidden states are projected onto the
    vocabulary: a few positions per sample instead of every prompt and image token."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return mask


def weighted_answer_loss(
    answer_logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    sample_weights: torch.Tensor,
) -> torch.Tensor:
    """Cross-entropy over the answer tokens, each sample's tokens weighted by its class weight.

    answer_logits [N, V] are the logits at the N True positions of `mask` (row-major, as
    `hazard.model.vlm.logits_at` returns them); labels [B, T] with IGNORE_INDEX on
    prompt, image and padding tokens; sample_weights [B].
    """
    next_tokens = torch.zeros_like(labels)
    next_tokens[:, :-1] = labels[:, 1:]
    targets = next_tokens[mask]
    rows = torch.nonzero(mask, as_tuple=True)[0]
    token_loss = torch.nn.functional.cross_entropy(answer_logits.float(), targets, reduction="none")
    w = sample_weights.float()[rows]
    return (token_loss * w).sum() / w.sum().clamp(min=1e-8)
