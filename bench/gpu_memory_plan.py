"""GPU plan on paper: memory per GPU and expected throughput of the two real training configs.

    python -m bench.gpu_memory_plan [--config PATH ...] [--set KEY=VALUE ...] [--mfu 0.35,0.45]
                                    [--out PATH]

No GPU, no model and no timing: every figure is arithmetic on the architectures' published
shapes (the Hugging Face config.json of Qwen/Qwen2.5-VL-7B-Instruct and -3B-Instruct, in
`ARCHS`) and on the shipped configs (`configs/stage1_base_7b.yaml`,
`configs/stage2_specialist_3b.yaml`, read with `hazard.config.load_config`). The figures are
estimates, not measurements. GB = 10^9 bytes.

Per GPU, at the config's micro-batch (`optim.batch_size` samples padded to `optim.max_length`
tokens, every image at `model.max_pixels`), for ZeRO-2, ZeRO-3 and ZeRO-3 with CPU offload:
- frozen weights in `model.dtype`: replicated under ZeRO-2, 1/num_workers under ZeRO-3, none
  with parameter offload; ZeRO-3 adds the gathered working set (`zero3_gathered_bytes`);
- LoRA: parameters counted exactly from r and the adapted layers' shapes; bf16 weight and
  gradient, fp32 master weight, gradient and Adam moments (`lora_state_bytes`);
- activations kept for the backward pass, with and without gradient checkpointing
  (`text_layer_activation_bytes`, `vision_block_activation_bytes`, `activation_bytes`), for
  the parts each stage back-propagates (`backward_scope`: stage 1 the language model only, its
  vision tower forward only; stage 2 the vision blocks and merger too);
- the answer-position logits (`logits_to_keep` mask) against full-sequence fp32 logits;
- DeepSpeed's gradient bucket and a CUDA context / NCCL / workspace allowance.
Throughput: model FLOPs per sample (`flops_per_sample`) at an assumed MFU on each GPU class.
"""

from __future__ import annotations

import argparse
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import REPO_ROOT, command, default_out, git_state, write_json

NAME = "gpu_memory_plan"
MODULE = "bench.gpu_memory_plan"
CONFIGS = ("configs/stage1_base_7b.yaml", "configs/stage2_specialist_3b.yaml")

GB = 1e9
BF16, FP32 = 2, 4
DTYPE_BYTES = {"bfloat16": BF16, "float32": FP32}
ANSWER_POSITIONS = 4
"""Logit positions per sample: the longest risk label is 3 tokens, plus <|im_end|>."""
ADAM_BYTES = 16
"""Per trainable parameter: fp32 master weight, fp32 gradient partition, Adam m and v."""
REDUCE_BUCKET_BYTES = int(5e8) * BF16
"""DeepSpeed's default reduce_bucket_size (5e8 elements) in bf16; deepspeed_config keeps it."""
ZERO3_PREFETCH = int(5e7)
"""DeepSpeed's default stage3_prefetch_bucket_size (elements)."""
CUDA_NCCL_BYTES = 3 * GB
"""CUDA context (~1 GB), NCCL communicators (~1 GB), cuBLAS workspaces and allocator slack."""
MARGIN = 0.85
"""A plan 'fits' when its total is at most this share of the GPU's usable memory."""


@dataclass(frozen=True)
class Gpu:
    name: str
    usable_bytes: float  # what nvidia-smi reports as total
    bf16_tflops: float  # dense bf16 tensor peak (no sparsity)


GPUS = (
    Gpu("A100-80GB", 81920 * 2**20, 312.0),  # A100 datasheet
    Gpu("H100-80GB", 81559 * 2**20, 989.0),  # H100 SXM datasheet (PCIe: 756)
    Gpu("L40S-48GB", 46068 * 2**20, 362.0),  # L40S datasheet
    Gpu("A10G-24GB", 23028 * 2**20, 70.0),  # AWS's A10G (the A10 is 125)
)


@dataclass(frozen=True)
class TextArch:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied_embeddings: bool

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclass(frozen=True)
class VisionArch:
    depth: int = 32
    hidden: int = 1280
    intermediate: int = 3420
    heads: int = 16
    patch: int = 14
    temporal_patch: int = 2
    merge: int = 2
    window: int = 112  # pixels per side of an attention window
    full_attention_blocks: int = 4  # fullatt_block_indexes [7, 15, 23, 31]
    out_hidden: int = 3584


@dataclass(frozen=True)
class Arch:
    text: TextArch
    vision: VisionArch


ARCHS = {
    "Qwen2.5-VL-7B-Instruct": Arch(
        TextArch(3584, 28, 28, 4, 18944, 152064, tied_embeddings=False), VisionArch()
    ),
    "Qwen2.5-VL-3B-Instruct": Arch(
        TextArch(2048, 36, 16, 2, 11008, 151936, tied_embeddings=True),
        VisionArch(out_hidden=2048),
    ),
}


