"""One training micro-batch: encode (skipping over-long samples), collate, forward, weighted loss.

`prepare_micro_batch` is the CPU half (decode, processor, collate; what
`hazard.model.training.ingest`
runs ahead of the step in a loader process), `inputs_loss` the accelerator half."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hazard.model.finetune import answer_logit_mask, weighted_answer_loss
from hazard.model.vlm import SequenceTooLong, collate, encode, logits_at, open_stored_image


def encode_batch(processor, batch: dict, prompt: str, max_length: int):
    """Encode a Ray Data numpy batch: (encoded samples, their answers, ids of skipped ones).

    A sample over max_length is skipped with a message naming its id, never truncated."""
    encoded, answers, skipped = [], [], []
    ids = batch["id"] if "id" in batch else [str(i) for i in range(len(batch["answer"]))]
    for sample_id, images, answer in zip(ids, batch["images"], batch["answer"], strict=True):
        if len(images) == 0:
            raise ValueError(
                f"sample {sample_id} has no image bytes: an augmented copy stored as a recipe "
                "(augment.store: recipes) is rebuilt from its parent by "
                "ray_jobs.train.build_datasets, from the data job's lineage.json"
            )
        pics = [open_stored_image(bytes(b)) for b in images]
        try:
            encoded.append(encode(processor, pics, prompt, str(answer), max_length))
        except SequenceTooLong as exc:
            print(f"[train] skipping sample {sample_id}: {exc}", flush=True)
            skipped.append(str(sample_id))
            continue
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
    processor, batch: dict, prompt: str, max_length: int, class_weights: dict
) -> MicroBatch:
    """Decode, encode and collate one data batch on the CPU."""
    encoded, answers, skipped = encode_batch(processor, batch, prompt, max_length)
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
