"""Qwen2.5-VL loading, input encoding and label scoring, shared by training and serving.

The same `from_pretrained` path loads the tiny test model and the real 7B/3B checkpoints.
Answers are read, not generated: `label_probabilities` restricts the model's distribution to
the task's label set, so every prediction is a valid label by construction.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from hazard.infra.images import QWEN_MAX_PIXELS, QWEN_MIN_PIXELS

IGNORE_INDEX = -100
END_OF_TURN = "<|im_end|>"


class SequenceTooLong(ValueError):
    """A sample does not fit max_length without truncating through its image tokens."""


def load_model(path: str | Path, dtype: str = "float32"):
    """Load a Qwen2.5-VL checkpoint (tiny or real) for conditional generation."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(
        str(path), dtype=getattr(torch, dtype), use_safetensors=True
    )


def load_processor(path: str | Path, max_pixels: int | None = None, min_pixels: int | None = None):
    """Load the checkpoint's processor (tokenizer + image processor + chat template).

    `max_pixels` caps the image size, and so the image tokens per picture (Qwen2.5-VL: one
    per 28x28 pixels); `min_pixels` upscales smaller pictures. Unset, min_pixels stays Qwen's
    56x56 (or max_pixels when that is smaller) and max_pixels the checkpoint's own. A processor
    saved with a bundle keeps both, so serving resizes as training did.
    """
    from transformers import AutoProcessor

    kwargs = {}
    if max_pixels or min_pixels:
        longest = max_pixels or QWEN_MAX_PIXELS
        kwargs["size"] = {
            "shortest_edge": min_pixels or min(QWEN_MIN_PIXELS, longest),
            "longest_edge": longest,
        }
    return AutoProcessor.from_pretrained(str(path), **kwargs)


def open_stored_image(data: bytes) -> Image.Image:
    """RGB image of bytes the data job stored (already checked, upright, within budget);
    raises PIL's errors on bad input. Untrusted bytes go through
    `hazard.infra.images.decode_image`."""
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def prompt_text(processor, prompt: str, n_images: int = 1) -> str:
    """The chat-formatted user turn with `n_images` image slots, ending at the assistant turn."""
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": prompt}]
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


EXPLAIN_PROMPT = "In one short sentence, what in the picture makes it that risk level?"


def explain_text(
    model, processor, image: Image.Image, prompt: str, label: str, max_new_tokens: int = 48
) -> str:
    """A short free-text rationale for `label`, generated (greedy) after the label is fixed:
    the task's turn, the label as the assistant's answer, then EXPLAIN_PROMPT."""
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
        {"role": "assistant", "content": [{"type": "text", "text": label}]},
        {"role": "user", "content": [{"type": "text", "text": EXPLAIN_PROMPT}]},
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[image], return_tensors="pt").to(model.device)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[:, inputs["input_ids"].shape[1] :]
    return processor.batch_decode(new, skip_special_tokens=True)[0].strip()


@dataclass
class Encoded:
    """One encoded sample: token ids, loss labels and the vision inputs."""

    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor
    n_image_tokens: int


def encode(
    processor, images: list[Image.Image], prompt: str, answer: str | None, max_length: int
) -> Encoded:
    """Encode one sample; loss only on the answer tokens (prompt and image tokens are masked).

    Raises SequenceTooLong instead of truncating: cutting through image tokens is what makes
    Qwen2.5-VL fail with "image features and image tokens do not match".
    """
    text = prompt_text(processor, prompt, len(images))
    enc = processor(text=[text], images=images, return_tensors="pt")
    prompt_ids = enc["input_ids"][0].tolist()
    answer_ids = []
    if answer is not None:
        answer_ids = processor.tokenizer(answer + END_OF_TURN, add_special_tokens=False)[
            "input_ids"
        ]
    n_image_tokens = sum(1 for t in prompt_ids if t == processor.image_token_id)
    total = len(prompt_ids) + len(answer_ids)
    if total > max_length:
        raise SequenceTooLong(
            f"sample needs {total} tokens ({n_image_tokens} of them image tokens) but max_length "
            f"is {max_length}; lower the processor's max_pixels or raise max_length"
        )
    return Encoded(
        input_ids=prompt_ids + answer_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + list(answer_ids),
        pixel_values=enc["pixel_values"],
        image_grid_thw=enc["image_grid_thw"],
        n_image_tokens=n_image_tokens,
    )


def collate(batch: list[Encoded], pad_id: int, image_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of encoded samples into model inputs (with labels)."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "mm_token_type_ids": (ids == image_token_id).int() * mask.int(),
        "pixel_values": torch.cat([e.pixel_values for e in batch]),
        "image_grid_thw": torch.cat([e.image_grid_thw for e in batch]),
    }