def arch_for(model_path: str) -> Arch:
    """The architecture of a hub id or folder named like one (e.g. Qwen/Qwen2.5-VL-7B-Instruct)."""
    key = Path(model_path).name
    if key not in ARCHS:
        raise ValueError(f"no architecture for {model_path!r}; known: {sorted(ARCHS)}")
    return ARCHS[key]


# --- parameters -------------------------------------------------------------------------------


def linear_params(d_in: int, d_out: int, bias: bool) -> int:
    return d_in * d_out + (d_out if bias else 0)


def text_layer_params(t: TextArch) -> int:
    """One decoder layer: q/k/v with bias, o without, SwiGLU MLP without bias, two RMSNorms."""
    q, kv = t.heads * t.head_dim, t.kv_heads * t.head_dim
    attn = linear_params(t.hidden, q, True) + 2 * linear_params(t.hidden, kv, True)
    attn += linear_params(q, t.hidden, False)
    mlp = 2 * linear_params(t.hidden, t.intermediate, False)
    mlp += linear_params(t.intermediate, t.hidden, False)
    return attn + mlp + 2 * t.hidden


def text_params(t: TextArch) -> int:
    """Language model: layers, final norm, embedding and (untied) lm_head."""
    embed = t.vocab * t.hidden
    return t.layers * text_layer_params(t) + t.hidden + embed * (1 if t.tied_embeddings else 2)


def vision_block_params(v: VisionArch) -> int:
    """One vision block: qkv and proj with bias, SwiGLU MLP with bias, two RMSNorms."""
    attn = linear_params(v.hidden, 3 * v.hidden, True) + linear_params(v.hidden, v.hidden, True)
    mlp = 2 * linear_params(v.hidden, v.intermediate, True)
    mlp += linear_params(v.intermediate, v.hidden, True)
    return attn + mlp + 2 * v.hidden


def merger_params(v: VisionArch) -> int:
    """Patch merger: RMSNorm, then 2x2 patches (4 x hidden) -> 4 x hidden -> out_hidden."""
    wide = v.hidden * v.merge**2
    return v.hidden + linear_params(wide, wide, True) + linear_params(wide, v.out_hidden, True)


def vision_params(v: VisionArch) -> int:
    patch_embed = 3 * v.temporal_patch * v.patch * v.patch * v.hidden  # Conv3d, no bias
    return patch_embed + v.depth * vision_block_params(v) + merger_params(v)


def total_params(a: Arch) -> int:
    return text_params(a.text) + vision_params(a.vision)


# --- LoRA -------------------------------------------------------------------------------------


def lora_modules(a: Arch, lora) -> list[tuple[str, int, int, int]]:
    """(name, d_in, d_out, how many) of every adapted linear layer of `lora` (a LoraSpec)."""
    t, v = a.text, a.vision
    q, kv = t.heads * t.head_dim, t.kv_heads * t.head_dim
    shapes = {
        "q_proj": (t.hidden, q),
        "k_proj": (t.hidden, kv),
        "v_proj": (t.hidden, kv),
        "o_proj": (q, t.hidden),
        "gate_proj": (t.hidden, t.intermediate),
        "up_proj": (t.hidden, t.intermediate),
        "down_proj": (t.intermediate, t.hidden),
    }
    unknown = set(lora.language_targets) - set(shapes)
    if unknown:
        raise ValueError(f"unknown language_targets {sorted(unknown)}; known: {sorted(shapes)}")
    mods = [(name, *shapes[name], t.layers) for name in lora.language_targets]
    if lora.vision_attention:
        mods += [("visual.qkv", v.hidden, 3 * v.hidden, v.depth)]
        mods += [("visual.proj", v.hidden, v.hidden, v.depth)]
    if lora.vision_merger:
        wide = v.hidden * v.merge**2
        mods += [("merger.mlp.0", wide, wide, 1), ("merger.mlp.2", wide, v.out_hidden, 1)]
    return mods


def lora_params(a: Arch, lora) -> int:
    """A (r x d_in) plus B (d_out x r) for each adapted layer; no bias."""
    return sum(lora.r * (d_in + d_out) * n for _, d_in, d_out, n in lora_modules(a, lora))


def lora_state_bytes(n: int, zero_stage: int, workers: int, offload_optimizer: bool) -> float:
    """GPU bytes of n trainable parameters: bf16 weight + bf16 gradient (whole under ZeRO-2,
    partitioned under ZeRO-3) and the 16-byte fp32 optimizer state (partitioned; on the host
    with optimizer offload)."""
    weights_grads = 2 * BF16 * n / (workers if zero_stage == 3 else 1)
    optimizer = 0 if offload_optimizer else ADAM_BYTES * n / (workers if zero_stage else 1)
    return weights_grads + optimizer


# --- activations ------------------------------------------------------------------------------


