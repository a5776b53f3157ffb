"""A tiny Qwen2.5-VL for CPU tests and the demo, built by project code and cached once.

The checkpoint is a real `Qwen2_5_VLForConditionalGeneration` (2 text layers, vision depth 2)
with a byte-level BPE tokenizer trained here on the project's own vocabulary, Qwen's special
tokens and a chat template written here. It is saved with `save_pretrained` and loaded through
the same `from_pretrained` path as the 7B/3B. LoRA cannot learn a task on random weights in a
CPU budget, so the model first gets a short full-parameter pre-training on synthetic scene
captions (whose words include the answer words), as the real stages start from a pretrained Qwen.

`python -m hazard.demo.tiny_qwen [--out DIR] [--steps N]` builds it and prints where it is.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from hazard.core.labels import RISK_LABELS
from hazard.core.tasks import TASKS
from hazard.infra.storage import cache_root

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

CHAT_TEMPLATE = (
    "{% if messages[0].role != 'system' %}"
    "<|im_start|>system\nYou grade safety hazards in pictures.<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "<|im_start|>{{ message.role }}\n"
    "{% if message.content is string %}{{ message.content }}"
    "{% else %}{% for part in message.content %}"
    "{% if part.type == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part.type == 'text' %}{{ part.text }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

IMAGE_SIDE = 112  # 8x8 patches of 14 px -> 16 image tokens after the 2x2 merge

TINY_ARCH = {
    "text": {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [4, 6, 6],
        },
    },
    "vision": {
        "depth": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 4,
        "out_hidden_size": 128,
        "window_size": 112,
        "fullatt_block_indexes": [1],
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
}

PRETRAIN = {"steps": 300, "batch_size": 16, "lr": 2e-3, "seed": 0}
DESCRIBE_PROMPT = "Describe the picture."
BUILD_VERSION = "2"  # bump when the recipe changes, to invalidate caches


def default_cache_dir() -> Path:
    """Where the tiny checkpoint is cached: $HAZARD_CACHE or ~/.cache/hazard-cascade."""
    return cache_root() / f"tiny-qwen2.5-vl-{recipe_hash()}"


def recipe_hash() -> str:
    """Short hash of everything that shapes the checkpoint.

    Besides the settings, it covers the tokenizer corpus and a fingerprint of the first
    pre-training batch (scene pixels and caption text), so a change to the scene renderer, the
    captions, the prompts or the labels gives a new cache folder instead of a stale model.
    """
    h = hashlib.sha256()
    settings = [BUILD_VERSION, TINY_ARCH, PRETRAIN, IMAGE_SIDE, CHAT_TEMPLATE, SPECIAL_TOKENS]
    h.update(json.dumps(settings, sort_keys=True).encode())
    h.update("\n".join(tokenizer_corpus()).encode())
    h.update(_pretrain_fingerprint())
    return h.hexdigest()[:10]


def _pretrain_fingerprint(n: int = 8) -> bytes:
    """Bytes of the first `n` (image, text) pre-training pairs, drawn as `pretrain` draws them."""
    from hazard.demo.synthetic import render_scene

    rng = np.random.default_rng(PRETRAIN["seed"])
    h = hashlib.sha256()
    for _ in range(n):
        label = RISK_LABELS[int(rng.integers(len(RISK_LABELS)))]
        img, spec = render_scene(label, rng, size=IMAGE_SIDE)
        h.update(np.asarray(img).tobytes())
        h.update(pretrain_text(spec, rng).encode())
    return h.digest()


# The tasks whose prompts the BPE is trained on, pinned: a task added later is encoded with this
# vocabulary (byte-level BPE encodes any text), so adding a task does not change the tiny model.
CORPUS_TASKS = (
    "corridor_risk",
    "high_risk_binary",
    "multiple_choice",
    "classification",
    "vqa",
    "score",
    "counting",
    "grounding",
)


def tokenizer_corpus() -> list[str]:
    """Text the BPE is trained on: prompts, labels, captions' words, digits and punctuation."""
    from hazard.demo.synthetic import caption, render_scene

    rng = np.random.default_rng(0)
    prompts = [TASKS[name].prompt for name in CORPUS_TASKS]
    lines = prompts + list(RISK_LABELS) + [DESCRIBE_PROMPT]
    for i in range(400):
        _, spec = render_scene(RISK_LABELS[i % len(RISK_LABELS)], rng, size=32)
        lines.append(caption(spec, rng))
    lines += ["0 1 2 3 4 5 6 7 8 9 10 A B C D yes no other score answer risk level, . : ; ( ) [ ]"]
    return lines


