"""LoRA fine-tuning pieces: adapters, DeepSpeed config, weighted loss.

Imports torch, and peft inside `apply_lora`; the DeepSpeed config is a plain dict.

Stage 2's "high-risk feature amplifier" and "attention reweighting" are expressed as LoRA on the
vision tower's attention and the merger plus a class-weighted loss, so that after merging the
checkpoint is a standard Qwen2.5-VL that vLLM can serve.
"""

from __future__ import annotations

import torch

from hazard.config.train import DeepSpeedSpec, LoraSpec, OptimSpec
from hazard.vlm import IGNORE_INDEX

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


def apply_lora(model, spec: LoraSpec, seed: int = 0):
    """Wrap `model` with PEFT LoRA adapters; only adapter weights stay trainable."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=lora_target_regex(spec),
        bias="none",
    )
    return get_peft_model(model, config)


def deepspeed_config(optim: OptimSpec, ds: DeepSpeedSpec) -> dict:
    """DeepSpeed config for one optimizer step per micro-batch on every worker."""
    return {
        "train_micro_batch_size_per_gpu": optim.batch_size,
        "gradient_accumulation_steps": 1,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": optim.lr, "weight_decay": optim.weight_decay, "torch_adam": True},
        },
        "scheduler": {
            "type": "WarmupDecayLR",
            "params": {
                "warmup_min_lr": 0.0,
                "warmup_max_lr": optim.lr,
                "warmup_num_steps": min(optim.warmup_steps, optim.max_steps - 1),
                "total_num_steps": optim.max_steps,
            },
        },
        "zero_optimization": {"stage": ds.zero_stage},
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


def weighted_answer_loss(
    logits: torch.Tensor, labels: torch.Tensor, sample_weights: torch.Tensor
) -> torch.Tensor:
    """Token cross-entropy on answer tokens, each sample's tokens weighted by its class weight.

    logits [B, T, V], labels [B, T] (IGNORE_INDEX on prompt, image and padding tokens).
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    token_loss = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shift_labels.shape)
    mask = (shift_labels != IGNORE_INDEX).float()
    w = sample_weights.float().unsqueeze(1) * mask
    return (token_loss * w).sum() / w.sum().clamp(min=1e-8)