MASK_BYTES = 1
"""Dropout mask bytes per element on CUDA (bool); CPU keeps a mask in the input dtype."""


def _adapter_input_bytes(
    modules: list[tuple[int, str]], dropout: float, saved: set[str], mask_bytes: int
) -> int:
    """Bytes per token that LoRA keeps for (d_in, input name) modules: with dropout, each
    module its own dropped copy (bf16) and mask; without, each distinct input once, unless
    another op keeps it already (`saved`). The frozen base linear keeps nothing: its weight
    needs no gradient, and autograd saves a matmul's input only for the weight's gradient."""
    if dropout > 0:
        return sum((BF16 + mask_bytes) * d_in for d_in, _ in modules)
    distinct = {name: d_in for d_in, name in modules if name not in saved}
    return sum(BF16 * d for d in distinct.values())


def text_layer_activation_bytes(
    t: TextArch, lora, s: int, padded: bool = True, mask_bytes: int = MASK_BYTES
) -> int:
    """Bytes one decoder layer keeps for the backward pass, for one sequence of s tokens.

    The method of Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
    Transformer Models": 34*s*h bytes for a 16-bit GPT layer without the s x s attention
    matrices), applied to this layer (RMSNorm, GQA, SwiGLU, no dropout, frozen weights) as
    transformers' Qwen2.5-VL code and SDPA run it:
    - 2 RMSNorms keep an fp32 copy of their input (Qwen2RMSNorm upcasts): 2 * 4*s*h;
    - the SDPA kernel keeps q, k, v, output (bf16) and log-sum-exp (fp32); no s x s matrix.
      When the batch is padded (an attention mask, as in the shipped right-padded batches)
      transformers repeats k and v to all heads (`repeat_kv`) and SDPA keeps the mask as a
      bf16 bias: 2*s*(4*q_dim) + 2*s^2; unpadded (no mask): 2*s*(2*q_dim + 2*kv_dim);
    - SwiGLU keeps the SiLU input, SiLU output and up output: 3 * 2*s*I;
    - frozen linear layers keep nothing; each LoRA adapter keeps its input (with dropout a
      dropped bf16 copy plus mask each; without, shared inputs once, o_proj's input being the
      kernel's output) and A's output (2*s*r).
    7B with attention LoRA (dropout 0.05), padded: ~61*s*h (the GPT layer's 34*s*h has a 4h
    GeLU MLP; Qwen's SwiGLU is 5.3h wide and keeps three tensors of that width). Checked
    against the bytes autograd keeps for a real layer: tests/unit/test_gpu_memory_plan.py."""
    q, kv = t.heads * t.head_dim, t.kv_heads * t.head_dim
    norms = 2 * FP32 * (t.hidden + 1)  # fp32 input copy and its rsqrt per token
    kv_kept = q if padded else kv
    attention = BF16 * (2 * q + 2 * kv_kept) + FP32 * t.heads + (BF16 * s if padded else 0)
    mlp = 3 * BF16 * t.intermediate
    inputs = {
        "q_proj": (t.hidden, "attn_in"),
        "k_proj": (t.hidden, "attn_in"),
        "v_proj": (t.hidden, "attn_in"),
        "o_proj": (q, "attn_out"),
        "gate_proj": (t.hidden, "mlp_in"),
        "up_proj": (t.hidden, "mlp_in"),
        "down_proj": (t.intermediate, "mlp_act"),
    }
    mods = [inputs[name] for name in lora.language_targets]
    adapters = _adapter_input_bytes(mods, lora.dropout, {"attn_out"}, mask_bytes)
    adapters += BF16 * lora.r * len(mods)
    return s * (norms + attention + mlp + adapters)


def vision_block_activation_bytes(
    v: VisionArch, lora, patches: int, mask_bytes: int = MASK_BYTES
) -> int:
    """Bytes one vision block keeps for the backward pass, for one image of `patches` patches,
    by the same rules: 2 fp32 RMSNorm copies; attention keeps the roped q and k, the whole
    fused qkv output (v is a view of it) and the output: 2*P*(2+3+1)*hidden, plus log-sum-exp;
    SwiGLU 3 * 2*P*I; LoRA on qkv and proj when `lora.vision_attention` (proj's input is a
    copy: the per-window outputs are concatenated)."""
    norms = 2 * FP32 * (v.hidden + 1)
    attention = BF16 * 6 * v.hidden + FP32 * v.heads
    mlp = 3 * BF16 * v.intermediate
    adapters = 0
    if lora.vision_attention:
        mods = [(v.hidden, "block_in"), (v.hidden, "attn_out")]
        adapters = _adapter_input_bytes(mods, lora.dropout, set(), mask_bytes)
        adapters += BF16 * lora.r * 2
    return patches * (norms + attention + mlp + adapters)


