"""Qwen2.5-VL loading, input encoding and label scoring, shared by training and serving.

The same `from_pretrained` path loads the tiny test model and the real 7B/3B checkpoints.
A sample is encoded as chat messages (`encode_conversation`): a row's own turns, or for a
fixed-prompt task [user: images + prompt, assistant: answer] (`encode`).
Closed answers are read, not generated: `choice_log_likelihoods` (and `label_probabilities`
for a fixed prompt) restricts the model's distribution to the task's answer set, so every
prediction is valid by construction; generated answers are `hazard.model.answering`'s.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from PIL import Image

from hazard.core.schema import IMAGE_PLACEHOLDER
from hazard.infra.images import QWEN_MAX_PIXELS, QWEN_MIN_PIXELS

IGNORE_INDEX = -100
END_OF_TURN = "<|im_end|>"
LossTurns = Literal["all", "last"]


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
    messages = template_messages(prompt, None, n_images)
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
    """Encode a fixed-prompt sample: `encode_conversation` of `template_messages`, so loss only
    on the answer tokens and its end-of-turn token (prompt and image tokens are masked); answer
    None ends at the generation prompt (what scoring reads). Raises SequenceTooLong."""
    return encode_conversation(
        processor, template_messages(prompt, answer, len(images)), images, max_length
    )


def template_messages(prompt: str, answer: str | None, n_images: int) -> list[dict]:
    """A fixed-prompt row as messages: [user: the images then `prompt`, assistant: `answer`]
    (no assistant turn when `answer` is None)."""
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": prompt}]
    user = {"role": "user", "content": content}
    return [user] if answer is None else [user, {"role": "assistant", "content": answer}]


def conversation_messages(turns: list[dict]) -> list[dict]:
    """Stored turns (`conversation` column: role and string content with IMAGE_PLACEHOLDER
    marks) as chat-template messages, each placeholder an image part at its place; checked:
    roles are an optional leading system turn, then user and assistant alternating from user,
    and images only in user turns. ValueError names the first problem."""
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"a conversation is a non-empty list of turns, got {turns!r}")
    messages = []
    first = 1 if isinstance(turns[0], dict) and turns[0].get("role") == "system" else 0
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
            raise ValueError(f"turn {i} is not {{'role', 'content': str}}: {turn!r}")
        role, text = turn.get("role"), turn["content"]
        expected = "system" if i < first else ("user", "assistant")[(i - first) % 2]
        if role != expected:
            raise ValueError(f"turn {i} has role {role!r} where {expected!r} belongs")
        if IMAGE_PLACEHOLDER in text and role != "user":
            raise ValueError(f"turn {i} ({role}) holds {IMAGE_PLACEHOLDER}: only user turns do")
        if role != "user" or IMAGE_PLACEHOLDER not in text:
            messages.append({"role": role, "content": text})
            continue
        parts = []
        for k, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
            if k:
                parts.append({"type": "image"})
            if piece:
                parts.append({"type": "text", "text": piece})
        messages.append({"role": role, "content": parts})
    if not any(m["role"] == "user" for m in messages):
        raise ValueError("a conversation needs at least one user turn")
    return messages


def _text_of(message: dict) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if p.get("type") == "text")


def _n_images(message: dict) -> int:
    content = message["content"]
    return 0 if isinstance(content, str) else sum(p.get("type") == "image" for p in content)


def encode_conversation(
    processor,
    messages: list[dict],
    images: list[Image.Image],
    max_length: int,
    loss_turns: LossTurns = "last",
) -> Encoded:
    """Encode chat messages with the processor's chat template; images fill the image parts in
    order. Labels are the tokens of the assistant turns (their content and the end-of-turn token
    closing each; `loss_turns` "all" or only the "last"), everything else IGNORE_INDEX. A
    conversation that ends with a user turn ends at the generation prompt, unlabelled.

    Each stretch between assistant contents goes through the processor (its image tokens
    expanded, pixels within the processor's budget) and each assistant content + END_OF_TURN
    through the tokenizer, as separate pieces: for one user turn and its answer that is the
    fixed-prompt encoding the cascade was trained with. ValueError when the image parts and
    `images` differ in number; SequenceTooLong instead of truncating (cutting through image
    tokens is what makes Qwen2.5-VL fail with "image features and image tokens do not match").
    """
    if loss_turns not in ("all", "last"):
        raise ValueError(f"loss_turns must be 'all' or 'last', got {loss_turns!r}")
    wanted = sum(_n_images(m) for m in messages)
    if wanted != len(images):
        raise ValueError(
            f"the conversation has {wanted} {IMAGE_PLACEHOLDER} place(s) but {len(images)} "
            "image(s) were given"
        )
    if not images:
        raise ValueError("a sample needs at least one image")

    def render(msgs: list[dict], generation: bool) -> str:
        return processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation)

    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    pieces: list[tuple[str, bool]] = []  # (rendered text, is it labelled)
    done = ""
    for i in answers:
        prefix, turn = render(messages[:i], True), _text_of(messages[i]) + END_OF_TURN
        if not prefix.startswith(done) or not render(messages[: i + 1], False).startswith(
            prefix + turn
        ):
            raise ValueError(
                f"the chat template does not render assistant turn {i} as its content then "
                f"{END_OF_TURN} after the generation prompt; it cannot be masked turn by turn"
            )
        pieces += [(prefix[len(done) :], False), (turn, loss_turns == "all" or i == answers[-1])]
        done = prefix + turn
    if not answers or answers[-1] != len(messages) - 1:  # open: ends at the generation prompt
        rest = render(messages, True)
        if not rest.startswith(done):
            raise ValueError("the chat template renders the turns differently when open")
        pieces.append((rest[len(done) :], False))

    tok, image_token = processor.tokenizer, processor.image_token
    input_ids: list[int] = []
    labels: list[int] = []
    pixel_values, grids, used = [], [], 0
    for text, labelled in pieces:
        if labelled:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            input_ids += ids
            labels += ids
            continue
        n = text.count(image_token)
        if not text:
            continue
        enc = processor(text=[text], images=images[used : used + n] or None, return_tensors="pt")
        if n:
            pixel_values.append(enc["pixel_values"])
            grids.append(enc["image_grid_thw"])
        used += n
        ids = enc["input_ids"][0].tolist()
        input_ids += ids
        labels += [IGNORE_INDEX] * len(ids)
    if used != len(images):
        raise ValueError(
            f"the chat template rendered {used} image slot(s) for {len(images)} image(s)"
        )
    n_image_tokens = sum(1 for t in input_ids if t == processor.image_token_id)
    if len(input_ids) > max_length:
        raise SequenceTooLong(
            f"sample needs {len(input_ids)} tokens ({n_image_tokens} of them image tokens) but "
            f"max_length is {max_length}; lower the processor's max_pixels or raise max_length"
        )
    return Encoded(
        input_ids=input_ids,
        labels=labels,
        pixel_values=torch.cat(pixel_values),
        image_grid_thw=torch.cat(grids),
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
    """Token ids of each label (or option letter) answer, ending with the end-of-turn token."""
    tok = processor.tokenizer
    return [tok(label + END_OF_TURN, add_special_tokens=False)["input_ids"] for label in labels]


def first_tokens_collide(label_ids: list[list[int]]) -> bool:
    """True when two labels start with the same token (e.g. "no…" and "non…" in some vocabs)."""
    firsts = [ids[0] for ids in label_ids]
    return len(set(firsts)) != len(firsts)


def label_log_likelihoods(
    model,
    processor,
    images: list[list[Image.Image]],
    prompt: str,
    labels: tuple[str, ...],
    max_length: int = 4096,
) -> torch.Tensor:
    """Log-likelihood of each label for each sample asked the fixed `prompt`, shape
    [batch, n_labels]: `choice_log_likelihoods` of `template_messages`."""
    asked = [(template_messages(prompt, None, len(imgs)), imgs) for imgs in images]
    return choice_log_likelihoods(model, processor, asked, labels, max_length)


@torch.no_grad()
def choice_log_likelihoods(
    model,
    processor,
    samples: list[tuple[list[dict], list[Image.Image]]],
    choices: tuple[str, ...],
    max_length: int = 4096,
) -> torch.Tensor:
    """Log-likelihood of each answer in `choices` (labels, option letters) for each sample,
    shape [batch, n_choices]. A sample is (messages ending with a user turn, its images), as
    `encode_conversation` encodes it up to the generation prompt.

    When the choices' first tokens are all distinct, one forward pass over the prompts reads the
    next-token distribution at the answer position. Otherwise one batched forward pass scores
    every prompt+choice sequence by its whole-sequence likelihood.
    """
    label_ids = label_token_ids(processor, choices)
    pad_id = processor.tokenizer.pad_token_id
    encoded = [encode_conversation(processor, msgs, imgs, max_length) for msgs, imgs in samples]
    if not first_tokens_collide(label_ids):
        inputs = to_device(collate(encoded, pad_id, processor.image_token_id), model)
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
    inputs = to_device(collate(expanded, pad_id, processor.image_token_id), model)
    targets = inputs.pop("labels")
    logits = model(**inputs).logits[:, :-1].float()
    targets = targets[:, 1:]
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    seq = (picked * (targets != IGNORE_INDEX)).sum(dim=1)
    return seq.view(len(encoded), len(choices)).cpu()


def to_device(inputs: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """Move model inputs to the model's device (no-op on CPU)."""
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in inputs.items()}


def label_probabilities(
    model, processor, images: list[list[Image.Image]], prompt: str, labels: tuple[str, ...]
) -> torch.Tensor:
    """Probabilities over `labels` (rows sum to 1), from `label_log_likelihoods`."""
    return torch.softmax(label_log_likelihoods(model, processor, images, prompt, labels), dim=-1)
