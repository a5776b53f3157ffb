"""The tiny Qwen2.5-VL checkpoint, input encoding and label scoring."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from hazard.core.labels import RISK_LABELS
from hazard.demo.synthetic import render_scene
from hazard.demo.tiny_qwen import SPECIAL_TOKENS
from hazard.model.vlm import (
    IGNORE_INDEX,
    SequenceTooLong,
    collate,
    encode,
    first_tokens_collide,
    label_log_likelihoods,
    label_probabilities,
    label_token_ids,
    logits_at,
)


def _images(n: int, seed: int = 0) -> list[list[Image.Image]]:
    rng = np.random.default_rng(seed)
    return [[render_scene(RISK_LABELS[i % 5], rng)[0]] for i in range(n)]


def test_checkpoint_is_a_standard_qwen2_5_vl(tiny_model_path):
    config = json.loads((tiny_model_path / "config.json").read_text())
    assert config["model_type"] == "qwen2_5_vl"
    assert config["vision_config"]["depth"] == 2
    assert list(tiny_model_path.glob("*.safetensors")), "weights must be safetensors"
    assert not list(tiny_model_path.glob("*.bin"))
    info = json.loads((tiny_model_path / "hazard_tiny.json").read_text())
    assert info["final_loss"] < info["first_loss"] / 2, "pre-training must have learned"


def test_tokenizer_has_qwen_special_tokens_and_round_trips(tiny):
    _, processor = tiny
    tok = processor.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS) and tok.unk_token_id not in ids[1:]
    text = "Grade the fire risk: high_risk, 7/10 (été)!"
    assert tok.decode(tok(text)["input_ids"]) == text


def test_chat_template_places_image_and_generation_prompt(tiny):
    _, processor = tiny
    from hazard.model.vlm import prompt_text

    text = prompt_text(processor, "Grade it.", n_images=2)
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 2
    assert text.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>user\n" in text


def test_encode_masks_prompt_and_image_tokens(tiny):
    _, processor = tiny
    enc = encode(processor, _images(1)[0], "Grade it.", "medium_risk", max_length=256)
    assert enc.n_image_tokens == 16  # 112x112 -> 8x8 patches -> 2x2 merge
    answer = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE_INDEX]
    assert processor.tokenizer.decode(answer) == "medium_risk<|im_end|>"
    masked = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab == IGNORE_INDEX]
    assert processor.image_token_id in masked


def test_encode_refuses_to_truncate_through_image_tokens(tiny):
    _, processor = tiny
    with pytest.raises(SequenceTooLong, match="image tokens"):
        encode(processor, _images(1)[0], "Grade it.", "no_risk", max_length=20)


def test_collate_pads_and_forward_gives_a_loss(tiny):
    model, processor = tiny
    batch = [
        encode(processor, imgs, "Grade.", lab, 256)
        for imgs, lab in zip(_images(2), ["no_risk", "non_corridor"], strict=True)
    ]
    inputs = collate(batch, processor.tokenizer.pad_token_id, processor.image_token_id)
    assert inputs["input_ids"].shape == inputs["labels"].shape
    with torch.no_grad():
        loss = model(**inputs).loss
    assert torch.isfinite(loss)


def _ragged_batch(processor):
    """Three right-padded samples of different lengths (image counts, prompts, answers)."""
    imgs = [i[0] for i in _images(4, seed=3)]
    samples = [
        ([imgs[0]], "Grade.", "no_risk"),
        ([imgs[1], imgs[2]], "Grade both photos.", "medium_risk"),
        ([imgs[3]], "Grade this corridor photo, please, with care.", "non_corridor"),
    ]
    batch = [encode(processor, pics, prompt, label, 512) for pics, prompt, label in samples]
    assert len({len(e.input_ids) for e in batch}) == 3
    return collate(batch, processor.tokenizer.pad_token_id, processor.image_token_id)


def test_logits_at_equals_a_full_forward_at_the_answer_positions(tiny):
    """Training's read-out (several answer positions per sample, ragged rows) matches a plain
    full forward's logits at the same positions, in the same order."""
    from hazard.model.finetune import answer_logit_mask

    model, processor = tiny
    inputs = _ragged_batch(processor)
    labels = inputs.pop("labels")
    mask = answer_logit_mask(labels)
    assert mask.sum(dim=1).tolist() == (labels != IGNORE_INDEX).sum(dim=1).tolist()
    with torch.no_grad():
        full = model(**inputs).logits
        got = logits_at(model, inputs, mask)
    assert got.shape == (int(mask.sum()), full.shape[-1])
    torch.testing.assert_close(got, full[mask], atol=1e-5, rtol=0)


def test_label_read_out_equals_a_full_forward_at_each_last_token(tiny):
    """Serving's read-out: one position per row, at different columns in a padded batch."""
    model, processor = tiny
    imgs = [i[0] for i in _images(3, seed=5)]
    images = [[imgs[0]], [imgs[1], imgs[2]], [imgs[2]]]
    prompt = "Grade."
    got = label_log_likelihoods(model, processor, images, prompt, RISK_LABELS)
    firsts = [ids[0] for ids in label_token_ids(processor, RISK_LABELS)]
    for i, pics in enumerate(images):  # each sample alone, unpadded, full logits
        enc = encode(processor, pics, prompt, None, 512)
        inputs = collate([enc], processor.tokenizer.pad_token_id, processor.image_token_id)
        inputs.pop("labels")
        with torch.no_grad():
            logp = torch.log_softmax(model(**inputs).logits[0, -1].float(), -1)
        torch.testing.assert_close(got[i], logp[firsts], atol=1e-5, rtol=0)


def test_label_probabilities_are_a_distribution(tiny):
    model, processor = tiny
    probs = label_probabilities(model, processor, _images(3), "Grade.", RISK_LABELS)
    assert probs.shape == (3, 5)
    assert torch.allclose(probs.sum(dim=1), torch.ones(3), atol=1e-5)


def test_colliding_labels_use_whole_sequence_likelihood(tiny):
    model, processor = tiny
    labels = ("no_risk", "no_fire")  # both start with the token "no"
    ids = label_token_ids(processor, labels)
    assert first_tokens_collide(ids)
    images = _images(2)
    got = label_log_likelihoods(model, processor, images, "Grade.", labels)
    # Reference: score each prompt+label sequence on its own, token by token.
    for i, imgs in enumerate(images):
        for j, label in enumerate(labels):
            enc = encode(processor, imgs, "Grade.", label, 256)
            inputs = collate([enc], processor.tokenizer.pad_token_id, processor.image_token_id)
            targets = inputs.pop("labels")[0]
            with torch.no_grad():
                logp = torch.log_softmax(model(**inputs).logits[0, :-1].float(), -1)
            want = sum(
                logp[t - 1, targets[t]].item()
                for t in range(1, len(targets))
                if targets[t] != IGNORE_INDEX
            )
            assert got[i, j].item() == pytest.approx(want, abs=1e-3)


def test_max_pixels_caps_image_tokens_and_is_saved_with_the_processor(tiny_model_path, tmp_path):
    from transformers import AutoProcessor

    from hazard.model.vlm import load_processor

    capped = load_processor(tiny_model_path, max_pixels=28 * 28 * 8)
    big = [Image.new("RGB", (400, 300))]
    assert encode(capped, big, "Grade.", None, 4096).n_image_tokens <= 8
    capped.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert encode(reloaded, big, "Grade.", None, 4096).n_image_tokens <= 8
