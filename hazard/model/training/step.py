"""One training micro-batch: encode (skipping over-long samples), collate, forward, weighted loss.

`prepare_micro_batch` is the CPU half (decode, processor, collate; what
`hazard.model.training.ingest`
runs ahead of the step in a loader process), `inputs_loss` the accelerator half."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

from hazard.model.finetune import answer_logit_mask, weighted_answer_loss
from hazard.model.vlm import (
    LossTurns,
    SequenceTooLong,
    collate,
    conversation_messages,
    encode_conversation,
    logits_at,
    open_stored_image,
    template_messages,
)


def encode_batch(
    processor,
    batch: dict,
    prompt: str | None,
    max_length: int,
    *,
    from_row: bool = False,
    loss_turns: LossTurns = "last",
):
    """Encode a Ray Data numpy batch: (encoded samples, their answers, ids of skipped ones).

    A sample is its images, `prompt` and answer (a template task), or with `from_row` (a task
    whose prompt comes from the row) its `conversation` column, loss on `loss_turns`; a row
    without turns is asked `prompt` (None: the row's own `prompt` column, as a mixed run
    asks each template row its task's prompt). A sample over max_length is skipped with a
    message naming its id, never truncated; a row without an answer (an unlabelled test row)
    is never trained on: ValueError naming it."""
    encoded, answers, skipped = [], [], []
    ids = batch["id"] if "id" in batch else [str(i) for i in range(len(batch["answer"]))]
    if from_row and "conversation" not in batch:
        raise ValueError("the task takes its prompt from the row but the data has no conversation")
    turns = batch["conversation"] if from_row else [None] * len(ids)
    asked = [prompt] * len(ids) if prompt is not None else batch["prompt"]
    for sample_id, images, answer, conv, question in zip(
        ids, batch["images"], batch["answer"], turns, asked, strict=True
    ):
        if len(images) == 0:
            raise ValueError(
                f"sample {sample_id} has no image bytes: an augmented copy stored as a recipe "
                "(augment.store: recipes) is rebuilt from its parent by "
                "ray_jobs.train.build_datasets, from the data job's lineage.json"
            )
        if answer is None:
            raise ValueError(
                f"sample {sample_id} has no answer: unlabelled rows (a test split of "
                "source.unlabelled_splits) are scored, never trained on"
            )
        pics = [open_stored_image(bytes(b)) for b in images]
        if conv is None:
            messages = template_messages(str(question), str(answer), len(pics))
        else:
            messages = conversation_messages(json.loads(conv))
        try:
            encoded.append(encode_conversation(processor, messages, pics, max_length, loss_turns))
        except SequenceTooLong as exc:
            print(f"[train] skipping sample {sample_id}: {exc}", flush=True)
            skipped.append(str(sample_id))
            continue
        except ValueError as exc:
            raise ValueError(f"sample {sample_id}: {exc}") from exc
        answers.append(str(answer))
    return encoded, answers, skipped


def collate_inputs(processor, encoded, answers, class_weights) -> dict[str, torch.Tensor]:
    """Model inputs of encoded samples (CPU), with "labels" and per-sample "sample_weights"."""
    inputs = collate(encoded, processor.tokenizer.pad_token_id, processor.image_token_id)
    inputs["sample_weights"] = torch.tensor([class_weights.get(a, 1.0) for a in answers])
    return inputs


@dataclass
class MicroBatch:
    """One prepared micro-batch: its collated inputs (None when every sample was skipped)
    and its bookkeeping."""

    inputs: dict[str, torch.Tensor] | None
    samples: int  # rows of the data batch, skipped ones included
    skipped: list[str] = field(default_factory=list)  # ids over max_length
    tokens: int = 0  # non-padding tokens of the encoded samples


def prepare_micro_batch(
    processor,
    batch: dict,
    prompt: str | None,
    max_length: int,
    class_weights: dict,
    from_row: bool = False,
    loss_turns: LossTurns = "last",
) -> MicroBatch:
    """Decode, encode (`encode_batch`) and collate one data batch on the CPU."""
    encoded, answers, skipped = encode_batch(
        processor, batch, prompt, max_length, from_row=from_row, loss_turns=loss_turns
    )
    inputs = collate_inputs(processor, encoded, answers, class_weights) if encoded else None
    return MicroBatch(
        inputs=inputs,
        samples=len(batch["answer"]),
        skipped=skipped,
        tokens=sum(len(e.input_ids) for e in encoded),
    )


def inputs_loss(engine, inputs: dict[str, torch.Tensor], scale: float = 1.0) -> torch.Tensor:
    """The class-weighted answer loss of collated inputs; logits only at answer positions.

    The inputs are copied to the engine's device with `non_blocking`. A rank whose
    micro-batch was skipped whole still has to take part in DeepSpeed's collectives: it passes
    an earlier micro-batch with `scale=0`, adding no gradient."""
    inputs = {k: v.to(engine.device, non_blocking=True) for k, v in inputs.items()}
    labels, sample_w = inputs.pop("labels"), inputs.pop("sample_weights")
    mask = answer_logit_mask(labels)
    logits = logits_at(engine, inputs, mask, use_cache=False)
    return weighted_answer_loss(logits, labels, mask, sample_w) * scale


def micro_batch_loss(
    engine, processor, encoded, answers, class_weights, scale: float = 1.0
) -> torch.Tensor:
    """`inputs_loss` of encoded samples (collated here)."""
    return inputs_loss(engine, collate_inputs(processor, encoded, answers, class_weights), scale)
