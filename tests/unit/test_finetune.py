"""LoRA targeting, the DeepSpeed config and the class-weighted answer loss."""

from __future__ import annotations

import math
import re

import pytest
import torch

from hazard.config.train import DeepSpeedSpec, LoraSpec, OptimSpec
from hazard.model.finetune import (
    answer_logit_mask,
    apply_lora,
    class_weight_table,
    deepspeed_config,
    lora_target_regex,
    lr_factor,
    lr_scheduler,
    weighted_answer_loss,
)
from hazard.model.vlm import IGNORE_INDEX, load_model


def _linear_names(model) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def test_lora_regex_selects_language_vision_and_merger(tiny_model_path):
    names = _linear_names(load_model(tiny_model_path))
    lang = re.compile(lora_target_regex(LoraSpec()))
    assert sorted(n for n in names if lang.fullmatch(n)) == sorted(
        f"model.language_model.layers.{i}.self_attn.{p}"
        for i in range(2)
        for p in ("q_proj", "k_proj", "v_proj", "o_proj")
    )
    full = re.compile(lora_target_regex(LoraSpec(vision_attention=True, vision_merger=True)))
    picked = {n for n in names if full.fullmatch(n)}
    assert {
        "model.visual.blocks.0.attn.qkv",
        "model.visual.blocks.1.attn.proj",
        "model.visual.merger.mlp.0",
        "model.visual.merger.mlp.2",
    } <= picked
    assert not any("lm_head" in n or "mlp.gate_proj" in n for n in picked)


def test_lora_spec_selecting_nothing_is_an_error():
    with pytest.raises(ValueError, match="selects no module"):
        lora_target_regex(LoraSpec(language_targets=[]))


def test_apply_lora_trains_only_adapters_and_merges_to_a_standard_model(tiny_model_path):
    model = apply_lora(load_model(tiny_model_path), LoraSpec(r=4, vision_merger=True))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    merged = model.merge_and_unload()
    assert type(merged).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert not any("lora_" in n for n, _ in merged.named_parameters())


def test_deepspeed_config_matches_the_spec():
    cfg = deepspeed_config(OptimSpec(batch_size=4, lr=1e-3, max_steps=50), DeepSpeedSpec())
    assert cfg["train_micro_batch_size_per_gpu"] == 4
    assert cfg["zero_optimization"] == {"stage": 2}
    assert cfg["optimizer"]["params"]["lr"] == 1e-3
    assert cfg["gradient_accumulation_steps"] == 1
    assert "scheduler" not in cfg  # the schedule is lr_scheduler(), passed beside it


def test_deepspeed_config_accumulation_and_zero3_offload():
    optim = OptimSpec(batch_size=2, grad_accum_steps=8, max_steps=5)
    ds = DeepSpeedSpec(zero_stage=3, offload_optimizer=True, offload_params=True)
    cfg = deepspeed_config(optim, ds)
    assert cfg["gradient_accumulation_steps"] == 8
    assert cfg["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert cfg["zero_optimization"]["offload_param"]["device"] == "cpu"


def test_lr_schedule_warms_up_from_above_zero_then_decays():
    """Hand values: warm-up 3 of 8 steps, lr 1: steps 0-2 at 1/4, 2/4, 3/4; then cosine over
    5 steps to the 0.2 floor (progress k/5), or linear towards 0."""
    cos = OptimSpec(lr=1.0, max_steps=8, warmup_steps=3, min_lr_ratio=0.2)
    hand = [0.25, 0.5, 0.75] + [0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * k / 5)) for k in range(5)]
    assert [lr_factor(k, cos) for k in range(8)] == pytest.approx(hand)
    assert lr_factor(3, cos) == 1.0 and lr_factor(7, cos) > 0.2
    lin = OptimSpec(lr=1.0, max_steps=8, warmup_steps=3, schedule="linear")
    assert [lr_factor(k, lin) for k in range(3, 8)] == pytest.approx([1, 0.8, 0.6, 0.4, 0.2])
    # warm-up never reaches past the last step
    short = OptimSpec(max_steps=2, warmup_steps=10)
    assert [lr_factor(k, short) for k in range(2)] == pytest.approx([0.5, 1.0])


def test_lr_scheduler_drives_torch_optimizer_steps():
    optim = OptimSpec(lr=0.1, max_steps=6, warmup_steps=2)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=optim.lr)
    sched = lr_scheduler(optim)(opt)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.1 * lr_factor(k, optim) for k in range(6)])
    assert min(seen) > 0


def test_class_weights_balanced_is_inverse_frequency_with_mean_one():
    w = class_weight_table("balanced", {"high_risk": 10, "no_risk": 30})
    assert w == pytest.approx({"high_risk": 2.0, "no_risk": 2 / 3})
    assert class_weight_table(None, {"a": 3}) == {"a": 1.0}
    assert class_weight_table({"high_risk": 4.0}, {"high_risk": 1, "no_risk": 1}) == {
        "high_risk": 4.0,
        "no_risk": 1.0,
    }


def test_weighted_loss_equals_cross_entropy_with_unit_weights_and_shifts_with_weights():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor(
        [
            [IGNORE_INDEX, IGNORE_INDEX, 3, 4, IGNORE_INDEX],
            [IGNORE_INDEX, 1, 2, IGNORE_INDEX, IGNORE_INDEX],
        ]
    )
    plain = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )
    mask = answer_logit_mask(labels)
    # positions 1, 2 of row 0 predict tokens 3, 4; position 0, 1 of row 1 predict 1, 2
    assert mask.nonzero().tolist() == [[0, 1], [0, 2], [1, 0], [1, 1]]
    loss = weighted_answer_loss(logits[mask], labels, mask, torch.ones(2))
    assert loss.item() == pytest.approx(plain.item(), rel=1e-6)
    only_first = weighted_answer_loss(logits[mask], labels, mask, torch.tensor([1.0, 0.0]))
    ref = torch.nn.functional.cross_entropy(
        logits[:1, :-1].reshape(-1, 7), labels[:1, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )
    assert only_first.item() == pytest.approx(ref.item(), rel=1e-6)