def logits_at(model, inputs: dict[str, torch.Tensor], keep: torch.Tensor, **kwargs):
    """Logits [N, vocab] at the N True positions of `keep` [batch, seq], in row-major order.

    Only the columns that hold a kept position are projected onto the vocabulary: they are
    passed to the model as 1-D `logits_to_keep` indices, which every transformers 5.x takes
    (a 2-D boolean `logits_to_keep` raises IndexError before 5.24). `kwargs` go to the
    forward (e.g. `use_cache=False`)."""
    cols = torch.nonzero(keep.any(dim=0), as_tuple=True)[0]
    logits = model(**inputs, logits_to_keep=cols, **kwargs).logits  # [batch, len(cols), vocab]
    return logits[keep[:, cols]]


def label_token_ids(processor, labels: tuple[str, ...]) -> list[list[int]]:
    """Token ids of each label answer, ending with the end-of-turn token."""
    tok = processor.tokenizer
    return [tok(label + END_OF_TURN, add_special_tokens=False)["input_ids"] for label in labels]


def first_tokens_collide(label_ids: list[list[int]]) -> bool:
    """True when two labels start with the same token (e.g. "no…" and "non…" in some vocabs)."""
    firsts = [ids[0] for ids in label_ids]
    return len(set(firsts)) != len(firsts)


@torch.no_grad()
def label_log_likelihoods(
    model,
    processor,
    images: list[list[Image.Image]],
    prompt: str,
    labels: tuple[str, ...],
    max_length: int = 4096,
) -> torch.Tensor:
    """Log-likelihood of each label for each sample, shape [batch, n_labels].

    When the labels' first tokens are all distinct, one forward pass over the prompts reads the
    next-token distribution at the answer position. Otherwise one batched forward pass scores
    every prompt+label sequence by its whole-sequence likelihood.
    """
    label_ids = label_token_ids(processor, labels)
    pad_id = processor.tokenizer.pad_token_id
    encoded = [encode(processor, imgs, prompt, None, max_length) for imgs in images]
    if not first_tokens_collide(label_ids):
        inputs = _to_device(collate(encoded, pad_id, processor.image_token_id), model)
        inputs.pop("labels")
        last = inputs["attention_mask"].sum(dim=1) - 1
        keep = torch.zeros_like(inputs["attention_mask"], dtype=torch.bool)
        keep[torch.arange(len(encoded)), last] = True  # project only the answer position
        logits = logits_at(model, inputs, keep)  # [batch, vocab]
        logp = torch.log_softmax(logits.float(), dim=-1)
        return logp[:, [ids[0] for ids in label_ids]].cpu()
    expanded = [
        Encoded(
            e.input_ids + ids,
            [IGNORE_INDEX] * len(e.input_ids) + ids,
            e.pixel_values,
            e.image_grid_thw,
            e.n_image_tokens,
        )
        for e in encoded
        for ids in label_ids
    ]
    inputs = _to_device(collate(expanded, pad_id, processor.image_token_id), model)
    targets = inputs.pop("labels")
    logits = model(**inputs).logits[:, :-1].float()
    targets = targets[:, 1:]
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    seq = (picked * (targets != IGNORE_INDEX)).sum(dim=1)
    return seq.view(len(encoded), len(labels)).cpu()


def _to_device(inputs: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """Move model inputs to the model's device (no-op on CPU)."""
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in inputs.items()}


def label_probabilities(
    model, processor, images: list[list[Image.Image]], prompt: str, labels: tuple[str, ...]
) -> torch.Tensor:
    """Probabilities over `labels` (rows sum to 1), from `label_log_likelihoods`."""
    return torch.softmax(label_log_likelihoods(model, processor, images, prompt, labels), dim=-1)


def score_split(
    model,
    processor,
    split_dir: str,
    prompt: str,
    labels: tuple[str, ...],
    batch_size: int,
    rank: int = 0,
    world: int = 1,
    storage=None,
) -> tuple[list[list[float]], list[str]]:
    """Label probabilities and true answers for every `world`-th row of a Parquet split
    (a local folder or `s3://` prefix; `storage` a StorageConfig), starting at `rank` (so
    `world` workers score each row exactly once)."""
    from hazard.infra.storage import read_parquet

    table = read_parquet(split_dir, storage, columns=["images", "answer"])
    rows = list(range(rank, table.num_rows, world))
    probs, truth = [], []
    for i in range(0, len(rows), batch_size):
        part = table.take(rows[i : i + batch_size]).to_pydict()
        images = [[open_stored_image(b) for b in imgs] for imgs in part["images"]]
        probs.extend(label_probabilities(model, processor, images, prompt, labels).tolist())
        truth.extend(part["answer"])
    return probs, truth
