"""Answer samples of any task with a loaded model: what a row is asked, and how it is answered.

- `load_answering_model`: a checkpoint folder (with a LoRA adapter merged in) for answering.
- `ask_messages`: the chat messages a stored row is asked: the task's template prompt after its
  images, or (a row-prompt task, `TaskSpec.prompt_source == "row"`) the row's own turns up to
  its last user turn, so the reference answer is never shown.
- `generate_texts`: greedy or sampled generation (`hazard.core.decoding.Decoding`) for a batch,
  left-padded, new tokens only.
- `Answerer`: a model, its processor and a task; `answer(rows)` gives one `Answer` per row:
  likelihood over the task's closed answer set (`hazard.model.vlm.choice_log_likelihoods`;
  valid by construction), or generation read by the answer kind's parser (text that does not
  parse is kept, `prediction` None). `Answer.prediction` is the answer kind's canonical text
  (`AnswerKind.format`), what predictions files store and metrics re-read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from hazard.core.decoding import Decoding, Generate
from hazard.core.tasks import TaskSpec
from hazard.model.vlm import (
    END_OF_TURN,
    choice_log_likelihoods,
    conversation_messages,
    encode_conversation,
    open_stored_image,
    template_messages,
    to_device,
)

Sample = tuple[list[dict], list[Image.Image]]  # (messages ending with a user turn, images)


def load_answering_model(
    path: str,
    dtype: str,
    max_pixels: int | None = None,
    min_pixels: int | None = None,
    adapter: str | None = None,
):
    """(model, processor) of a local checkpoint folder (a bundle's or a base model's) on the
    scoring device (`hazard.model.device`), the processor within the pixel limits; with
    `adapter` (a PEFT folder) that LoRA adapter merged in first, in fp32."""
    from hazard.model.device import load_scoring_model, place_model
    from hazard.model.vlm import load_processor

    if adapter is None:
        model = load_scoring_model(path, dtype)
    else:
        from hazard.model.training.export import merge_adapter

        model = place_model(merge_adapter(path, adapter, dtype), dtype)
    return model, load_processor(path, max_pixels, min_pixels)


def ask_messages(
    spec: TaskSpec, prompt: str, n_images: int, conversation: str | None
) -> list[dict]:
    """The messages a row of `spec` is asked: `template_messages(prompt)` for a template task
    or a row without turns; for a row-prompt task, its stored turns (JSON, `conversation`
    column) without a trailing assistant turn. ValueError when the turns are malformed."""
    if spec.prompt_source != "row" or conversation is None:
        return template_messages(prompt, None, n_images)
    messages = conversation_messages(json.loads(conversation))
    if messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    return messages


@torch.no_grad()
def generate_texts(
    model, processor, samples: Sequence[Sample], decoding: Decoding, max_length: int = 4096
) -> list[str]:
    """Generated text (new tokens, special tokens dropped, stripped) of each sample, in one
    left-padded batch; generation stops at the end-of-turn token or `decoding.max_new_tokens`.
    Raises SequenceTooLong for a prompt over `max_length`."""
    if not samples:
        return []
    encoded = [encode_conversation(processor, msgs, imgs, max_length) for msgs, imgs in samples]
    tok = processor.tokenizer
    pad_id = tok.pad_token_id
    width = max(len(e.input_ids) for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, e in enumerate(encoded):
        ids[i, width - len(e.input_ids) :] = torch.tensor(e.input_ids)
        mask[i, width - len(e.input_ids) :] = 1
    inputs = {
        "input_ids": ids,
        "attention_mask": mask,
        "mm_token_type_ids": (ids == processor.image_token_id).int() * mask.int(),
        "pixel_values": torch.cat([e.pixel_values for e in encoded]),
        "image_grid_thw": torch.cat([e.image_grid_thw for e in encoded]),
    }
    stop = [tok.convert_tokens_to_ids(END_OF_TURN)]
    if tok.eos_token_id is not None and tok.eos_token_id not in stop:
        stop.append(tok.eos_token_id)
    out = model.generate(
        **to_device(inputs, model),
        **decoding.transformers_kwargs(),
        eos_token_id=stop,
        pad_token_id=pad_id,
    )
    texts = processor.batch_decode(out[:, width:], skip_special_tokens=True)
    return [t.strip() for t in texts]


@dataclass(frozen=True)
class Answer:
    """A row's answer: `prediction` (the kind's canonical text; None when a generated text did
    not parse), `raw` (the generated text; None under likelihood scoring) and `probs` ({choice:
    p}; likelihood scoring only)."""

    prediction: str | None
    raw: str | None = None
    probs: dict[str, float] | None = None


class Answerer:
    """Answers rows of one task with a loaded model and processor.

    `prompt` is what template rows are asked (a bundle's own prompt, else the task's);
    `choices` the closed answer set likelihood ranks (a bundle's labels, else the task's)."""

    def __init__(
        self,
        model,
        processor,
        spec: TaskSpec,
        prompt: str | None = None,
        choices: Sequence[str] | None = None,
        max_length: int = 4096,
    ):
        self.model, self.processor, self.spec = model, processor, spec
        self.prompt = spec.prompt if prompt is None else prompt
        self.choices = tuple(choices) if choices is not None else spec.labels
        self.generate = isinstance(spec.inference, Generate)
        if not self.generate and not self.choices:
            raise ValueError(f"task {spec.name}: likelihood scoring needs its closed answer set")
        self.max_length = max_length

    def sample(self, images: Sequence[bytes], conversation: str | None) -> Sample:
        """A stored row (its encoded images and turns) as (messages, decoded images)."""
        pics = [open_stored_image(bytes(b)) for b in images]
        return ask_messages(self.spec, self.prompt, len(pics), conversation), pics

    def answer(self, samples: Sequence[Sample]) -> list[Answer]:
        """One Answer per sample, in one batch."""
        kind = self.spec.answer
        if not self.generate:
            logp = choice_log_likelihoods(
                self.model, self.processor, list(samples), self.choices, self.max_length
            )
            probs = torch.softmax(logp, dim=-1).tolist()
            return [
                Answer(
                    self.choices[max(range(len(p)), key=p.__getitem__)],  # first on ties
                    probs=dict(zip(self.choices, p, strict=True)),
                )
                for p in probs
            ]
        decoding = self.spec.inference.decoding
        texts = generate_texts(self.model, self.processor, samples, decoding, self.max_length)
        out = []
        for text in texts:
            value = kind.parse(text)
            out.append(Answer(None if value is None else kind.format(value), raw=text))
        return out
