"""One training micro-batch: encode (skipping over-long samples), forward, weighted loss."""

from __future__ import annotations

import torch

from hazard.finetune import answer_logit_mask, weighted_answer_loss
from hazard.vlm import SequenceTooLong, collate, encode, logits_at, open_stored_image


def encode_batch(processor, batch: dict, prompt: str, max_length: int):
    """Encode a Ray Data numpy batch: (encoded samples, their answers, ids of skipped ones).

    A sample over max_length is skipped with a message naming its id, never truncated."""
    encoded, answers, skipped = [], [], []
    ids = batch["id"] if "id" in batch else [str(i) for i in range(len(batch["answer"]))]
    for sample_id, images, answer in zip(ids, batch["images"], batch["answer"], strict=True):
        pics = [open_stored_image(bytes(b)) for b in images]
        try:
            encoded.append(encode(processor, pics, prompt, str(answer), max_length))
        except SequenceTooLong as exc:
            print(f"[train] skipping sample {sample_id}: {exc}", flush=True)
            skipped.append(str(sample_id))
            continue
        answers.append(str(answer))
    return encoded, answers, skipped


def micro_batch_loss(
    engine, processor, encoded, answers, class_weights, scale: float = 1.0
) -> torch.Tensor:
    """The class-weighted answer loss of one micro-batch; logits only at answer positions.

    A rank whose micro-batch was skipped whole still has to take part in DeepSpeed's
    collectives: it passes an earlier micro-batch with `scale=0`, adding no gradient."""
    pad_id, image_id = processor.tokenizer.pad_token_id, processor.image_token_id
    weights = [class_weights.get(a, 1.0) for a in answers]
    inputs = {k: v.to(engine.device) for k, v in collate(encoded, pad_id, image_id).items()}
    labels = inputs.pop("labels")
    mask = answer_logit_mask(labels)
    logits = logits_at(engine, inputs, mask, use_cache=False)
    sample_w = torch.tensor(weights, device=engine.device)
    return weighted_answer_loss(logits, labels, mask, sample_w) * scale