def build_tokenizer(vocab_size: int = 600):
    """A byte-level BPE tokenizer with Qwen's pre-tokenizer and special tokens."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(tokenizer_corpus(), trainer)
    data = json.loads(bpe.to_str())
    merges = [
        tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in data["model"]["merges"]
    ]
    tok = Qwen2Tokenizer(vocab=data["model"]["vocab"], merges=merges)
    tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_processor(tokenizer):
    """Qwen2.5-VL processor with a fixed small image size (16 image tokens per picture)."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    pixels = IMAGE_SIDE * IMAGE_SIDE
    image_processor = Qwen2VLImageProcessor(min_pixels=pixels, max_pixels=pixels)
    video_processor = Qwen2VLVideoProcessor(min_pixels=pixels, max_pixels=pixels)
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(tokenizer, seed: int = 0):
    """A randomly initialised tiny Qwen2_5_VLForConditionalGeneration matching the tokenizer."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(
        TINY_ARCH["text"],
        vocab_size=len(tokenizer),
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=TINY_ARCH["vision"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config)


def pretrain_text(spec, rng) -> str:
    """A caption, then the label word on a line of its own.

    In captions the label follows a space (" no_risk"), which BPE encodes with other tokens
    than an answer that starts a turn ("no_risk"); the second line trains those too, so that
    LoRA, which leaves embeddings alone, starts from answer words the model knows.
    """
    from hazard.demo.synthetic import caption

    return f"{caption(spec, rng)}\n{spec.label}"


def pretrain(model, processor, steps: int, batch_size: int, lr: float, seed: int, log=print):
    """Full-parameter pre-training on (synthetic scene, caption) pairs; returns loss history."""
    from hazard.demo.synthetic import render_scene
    from hazard.model.vlm import collate, encode

    rng = np.random.default_rng(seed)
    random.seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    tok = processor.tokenizer
    model.train()
    losses = []
    start = time.time()
    for step in range(steps):
        batch = []
        for _ in range(batch_size):
            label = RISK_LABELS[int(rng.integers(len(RISK_LABELS)))]
            img, spec = render_scene(label, rng, size=IMAGE_SIDE)
            batch.append(encode(processor, [img], DESCRIBE_PROMPT, pretrain_text(spec, rng), 512))
        inputs = collate(batch, tok.pad_token_id, processor.image_token_id)
        loss = model(**inputs).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0 or step == 0:
            log(
                f"  pretrain step {step + 1}/{steps} loss {np.mean(losses[-50:]):.3f} "
                f"({time.time() - start:.0f}s)"
            )
    model.eval()
    return losses


def build_tiny_checkpoint(out: Path, steps: int | None = None, log=print) -> Path:
    """Build, pre-train and save the tiny checkpoint + processor into `out`."""
    steps = PRETRAIN["steps"] if steps is None else steps
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    model = build_model(tokenizer, seed=PRETRAIN["seed"])
    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"tiny Qwen2.5-VL: {n_params / 1e6:.2f}M parameters, vocab {len(tokenizer)}; "
        f"pre-training {steps} steps"
    )
    start = time.time()
    losses = pretrain(
        model, processor, steps, PRETRAIN["batch_size"], PRETRAIN["lr"], PRETRAIN["seed"], log=log
    )
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)  # what a killed build left behind
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    info = {
        "recipe": recipe_hash(),
        "parameters": n_params,
        "pretrain_steps": steps,
        "pretrain_seconds": round(time.time() - start, 1),
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
        "first_loss": losses[0] if losses else None,
    }
    (tmp / "hazard_tiny.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(out, ignore_errors=True)  # only ever an incomplete folder (no marker file)
    os.replace(tmp, out)
    return out


def ensure_tiny_model(path: str | Path | None = None, steps: int | None = None, log=print) -> Path:
    """Path of the cached tiny checkpoint, building it once (process-safe) if missing."""
    out = Path(path) if path else default_cache_dir()
    if (out / "hazard_tiny.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "hazard_tiny.json").is_file():
            build_tiny_checkpoint(out, steps=steps, log=log)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="checkpoint folder (default: the per-machine cache)")
    parser.add_argument(
        "--steps", type=int, help=f"pre-training steps (default {PRETRAIN['steps']})"
    )
    args = parser.parse_args(argv)
    path = ensure_tiny_model(args.out, steps=args.steps)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