def merger_activation_bytes(v: VisionArch, lora, patches: int) -> int:
    """The merger (not checkpointed): its RMSNorm's fp32 copy when gradients flow into the
    blocks, the GELU input, and the LoRA inputs of mlp.0 and mlp.2 (patches/4 rows of
    4 x hidden: hidden per patch)."""
    if not (lora.vision_attention or lora.vision_merger):
        return 0
    per_patch = BF16 * v.hidden  # GELU input
    if lora.vision_attention:
        per_patch += FP32 * v.hidden
    if lora.vision_merger:
        mods = [(v.hidden, "merged"), (v.hidden, "gelu_out")]
        per_patch += _adapter_input_bytes(mods, lora.dropout, set(), MASK_BYTES)
    return patches * per_patch


def backward_scope(lora) -> dict[str, bool]:
    """Which parts the backward pass runs through, by the LoRA spec: the language model always
    (the loss is at its top); the merger when it or the blocks are adapted; the vision blocks
    only when adapted. A part left out runs forward only and keeps no activation: training
    builds the model with `hazard.model.finetune.apply_lora(..., gradient_checkpointing=...)`, which
    leaves no input that requires grad (`tests/unit/test_frozen_vision.py` checks it)."""
    blocks = bool(lora.vision_attention)
    return {
        "language_model": True,
        "vision_blocks": blocks,
        "merger": blocks or bool(lora.vision_merger),
    }


def describe_backward(scope: dict[str, bool]) -> str:
    """`backward_scope` in words, for the report."""
    names = {
        "language_model": "language model",
        "merger": "merger",
        "vision_blocks": "vision blocks",
    }
    back = [names[k] for k, v in scope.items() if v]
    forward = [names[k] for k, v in scope.items() if not v]
    text = "back-propagates " + ", ".join(back)
    return text + (f" ({' and '.join(forward)} forward only)" if forward else "")


def image_patches(max_pixels: int, v: VisionArch) -> int:
    """Patches of one image at the pixel budget (14x14 each); merged tokens are a quarter."""
    return max_pixels // (v.patch * v.patch)


def activation_bytes(a: Arch, cfg, checkpointing: bool) -> dict[str, float]:
    """Activation bytes per GPU for one micro-batch of the config (every sample padded to
    max_length, one image at max_pixels each).

    Without checkpointing every decoder layer (and, in stage 2, every vision block) keeps its
    set, plus one layer's worth of gradient buffers in the backward pass. With checkpointing
    each keeps only its bf16 input; the backward pass recomputes one at a time (its set plus
    its gradient buffers: twice a layer's set). Stage 1 adapts nothing in the vision tower, so
    no gradient reaches it: it keeps nothing, and its forward pass needs one block's set."""
    t, v = a.text, a.vision
    b, s = cfg.optim.batch_size, cfg.optim.max_length
    patches = image_patches(cfg.model.max_pixels, v)
    layer = text_layer_activation_bytes(t, cfg.lora, s)
    block = vision_block_activation_bytes(v, cfg.lora, patches)
    trains = backward_scope(cfg.lora)["vision_blocks"]
    if checkpointing:
        text_kept = t.layers * BF16 * s * t.hidden
        vision_kept = v.depth * BF16 * patches * v.hidden if trains else 0
        working = 2 * max(layer, block if trains else 0)
    else:
        text_kept = t.layers * layer
        vision_kept = v.depth * block if trains else 0
        working = max(layer, block if trains else 0)
    if not trains:
        working = max(working, block)  # the frozen tower's forward
    merger = merger_activation_bytes(v, cfg.lora, patches)
    # embeddings (bf16), final RMSNorm (fp32 copy), pixel values (fp32 + bf16 copy), bool mask
    other = BF16 * s * t.hidden + FP32 * s * t.hidden + patches * 1176 * (FP32 + BF16) + s * s
    return {
        "text_kept": b * text_kept,
        "vision_kept": b * vision_kept,
        "merger": b * merger,
        "working_set": b * working,
        "inputs_and_norm": b * other,
        "total": b * (text_kept + vision_kept + merger + working + other),
    }


def fp32_logits_bytes(positions: int, vocab: int) -> int:
    """One fp32 copy of the logits at `positions` positions."""
    return positions * vocab * FP32


def logits_bytes(a: Arch, cfg, full: bool = False) -> int:
    """Logits working set: the fp32 copy the loss takes and its gradient (2 copies), at the
    answer positions (b x 4), or at every position (b x max_length) when `full`."""
    b, s = cfg.optim.batch_size, cfg.optim.max_length
    positions = b * (s if full else ANSWER_POSITIONS)
    return 2 * fp32_logits_bytes(positions, a.text.vocab)


# --- memory per GPU ---------------------------------------------------------------------------


def zero3_partition(total_bytes: float, workers: int) -> float:
    """ZeRO-3 keeps 1/workers of every parameter on each GPU."""
    return total_bytes / workers


