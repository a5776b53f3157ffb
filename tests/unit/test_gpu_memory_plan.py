"""bench.gpu_memory_plan: the arithmetic against values worked out by hand, and the activation
formula against the bytes autograd really keeps for a (small) Qwen2.5-VL layer and block."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import gpu_memory_plan as plan
from hazard.config import load_config
from hazard.config.train import LoraSpec, TrainConfig

REPO = Path(__file__).resolve().parents[2]
STAGE1 = REPO / "configs" / "stage1_base_7b.yaml"
STAGE2 = REPO / "configs" / "stage2_specialist_3b.yaml"
A7, A3 = plan.ARCHS["Qwen2.5-VL-7B-Instruct"], plan.ARCHS["Qwen2.5-VL-3B-Instruct"]


def _cfg(path: Path, *overrides: str) -> TrainConfig:
    return load_config(path, TrainConfig, list(overrides))


# --- parameter counts -------------------------------------------------------------------------


def test_model_parameter_counts_match_the_published_sizes():
    # 7B decoder layer: q 3584*3584+3584, k and v 3584*512+512 each, o 3584*3584,
    # gate/up/down 3*3584*18944, two norms 2*3584.
    layer7 = 12_848_640 + 2 * 1_835_520 + 12_845_056 + 203_685_888 + 7_168
    assert plan.text_layer_params(A7.text) == layer7 == 233_057_792
    # + final norm + embedding + untied lm_head (152064 x 3584 each)
    text7 = 28 * layer7 + 3_584 + 2 * 544_997_376
    # vision: Conv3d 3*2*14*14*1280, 32 blocks of 19,702,200, merger 44,574,464
    vision7 = 1_505_280 + 32 * 19_702_200 + 44_574_464
    assert plan.vision_params(A7.vision) == vision7 == 676_550_144
    assert plan.total_params(A7) == text7 + vision7 == 8_292_166_656  # HF: 8.29B
    # 3B: tied embedding counted once; merger's last layer 5120 -> 2048
    layer3 = (2048 * 2048 + 2048) + 2 * (2048 * 256 + 256) + 2048 * 2048 + 3 * 2048 * 11008
    layer3 += 2 * 2048
    text3 = 36 * layer3 + 2048 + 151_936 * 2048
    vision3 = 1_505_280 + 32 * 19_702_200 + (1280 + 26_219_520 + 5120 * 2048 + 2048)
    assert plan.total_params(A3) == text3 + vision3 == 3_754_622_976  # HF: 3.75B


def test_lora_parameters_counted_from_r_and_the_adapted_shapes():
    # r=16 on the 7B's attention: q and o 16*(3584+3584), k and v 16*(3584+512), 28 layers
    per_layer = 2 * 16 * (3584 + 3584) + 2 * 16 * (3584 + 512)
    assert per_layer == 360_448
    assert plan.lora_params(A7, LoraSpec(r=16)) == 28 * per_layer == 10_092_544
    # stage 2 on the 3B, r=32: language attention (36 layers), vision qkv+proj (32 blocks),
    # merger 5120->5120 and 5120->2048
    lang = 36 * (2 * 32 * (2048 + 2048) + 2 * 32 * (2048 + 256))
    vis = 32 * (32 * (1280 + 3840) + 32 * (1280 + 1280))
    merger = 32 * (5120 + 5120) + 32 * (5120 + 2048)
    assert (lang, vis, merger) == (14_745_600, 7_864_320, 557_056)
    spec = LoraSpec(r=32, vision_attention=True, vision_merger=True)
    assert plan.lora_params(A3, spec) == lang + vis + merger == 23_166_976
    # an MLP target adds 3 matrices' worth; a typo is refused
    mlp = LoraSpec(r=8, language_targets=["down_proj"])
    assert plan.lora_params(A7, mlp) == 28 * 8 * (18944 + 3584)
    with pytest.raises(ValueError, match="qproj"):
        plan.lora_modules(A7, LoraSpec(language_targets=["qproj"]))


def test_the_shipped_configs_are_planned_with_their_own_lora():
    p1 = plan.plan_config(STAGE1, (0.35, 0.45))
    p2 = plan.plan_config(STAGE2, (0.35, 0.45))
    assert p1["params"]["lora"] == 10_092_544  # r=16, attention only
    assert p2["params"]["lora"] == 23_166_976  # r=32, + vision attention and merger
    assert p1["tokens"]["image_patches"] == 1_003_520 // 196 == 5120
    assert p1["tokens"]["image_tokens"] == 1280


# --- memory arithmetic ------------------------------------------------------------------------


def test_full_logits_cost_and_the_answer_positions():
    # one fp32 copy at every position of 4 samples x 2,048 tokens x 152,064 vocab
    assert plan.fp32_logits_bytes(4 * 2048, 152_064) == 4 * 2048 * 152_064 * 4 == 4_982_833_152
    cfg = _cfg(STAGE1, "optim.batch_size=4", "optim.max_length=2048")
    # the loss's fp32 copy and its gradient: 2 copies
    assert plan.logits_bytes(A7, cfg, full=True) == 2 * 4_982_833_152
    # answer positions only: 4 per sample
    assert plan.logits_bytes(A7, cfg) == 2 * 16 * 152_064 * 4 == 19_464_192


def test_zero3_partitions_the_frozen_weights_over_the_workers():
    cfg = _cfg(STAGE1, "scaling.num_workers=4")
    total = 8_292_166_656 * 2  # bf16
    assert plan.memory_plan(A7, cfg, "zero2")["weights"] == total
    assert plan.memory_plan(A7, cfg, "zero3")["weights"] == total / 4 == 4_146_083_328
    assert plan.zero3_partition(total, 8) == total / 8
    assert plan.memory_plan(A7, cfg, "zero3_offload")["weights"] == 0
    # ZeRO-3 gathers the largest module (the 152064 x 3584 lm_head), a layer and the prefetch
    gathered = 2 * (152_064 * 3584 + 233_057_792 + 50_000_000)
    assert plan.memory_plan(A7, cfg, "zero3")["zero3_gathered"] == gathered
    assert plan.memory_plan(A7, cfg, "zero2")["zero3_gathered"] == 0


def test_lora_state_bytes_per_zero_stage():
    n = 1_000_000
    # ZeRO-2, 4 workers: bf16 weight + grad whole (4n), 16n of fp32 state split four ways
    assert plan.lora_state_bytes(n, 2, 4, False) == 4 * n + 4 * n
    # ZeRO-3: everything split: 20n / 4
    assert plan.lora_state_bytes(n, 3, 4, False) == 5 * n
    # optimizer offload: only the bf16 weight and gradient stay on the GPU
    assert plan.lora_state_bytes(n, 2, 4, True) == 4 * n
    assert plan.lora_state_bytes(n, 3, 4, True) == n


def test_checkpointing_keeps_one_bf16_input_per_layer():
    cfg = _cfg(STAGE1, "optim.batch_size=4", "optim.max_length=2048")
    on = plan.activation_bytes(A7, cfg, True)
    off = plan.activation_bytes(A7, cfg, False)
    assert on["text_kept"] == 4 * 28 * 2 * 2048 * 3584 == 1_644_167_168
    layer = plan.text_layer_activation_bytes(A7.text, cfg.lora, 2048)
    assert off["text_kept"] == 4 * 28 * layer
    assert on["vision_kept"] == off["vision_kept"] == 0  # stage 1: frozen vision tower
    # stage 2 trains through the vision tower: 32 blocks keep their input when checkpointing
    cfg2 = _cfg(STAGE2, "optim.batch_size=2")
    assert plan.activation_bytes(A3, cfg2, True)["vision_kept"] == 2 * 32 * 2 * 5120 * 1280
    block = plan.vision_block_activation_bytes(A3.vision, cfg2.lora, 5120)
    assert plan.activation_bytes(A3, cfg2, False)["vision_kept"] == 2 * 32 * block


def test_each_stage_back_propagates_what_it_adapts():
    s1, s2 = _cfg(STAGE1).lora, _cfg(STAGE2).lora
    assert plan.backward_scope(s1) == {
        "language_model": True,
        "vision_blocks": False,
        "merger": False,
    }
    assert plan.backward_scope(s2) == dict.fromkeys(
        ("language_model", "vision_blocks", "merger"), True
    )
    merger_only = LoraSpec(vision_merger=True)
    assert (
        plan.backward_scope(merger_only)["merger"]
        and not plan.backward_scope(merger_only)["vision_blocks"]
    )
    assert plan.describe_backward(plan.backward_scope(s1)) == (
        "back-propagates language model (vision blocks and merger forward only)"
    )
    assert plan.describe_backward(plan.backward_scope(s2)) == (
        "back-propagates language model, vision blocks, merger"
    )
    # merger LoRA alone: the merger keeps activations, the blocks none
    cfg = _cfg(STAGE1, "lora.vision_merger=true")
    acts = plan.activation_bytes(A7, cfg, True)
    assert acts["vision_kept"] == 0 and acts["merger"] > 0


def test_layer_formula_by_hand_for_the_7b():
    """7B layer, attention LoRA r=16, dropout 0.05, padded batch, per token (bytes):
    norms 2*(4*3584+4), attention 2*(4*3584) + 4*28 + 2*s, SwiGLU 3*2*18944,
    LoRA 4 x 3 bytes x 3584 (copy + mask) + 4 x 2*16."""
    s = 2048
    per_token = 2 * (4 * 3584 + 4) + 2 * 4 * 3584 + 4 * 28 + 2 * s + 6 * 18944
    per_token += 4 * 3 * 3584 + 4 * 2 * 16
    spec = LoraSpec(r=16, dropout=0.05)
    assert plan.text_layer_activation_bytes(A7.text, spec, s) == s * per_token
    # unpadded: k and v at their 4 heads' width (512), no mask bias
    unpadded = per_token - 2 * s - 2 * 2 * (3584 - 512)
    assert plan.text_layer_activation_bytes(A7.text, spec, s, padded=False) == s * unpadded


def test_flops_per_sample_by_hand_for_the_7b():
    cfg = _cfg(STAGE1, "model.gradient_checkpointing=true", "optim.max_length=2048")
    s, p = 2048, 5120
    text_linear = 28 * (233_057_792 - 2 * 3584)
    f = 6 * text_linear * s  # frozen: forward 2N + input grads 2N + recompute 2N
    f += 8 * 10_092_544 * s  # LoRA: + weight grads
    f += 4 * 2 * s * s * 3584 * 28  # causal attention, forward x (1 + 2 + 1)
    f += 4 * 152_064 * 3584 * 4  # lm_head at 4 answer positions
    f += 2 * 32 * (19_702_200 - 2 * 1280) * p  # frozen vision tower: forward only
    f += 4 * 1280 * p * (4 * p + 28 * 64)  # 4 full-attention blocks, 28 windowed (64 patches)
    f += 2 * (44_574_464 - 1280) * p // 4  # merger on the 1280 merged tokens
    assert plan.flops_per_sample(A7, cfg, True) == f
    a100 = next(g for g in plan.GPUS if g.name == "A100-80GB")
    t = plan.throughput(A7, cfg, a100, 0.4)
    assert t["samples_per_s"] == pytest.approx(0.4 * 312e12 / f)
    assert t["tokens_per_s"] == pytest.approx(t["samples_per_s"] * 2048)


def test_flops_per_sample_by_hand_for_the_3b_stage2():
    """Stage 2 trains through the vision tower: its blocks like the decoder (checkpointed,
    recomputed), the merger forward + input gradients only (not checkpointed)."""
    cfg = _cfg(STAGE2)
    assert cfg.model.gradient_checkpointing and cfg.optim.max_length == 2048
    s, p = 2048, 5120
    # decoder layer without norms: q 2048*2048+2048, k and v 2048*256+256, o 2048*2048,
    # SwiGLU 3 * 2048*11008
    layer = 4_196_352 + 2 * 524_544 + 4_194_304 + 3 * 22_544_384
    f = 6 * 36 * layer * s
    f += 8 * 32 * (4096 + 2 * 2304 + 4096) * 36 * s  # language LoRA r=32
    f += 4 * 2 * s * s * 2048 * 36  # causal attention (16 heads x 128)
    f += 4 * 151_936 * 2048 * 4  # lm_head at 4 answer positions
    f += 6 * 32 * (19_702_200 - 2 * 1280) * p  # vision blocks: forward, input grads, recompute
    f += 4 * 4 * 1280 * p * (4 * p + 28 * 64)  # their attention, x4
    f += 8 * 32 * (32 * (1280 + 3840) + 32 * 2560) * p  # vision qkv and proj LoRA
    f += 4 * (26_219_520 + 10_487_808) * p // 4  # merger: forward + input grads, no recompute
    f += 6 * 32 * (10_240 + 7_168) * p // 4  # merger LoRA: no recompute
    assert plan.flops_per_sample(A3, cfg, True) == f
    # merger LoRA alone: blocks forward only, input gradients through mlp.2 only
    cfg_m = _cfg(STAGE2, "lora.vision_attention=false")
    g = f - 6 * 32 * (19_702_200 - 2 * 1280) * p + 2 * 32 * (19_702_200 - 2 * 1280) * p
    g -= 3 * 4 * 1280 * p * (4 * p + 28 * 64) + 8 * 32 * (32 * (1280 + 3840) + 32 * 2560) * p
    g -= 2 * 26_219_520 * p // 4  # mlp.0's input gradients are not needed
    assert plan.flops_per_sample(A3, cfg_m, True) == g


def test_the_shipped_configs_fit_their_gpu_class_with_margin():
    """A guard for edits to the configs: 7B on 80 GB, 3B on 48 GB, with 15% to spare."""
    p1 = plan.plan_config(STAGE1, (0.35, 0.45))
    p2 = plan.plan_config(STAGE2, (0.35, 0.45))
    assert {"A100-80GB", "H100-80GB"} <= set(p1["fits_with_margin"])
    assert {"A100-80GB", "H100-80GB", "L40S-48GB"} <= set(p2["fits_with_margin"])
    # the shipped micro-batch would not fit 80 GB without checkpointing (3B: vision LoRA)
    m2 = p2["memory_bytes"][p2["settings"]["zero"]]
    assert m2["total_no_ckpt"] > plan.MARGIN * plan.GPUS[0].usable_bytes
    assert p1["settings"]["effective_batch"] == p2["settings"]["effective_batch"] == 64


def test_old_7b_config_was_over_the_margin_and_full_logits_were_10_gb():
    old = plan.old_7b_plan(STAGE1)
    assert old["logits"] == 2 * 4_982_833_152
    assert old["activations_34sh_rule"] == 4 * 34 * 2048 * 3584 * 28
    assert old["total_no_ckpt"] > plan.MARGIN * plan.GPUS[0].usable_bytes


def test_main_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert plan.main(["--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "estimates, not measurements" in text and "A100-80GB" in text
    data = json.loads(out.read_text())
    assert data["benchmark"] == "gpu_memory_plan"
    assert [Path(p["config"]).name for p in data["plans"]] == [STAGE1.name, STAGE2.name]
    assert data["old_7b"]["total_no_ckpt"] > data["plans"][0]["memory_bytes"]["zero2"]["total_ckpt"]


# --- the activation formula against autograd --------------------------------------------------


def _kept_bytes(fn) -> int:
    """Bytes of the distinct tensors autograd saves for backward while `fn` runs, parameters
    excluded (they are not activations)."""
    seen: dict[tuple[int, torch.dtype], int] = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return seen


def _lora(module, pattern: str, dropout: float):
    from peft import LoraConfig, get_peft_model

    for p in module.parameters():
        p.requires_grad_(False)
    model = get_peft_model(
        module, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules=pattern)
    )
    model.train()
    return model.to(torch.bfloat16)  # DeepSpeed's bf16 casts the adapters too


def _measured(model, fn) -> int:
    params = {(p.untyped_storage().data_ptr(), p.dtype) for p in model.parameters()}
    seen = _kept_bytes(fn)
    return sum(v for k, v in seen.items() if k not in params)


@pytest.mark.parametrize("dropout", [0.0, 0.05])
@pytest.mark.parametrize("padded", [False, True])
def test_decoder_layer_formula_matches_autograd(dropout, padded):
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLConfig

    h, heads, kv, inter, s = 256, 4, 2, 1024, 256
    text = dict(
        hidden_size=h,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=inter,
        num_hidden_layers=1,
        vocab_size=1000,
        rope_scaling={"type": "mrope", "mrope_section": [8, 12, 12]},
    )
    tc = Qwen2_5_VLConfig(text_config=text).text_config
    tc._attn_implementation = "sdpa"
    torch.manual_seed(0)
    wrap = torch.nn.Module()
    wrap.layer = qwen.Qwen2_5_VLDecoderLayer(tc, 0)
    model = _lora(wrap, r"layer\.self_attn\.(q_proj|k_proj|v_proj|o_proj)", dropout)
    x = torch.randn(1, s, h, dtype=torch.bfloat16, requires_grad=True)
    pos = torch.arange(s).view(1, 1, -1).expand(3, 1, -1)
    cos, sin = qwen.Qwen2_5_VLRotaryEmbedding(tc)(x, pos)
    mask = None
    if padded:  # right padding: the last 10 positions are padding
        mask = torch.ones(s, s, dtype=torch.bool).tril()
        mask[:, -10:] = False
        mask = mask[None, None]
    layer = model.base_model.model.layer
    got = _measured(
        model,
        lambda: layer(x, attention_mask=mask, position_embeddings=(cos, sin), position_ids=pos[0]),
    )
    arch = plan.TextArch(h, 1, heads, kv, inter, 1000, True)
    spec = LoraSpec(r=8, dropout=dropout)
    # CPU keeps the dropout mask in bf16 (CUDA: bool); cos/sin are kept once per forward pass
    want = plan.text_layer_activation_bytes(arch, spec, s, padded=padded, mask_bytes=2)
    want += cos.numel() * 2 + sin.numel() * 2
    assert got == want


@pytest.mark.parametrize("dropout", [0.0, 0.05])
def test_vision_block_formula_matches_autograd(dropout):
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig

    hv, inter, heads, patches = 128, 342, 4, 256
    vc = Qwen2_5_VLVisionConfig(
        depth=1, hidden_size=hv, intermediate_size=inter, num_heads=heads, out_hidden_size=256
    )
    vc._attn_implementation = "sdpa"
    torch.manual_seed(0)
    wrap = torch.nn.Module()
    wrap.blocks = torch.nn.ModuleList([qwen.Qwen2_5_VLVisionBlock(vc)])
    model = _lora(wrap, r"blocks\.\d+\.attn\.(qkv|proj)", dropout)
    x = torch.randn(patches, hv, dtype=torch.bfloat16, requires_grad=True)
    emb = torch.randn(patches, hv // heads)
    cu = torch.tensor([0, 128, patches], dtype=torch.int32)  # two windows
    block = model.base_model.model.blocks[0]
    got = _measured(
        model, lambda: block(x, cu_seqlens=cu, position_embeddings=(emb.cos(), emb.sin()))
    )
    arch = plan.VisionArch(hidden=hv, intermediate=inter, heads=heads)
    spec = LoraSpec(r=8, dropout=dropout, vision_attention=True)
    want = plan.vision_block_activation_bytes(arch, spec, patches, mask_bytes=2)
    want += 2 * emb.numel() * 4  # fp32 cos and sin, kept once per forward pass
    assert got == want