def zero3_gathered_bytes(a: Arch, dtype_bytes: int) -> float:
    """ZeRO-3 working set: the largest module gathered whole (the embedding or lm_head matrix),
    one decoder layer, and the prefetch bucket."""
    largest = max(a.text.vocab * a.text.hidden, text_layer_params(a.text))
    return dtype_bytes * (largest + text_layer_params(a.text) + ZERO3_PREFETCH)


VARIANTS = {  # name: (zero stage, offload_optimizer, offload_params)
    "zero2": (2, False, False),
    "zero3": (3, False, False),
    "zero3_offload": (3, True, True),
}


def memory_plan(a: Arch, cfg, variant: str, full_logits: bool = False) -> dict[str, float]:
    """Bytes per GPU of the config under one ZeRO variant, with and without checkpointing."""
    stage, off_opt, off_params = VARIANTS[variant]
    workers = cfg.scaling.num_workers
    weights = total_params(a) * DTYPE_BYTES[cfg.model.dtype]
    if stage == 3:
        weights = 0.0 if off_params else zero3_partition(weights, workers)
    gathered = zero3_gathered_bytes(a, DTYPE_BYTES[cfg.model.dtype]) if stage == 3 else 0.0
    lora = lora_state_bytes(lora_params(a, cfg.lora), stage, workers, off_opt)
    act_ckpt = activation_bytes(a, cfg, True)["total"]
    act_full = activation_bytes(a, cfg, False)["total"]
    logits = logits_bytes(a, cfg, full=full_logits)
    fixed = weights + gathered + lora + logits + REDUCE_BUCKET_BYTES + CUDA_NCCL_BYTES
    return {
        "weights": weights,
        "zero3_gathered": gathered,
        "lora_state": lora,
        "activations_ckpt": act_ckpt,
        "activations_no_ckpt": act_full,
        "logits": logits,
        "deepspeed_bucket": REDUCE_BUCKET_BYTES,
        "cuda_nccl": CUDA_NCCL_BYTES,
        "total_ckpt": fixed + act_ckpt,
        "total_no_ckpt": fixed + act_full,
    }


def eval_peak_bytes(a: Arch, cfg) -> float:
    """Validation scoring (`hazard.model.vlm.label_log_likelihoods`, no gradients) at
    eval_batch_size: it asks the model for the logits at every position (bf16), plus one
    layer's working set (SwiGLU: 3 x I-wide tensors, 3 residual-width tensors)."""
    b, s, t = cfg.optim.eval_batch_size, cfg.optim.max_length, a.text
    logits = b * s * t.vocab * BF16
    layer = b * s * BF16 * (3 * t.intermediate + 3 * t.hidden)
    return logits + layer


# --- throughput -------------------------------------------------------------------------------


def text_linear_params(t: TextArch) -> int:
    """Weights a token meets in the decoder's matmuls (layers without norms; no embedding)."""
    return t.layers * (text_layer_params(t) - 2 * t.hidden)


def flops_per_sample(a: Arch, cfg, checkpointing: bool) -> float:
    """Model FLOPs of one training sample (max_length tokens, one image at max_pixels).

    Frozen weights: forward 2N per token and backward 2N (input gradients only, no weight
    gradients), plus 2N to recompute the forward with checkpointing: 4N or 6N (instead of the
    usual 6N / 8N of full fine-tuning). LoRA weights get weight gradients: 6 (8) x their
    parameters. Attention: causal 2*s^2*d_attn forward per layer, backward twice that, plus a
    recompute. What runs backward is `backward_scope`: stage 1's frozen vision tower only runs
    forward; stage 2 trains through its blocks like the decoder. The merger is not
    checkpointed (never recomputed): forward 2N, input gradients 2N when the blocks train,
    and with merger LoRA alone only mlp.2's (mlp.0's input needs none). lm_head only at the
    answer positions."""
    t, v = a.text, a.vision
    s = cfg.optim.max_length
    patches = image_patches(cfg.model.max_pixels, v)
    lin, att, lora_mult = (6, 4, 8) if checkpointing else (4, 3, 6)
    mods = lora_modules(a, cfg.lora)
    lora_text = sum(cfg.lora.r * (i + o) * n for name, i, o, n in mods if "." not in name)
    lora_vis = sum(cfg.lora.r * (i + o) * n for name, i, o, n in mods if name.startswith("vis"))
    lora_merger = sum(
        cfg.lora.r * (i + o) * n for name, i, o, n in mods if name.startswith("merger")
    )
    q = t.heads * t.head_dim
    f = lin * text_linear_params(t) * s + lora_mult * lora_text * s
    f += att * 2 * s * s * q * t.layers
    f += 4 * t.vocab * t.hidden * ANSWER_POSITIONS
    window = (v.window // v.patch) ** 2
    vis_attn = (
        4
        * v.hidden
        * patches
        * (v.full_attention_blocks * patches + (v.depth - v.full_attention_blocks) * window)
    )
    vis_lin = v.depth * (vision_block_params(v) - 2 * v.hidden) * patches
    merged = patches // v.merge**2
    merger_lin = (merger_params(v) - v.hidden) * merged
    scope = backward_scope(cfg.lora)
    if scope["vision_blocks"]:
        f += lin * vis_lin + att * vis_attn + lora_mult * lora_vis * patches
        f += 4 * merger_lin
    else:
        f += 2 * vis_lin + vis_attn + 2 * merger_lin
        if scope["merger"]:
            f += 2 * linear_params(v.hidden * v.merge**2, v.out_hidden, True) * merged
    f += 6 * lora_merger * merged
    return float(f)


def throughput(a: Arch, cfg, gpu: Gpu, mfu: float) -> dict[str, float]:
    """Samples/s and tokens/s (at max_length tokens per sample) per GPU at `mfu`, and the
    hours of the run (max_steps x effective batch over all workers)."""
    flops = flops_per_sample(a, cfg, cfg.model.gradient_checkpointing)
    samples = mfu * gpu.bf16_tflops * 1e12 / flops
    o = cfg.optim
    run_samples = o.max_steps * o.batch_size * o.grad_accum_steps * cfg.scaling.num_workers
    return {
        "samples_per_s": samples,
        "tokens_per_s": samples * o.max_length,
        "run_hours": run_samples / (samples * cfg.scaling.num_workers) / 3600,
    }


def zero3_allgather_bytes(a: Arch, cfg) -> float:
    """Bytes each GPU receives per micro-batch under ZeRO-3: the frozen weights gathered for the
    forward, the backward and (with checkpointing) the recompute."""
    passes = 3 if cfg.model.gradient_checkpointing else 2
    w = cfg.scaling.num_workers
    return passes * total_params(a) * DTYPE_BYTES[cfg.model.dtype] * (w - 1) / w


# --- report -----------------------------------------------------------------------------------


def fit(total: float, gpu: Gpu) -> str:
    share = total / gpu.usable_bytes
    return f"{share:.0%} {'ok' if share <= MARGIN else 'tight' if share <= 1 else 'NO'}"


def plan_config(path: Path, mfus: tuple[float, float], overrides: list[str] | None = None) -> dict:
    """Everything the report shows for one config file."""
    from hazard.config import load_config
    from hazard.config.train import TrainConfig

    cfg = load_config(path, TrainConfig, overrides)
    a = arch_for(cfg.model.path)
    o, ckpt = cfg.optim, cfg.model.gradient_checkpointing
    shipped = f"zero{cfg.deepspeed.zero_stage}"
    if cfg.deepspeed.zero_stage == 3 and cfg.deepspeed.offload_params:
        shipped = "zero3_offload"
    if shipped not in VARIANTS:
        raise ValueError(f"{path}: ZeRO stage {cfg.deepspeed.zero_stage} is not planned here")
    memory = {name: memory_plan(a, cfg, name) for name in VARIANTS}
    m = memory[shipped]
    eval_peak = m["weights"] + m["zero3_gathered"] + m["lora_state"] + CUDA_NCCL_BYTES
    eval_peak += eval_peak_bytes(a, cfg)
    peaks = {"total_ckpt": m["total_ckpt"], "total_no_ckpt": m["total_no_ckpt"], "eval": eval_peak}
    fits = {g.name: {k: fit(v, g) for k, v in peaks.items()} for g in GPUS}
    peak = max(m["total_ckpt" if ckpt else "total_no_ckpt"], eval_peak)
    fitting = [g for g in GPUS if peak <= MARGIN * g.usable_bytes]
    needs = None
    if fitting:
        least = min(g.usable_bytes for g in fitting)
        needs = " / ".join(g.name for g in fitting if g.usable_bytes < 1.02 * least)
    n_lora = lora_params(a, cfg.lora)
    gather = zero3_allgather_bytes(a, cfg)
    flops = flops_per_sample(a, cfg, ckpt)
    hi = max(mfus)
    hide = {  # GB/s each GPU must receive to hide ZeRO-3's gathers behind a micro-batch
        g.name: gather / (o.batch_size * flops / (hi * g.bf16_tflops * 1e12)) / GB for g in GPUS
    }
    return {
        "config": str(path),
        "model": cfg.model.path,
        "arch": asdict(a),
        "settings": {
            "batch_size": o.batch_size,
            "grad_accum_steps": o.grad_accum_steps,
            "num_workers": cfg.scaling.num_workers,
            "effective_batch": o.batch_size * o.grad_accum_steps * cfg.scaling.num_workers,
            "max_length": o.max_length,
            "max_pixels": cfg.model.max_pixels,
            "gradient_checkpointing": ckpt,
            "zero": shipped,
            "dtype": cfg.model.dtype,
            "lora_r": cfg.lora.r,
            "lora_modules": [m[0] for m in lora_modules(a, cfg.lora)],
            "backward_scope": backward_scope(cfg.lora),
            "eval_batch_size": o.eval_batch_size,
        },
        "params": {
            "text": text_params(a.text),
            "vision": vision_params(a.vision),
            "total": total_params(a),
            "lora": n_lora,
            "lora_by_module": {
                name: cfg.lora.r * (i + out) * n for name, i, out, n in lora_modules(a, cfg.lora)
            },
        },
        "tokens": {
            "sequence": o.max_length,
            "image_patches": image_patches(cfg.model.max_pixels, a.vision),
            "image_tokens": image_patches(cfg.model.max_pixels, a.vision) // a.vision.merge**2,
            "answer_positions": o.batch_size * ANSWER_POSITIONS,
        },
        "memory_bytes": memory,
        "activations_ckpt": activation_bytes(a, cfg, True),
        "activations_no_ckpt": activation_bytes(a, cfg, False),
        "logits_answer_bytes": logits_bytes(a, cfg),
        "logits_full_bytes": logits_bytes(a, cfg, full=True),
        "eval_peak_bytes": eval_peak,
        "fits": fits,
        "fits_with_margin": [g.name for g in fitting],
        "needs": needs,
        "flops_per_sample": flops,
        "flops_per_sample_other_setting": flops_per_sample(a, cfg, not ckpt),
        "throughput": {
            g.name: {f"mfu_{x:.2f}": throughput(a, cfg, g, x) for x in mfus} for g in GPUS
        },
        "zero3_allgather_bytes_per_micro_batch": gather,
        "zero3_gbps_to_hide_gathers": hide,
        "checkpoint_bytes": n_lora * (BF16 + 3 * FP32),
        # export: the base loaded in fp32 on the host, merged, cast to bf16 tensor by tensor
        "merge_host_bytes": total_params(a) * FP32,
    }


def old_7b_plan(path: Path) -> dict[str, float]:
    """The 7B config as it was: batch 4 x 2,048 tokens, no checkpointing, full fp32 logits,
    ZeRO-2; and the earlier estimate's 34*s*h rule for the same batch."""
    from hazard.config import load_config
    from hazard.config.train import TrainConfig

    over = [
        "optim.batch_size=4",
        "optim.grad_accum_steps=1",
        "optim.max_length=2048",
        "model.gradient_checkpointing=false",
        "deepspeed.zero_stage=2",
    ]
    cfg = load_config(path, TrainConfig, over)
    a = arch_for(cfg.model.path)
    m = memory_plan(a, cfg, "zero2", full_logits=True)
    t = a.text
    rule_34 = 4 * 34 * 2048 * t.hidden * t.layers
    return {**m, "activations_34sh_rule": rule_34}


def _gb(x: float) -> str:
    return f"{x / GB:.2f}"


def print_report(plans: list[dict], old: dict | None, mfus: tuple[float, float]) -> None:
    print("\nGPU plan on paper (estimates, not measurements; GB = 1e9 bytes)")
    for p in plans:
        s, n = p["settings"], p["params"]
        print(
            f"{Path(p['config']).name}: {p['model']}, {n['total'] / 1e9:.3f}B params "
            f"({n['vision'] / 1e9:.3f}B vision), LoRA r={s['lora_r']} {n['lora']:,} params; "
            f"batch {s['batch_size']} x accum {s['grad_accum_steps']} x {s['num_workers']} "
            f"workers = {s['effective_batch']}; {s['max_length']} tokens, "
            f"{p['tokens']['image_patches']} patches -> {p['tokens']['image_tokens']} image "
            f"tokens; checkpointing {s['gradient_checkpointing']}; shipped {s['zero']}; "
            f"{describe_backward(s['backward_scope'])}"
        )
    cols = ("weights", "zero3_gathered", "lora_state", "activations_ckpt", "activations_no_ckpt")
    cols += ("logits", "total_ckpt", "total_no_ckpt")
    heads = ("weights", "Z3 gather", "LoRA+Adam", "act ckpt", "act no-ckpt", "logits")
    heads += ("total ckpt", "total no-ckpt")
    print("\nmemory per GPU, GB (totals add 1.00 DeepSpeed bucket + 3.00 CUDA/NCCL)")
    print(f"{'config':<22} {'ZeRO':<14}" + "".join(f"{h:>14}" for h in heads))
    for p in plans:
        for v, m in p["memory_bytes"].items():
            mark = " *" if v == p["settings"]["zero"] else ""
            row = "".join(f"{_gb(m[c]):>14}" for c in cols)
            print(f"{Path(p['config']).stem:<22} {v + mark:<14}{row}")
    print("* shipped. logits: answer positions (b x 4) vs every position, fp32 copy + gradient:")
    for p in plans:
        print(
            f"  {Path(p['config']).stem}: {_gb(p['logits_answer_bytes'])} GB vs "
            f"{_gb(p['logits_full_bytes'])} GB; eval peak (eval_batch_size "
            f"{p['settings']['eval_batch_size']}, full bf16 logits) {_gb(p['eval_peak_bytes'])} GB"
        )
    print(f"\nshipped setting, share of usable memory (ok <= {MARGIN:.0%}):")
    print(f"{'config':<22} {'phase':<16}" + "".join(f"{g.name:>12}" for g in GPUS))
    for p in plans:
        rows = (("total_ckpt", "train, ckpt on"), ("total_no_ckpt", "train, no ckpt"))
        rows += (("eval", f"eval, batch {p['settings']['eval_batch_size']}"),)
        for c, label in rows:
            row = "".join(f"{p['fits'][g.name][c]:>12}" for g in GPUS)
            print(f"{Path(p['config']).stem:<22} {label:<16}{row}")
    lo, hi = (f"mfu_{m:.2f}" for m in mfus)
    print(f"\nthroughput per GPU at MFU {mfus[0]:.0%}-{mfus[1]:.0%} (the config's checkpointing):")
    print(f"{'config':<22} {'GPU':<11} {'TFLOP/sample':>13} {'samples/s':>12} {'tokens/s':>14}")
    for p in plans:
        for g in GPUS:
            t = p["throughput"][g.name]
            print(
                f"{Path(p['config']).stem:<22} {g.name:<11} "
                f"{p['flops_per_sample'] / 1e12:>13.1f} "
                f"{t[lo]['samples_per_s']:>5.2f}-{t[hi]['samples_per_s']:<6.2f} "
                f"{t[lo]['tokens_per_s']:>6,.0f}-{t[hi]['tokens_per_s']:<7,.0f} "
                f"run {t[hi]['run_hours']:.1f}-{t[lo]['run_hours']:.1f} h"
            )
    for p in plans:
        hide = ", ".join(f"{k} {v:.0f}" for k, v in p["zero3_gbps_to_hide_gathers"].items())
        print(
            f"{Path(p['config']).stem}: needs {p['needs']} (fits with margin on "
            f"{', '.join(p['fits_with_margin']) or 'none'}); ZeRO-3 gathers "
            f"{_gb(p['zero3_allgather_bytes_per_micro_batch'])} GB per GPU per micro-batch "
            f"(GB/s to hide it at {mfus[1]:.0%} MFU: {hide}); checkpoint "
            f"{p['checkpoint_bytes'] / 1e6:.0f} MB; merge task host RAM "
            f"{_gb(p['merge_host_bytes'])} GB"
        )
    if old:
        print(
            f"old 7B config (batch 4 x 2,048 tokens, no checkpointing, full logits, ZeRO-2): "
            f"weights {_gb(old['weights'])} + activations {_gb(old['activations_no_ckpt'])} "
            f"(34*s*h rule: {_gb(old['activations_34sh_rule'])}) + logits {_gb(old['logits'])} "
            f"+ LoRA/bucket/CUDA {_gb(old['lora_state'] + REDUCE_BUCKET_BYTES + CUDA_NCCL_BYTES)}"
            f" = {_gb(old['total_no_ckpt'])} GB"
        )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    p.add_argument("--config", action="append", type=Path, help="train config(s) to plan")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--mfu", default="0.35,0.45", help="MFU range low,high (default 0.35,0.45)")
    p.add_argument("--out", type=Path, default=None, help="JSON path")
    args = p.parse_args(argv)
    mfus = tuple(float(x) for x in args.mfu.split(","))
    if len(mfus) != 2:
        p.error("--mfu takes two numbers, low,high")
    paths = args.config or [REPO_ROOT / c for c in CONFIGS]
    plans = [plan_config(path, mfus, args.overrides) for path in paths]
    stage1 = next((Path(pl["config"]) for pl in plans if "7B" in pl["model"]), None)
    old = old_7b_plan(stage1) if stage1 else None
    print_report(plans, old, mfus)
    payload = {
        "benchmark": NAME,
        **command(MODULE, argv),
        "git": git_state(),
        "environment": {"python": platform.python_version(), "platform": platform.platform()},
        "kind": "estimate on paper: no GPU, no model, no timing",
        "assumptions": {
            "margin": MARGIN,
            "answer_positions_per_sample": ANSWER_POSITIONS,
            "adam_bytes_per_trainable_param": ADAM_BYTES,
            "deepspeed_reduce_bucket_bytes": REDUCE_BUCKET_BYTES,
            "zero3_prefetch_elements": ZERO3_PREFETCH,
            "cuda_nccl_bytes": CUDA_NCCL_BYTES,
            "mfu": list(mfus),
            "gpus": [asdict(g) for g in GPUS],
        },
        "plans": plans,
        "old_7b": old,
    }
    path = write_json(args.out or default_out(NAME), payload)
    print(f"json: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
