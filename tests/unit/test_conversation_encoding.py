"""Conversation SFT encoding: a sample is its own messages, loss on assistant tokens only.

Expected token positions are computed here on their own: the whole text is written out by hand
in the tiny model's chat format, and each assistant answer is tokenized alone and located
after its `<|im_start|>assistant\\n`. The fixed-prompt path is checked against the encoding the
cascade was trained with before conversations (processor over the prompt turn, tokenizer over
answer + `<|im_end|>`), written out here as the reference.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from hazard.core.tasks import CORRIDOR_RISK_PROMPT
from hazard.model.training.step import encode_batch, micro_batch_loss
from hazard.model.vlm import (
    END_OF_TURN,
    IGNORE_INDEX,
    SequenceTooLong,
    conversation_messages,
    encode,
    encode_conversation,
    prompt_text,
    template_messages,
)

SYSTEM = "You inspect corridors."
TURNS = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "<image>\nWhat is shown?"},
    {"role": "assistant", "content": "A corridor with boxes."},
    {"role": "user", "content": "And here <image>? Answer with a letter."},
    {"role": "assistant", "content": "B"},
]
ANSWERS = ["A corridor with boxes.", "B"]


def _two_images() -> list[Image.Image]:
    """Two pictures of different sizes, so their grids (and token counts) tell them apart."""
    return [Image.new("RGB", (112, 112), (200, 30, 30)), Image.new("RGB", (112, 84), (20, 90, 200))]


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _find(seq: list[int], sub: list[int]) -> list[int]:
    """Start positions of `sub` in `seq`."""
    return [i for i in range(len(seq) - len(sub) + 1) if seq[i : i + len(sub)] == sub]


@pytest.mark.parametrize("loss_turns", ["all", "last"])
def test_two_turn_two_image_sample_is_masked_token_by_token(tiny, loss_turns):
    _, processor = tiny
    tok = processor.tokenizer
    images = _two_images()
    enc = encode_conversation(
        processor, conversation_messages(TURNS), images, 512, loss_turns=loss_turns
    )
    # the images sit at their placeholders, in order, each sized by the image processor alone
    grids = [processor.image_processor(images=[im])["image_grid_thw"][0] for im in images]
    assert enc.image_grid_thw.tolist() == [g.tolist() for g in grids]
    n1, n2 = (int(g.prod()) // 4 for g in grids)  # 2x2 patches merge into one token
    assert n1 != n2 and enc.n_image_tokens == n1 + n2

    def image(n: int) -> str:
        return "<|vision_start|>" + "<|image_pad|>" * n + "<|vision_end|>"

    expected_text = (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
        f"<|im_start|>user\n{image(n1)}\nWhat is shown?<|im_end|>\n"
        f"<|im_start|>assistant\n{ANSWERS[0]}<|im_end|>\n"
        f"<|im_start|>user\nAnd here {image(n2)}? Answer with a letter.<|im_end|>\n"
        f"<|im_start|>assistant\n{ANSWERS[1]}<|im_end|>"
    )
    assert tok.decode(enc.input_ids) == expected_text

    header = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    starts = [i + len(header) for i in _find(enc.input_ids, header)]
    assert len(starts) == 2
    spans = []
    for start, answer in zip(starts, ANSWERS, strict=True):
        ids = tok(answer + END_OF_TURN, add_special_tokens=False)["input_ids"]
        assert enc.input_ids[start : start + len(ids)] == ids
        spans.append(range(start, start + len(ids)))
    kept = spans if loss_turns == "all" else spans[-1:]
    expected = [IGNORE_INDEX] * len(enc.input_ids)
    for span in kept:
        for i in span:
            expected[i] = enc.input_ids[i]
    assert enc.labels == expected
    image_positions = [i for i, t in enumerate(enc.input_ids) if t == processor.image_token_id]
    assert len(image_positions) == n1 + n2
    assert all(enc.labels[i] == IGNORE_INDEX for i in image_positions)
    # the labelled tokens end each kept turn with its end-of-turn token
    end = tok.convert_tokens_to_ids(END_OF_TURN)
    assert [enc.labels[s[-1]] for s in kept] == [end] * len(kept)


def _reference_encode(processor, images, prompt, answer):
    """The fixed-prompt encoding as it was before conversations: the processor over the user
    turn (ending at the generation prompt), the tokenizer over answer + end of turn."""
    enc = processor(
        text=[prompt_text(processor, prompt, len(images))], images=images, return_tensors="pt"
    )
    prompt_ids = enc["input_ids"][0].tolist()
    answer_ids = processor.tokenizer(answer + END_OF_TURN, add_special_tokens=False)["input_ids"]
    return (
        prompt_ids + answer_ids,
        [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
        enc["pixel_values"],
        enc["image_grid_thw"],
    )


@pytest.mark.parametrize("n_images", [1, 2])
def test_a_template_row_encodes_as_before(tiny, n_images):
    _, processor = tiny
    images = _two_images()[:n_images]
    ids, labels, pixels, grid = _reference_encode(
        processor, images, CORRIDOR_RISK_PROMPT, "medium_risk"
    )
    messages = template_messages(CORRIDOR_RISK_PROMPT, "medium_risk", n_images)
    for loss_turns in ("all", "last"):
        got = encode_conversation(processor, messages, images, 512, loss_turns=loss_turns)
        assert got.input_ids == ids and got.labels == labels
        assert torch.equal(got.pixel_values, pixels) and torch.equal(got.image_grid_thw, grid)
    old = encode(processor, images, CORRIDOR_RISK_PROMPT, "medium_risk", 512)
    assert old.input_ids == ids and old.labels == labels
    assert torch.equal(old.pixel_values, pixels)
    # without an answer (what scoring reads): the prompt alone, ending at the generation prompt
    asked = encode(processor, images, CORRIDOR_RISK_PROMPT, None, 512)
    n_answer = len(ids) - labels.count(IGNORE_INDEX)
    assert asked.input_ids == ids[:-n_answer]
    assert asked.labels == [IGNORE_INDEX] * len(asked.input_ids)


def test_image_placeholders_and_images_must_match_in_number(tiny):
    _, processor = tiny
    with pytest.raises(ValueError, match=r"2 <image> place\(s\) but 1 image"):
        encode_conversation(processor, conversation_messages(TURNS), _two_images()[:1], 512)
    one = [{"role": "user", "content": "<image> What?"}, {"role": "assistant", "content": "A"}]
    with pytest.raises(ValueError, match=r"1 <image> place\(s\) but 2 image"):
        encode_conversation(processor, conversation_messages(one), _two_images(), 512)


@pytest.mark.parametrize(
    ("turns", "match"),
    [
        ([{"role": "assistant", "content": "A"}], "role 'assistant' where 'user'"),
        (
            [{"role": "user", "content": "<image>"}, {"role": "user", "content": "again"}],
            "role 'user' where 'assistant'",
        ),
        (
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<image>"}],
            "only user turns",
        ),
        ([{"role": "user", "content": ["not text"]}], "is not"),
        ([], "non-empty list"),
    ],
)
def test_malformed_turns_are_named(turns, match):
    with pytest.raises(ValueError, match=match):
        conversation_messages(turns)


def test_an_over_long_conversation_is_refused_not_truncated(tiny):
    _, processor = tiny
    messages = conversation_messages(TURNS)
    need = len(encode_conversation(processor, messages, _two_images(), 4096).input_ids)
    assert encode_conversation(processor, messages, _two_images(), need).input_ids
    with pytest.raises(SequenceTooLong, match="image tokens"):
        encode_conversation(processor, messages, _two_images(), need - 1)


def _conversation_batch():
    pics = _two_images()
    one = [{"role": "user", "content": "Which? <image>"}, {"role": "assistant", "content": "C"}]
    return {
        "id": np.array(["two-turns", "one-turn", "no-turns"]),
        "images": [[_png(p) for p in pics], [_png(pics[0])], [_png(pics[1])]],
        "answer": np.array(["B", "C", "D"], dtype=object),
        "conversation": np.array([json.dumps(TURNS), json.dumps(one), None], dtype=object),
    }


def test_encode_batch_takes_the_rows_turns_for_a_row_task(tiny):
    _, processor = tiny
    batch = _conversation_batch()
    encoded, answers, skipped = encode_batch(
        processor, batch, "Answer with a letter.", 512, from_row=True, loss_turns="all"
    )
    assert answers == ["B", "C", "D"] and skipped == []
    assert (
        encoded[0].input_ids
        == encode_conversation(
            processor, conversation_messages(TURNS), _two_images(), 512, "all"
        ).input_ids
    )
    assert encoded[0].labels.count(IGNORE_INDEX) < len(encoded[0].labels) - 2  # both turns
    # a row without turns is asked the task's prompt
    plain = encode(processor, _two_images()[1:], "Answer with a letter.", "D", 512)
    assert encoded[2].input_ids == plain.input_ids and encoded[2].labels == plain.labels
    # a template task ignores the turns
    encoded, _, _ = encode_batch(processor, batch, CORRIDOR_RISK_PROMPT, 512)
    ref = encode(processor, _two_images(), CORRIDOR_RISK_PROMPT, "B", 512)
    assert encoded[0].input_ids == ref.input_ids


def test_unlabelled_rows_are_never_trained_on(tiny):
    _, processor = tiny
    batch = _conversation_batch()
    batch["answer"] = np.array(["B", None, "D"], dtype=object)
    for from_row in (True, False):
        with pytest.raises(ValueError, match="one-turn has no answer"):
            encode_batch(processor, batch, "Answer.", 512, from_row=from_row)
    del batch["conversation"]
    with pytest.raises(ValueError, match="no conversation"):
        encode_batch(processor, batch, "Answer.", 512, from_row=True)


def test_the_training_loss_counts_only_assistant_tokens(tiny):
    """The step's loss on a two-row conversation batch equals a cross-entropy computed from a
    full forward at the assistant tokens alone, and is finite."""
    model, processor = tiny
    encoded, answers, _ = encode_batch(
        processor, _conversation_batch(), "Answer.", 512, from_row=True, loss_turns="all"
    )
    encoded, answers = encoded[:2], answers[:2]
    with torch.no_grad():
        loss = micro_batch_loss(model, processor, encoded, answers, {})
    assert torch.isfinite(loss)
    terms = []
    for e in encoded:  # each row alone, unpadded
        ids = torch.tensor([e.input_ids])
        inputs = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "mm_token_type_ids": (ids == processor.image_token_id).int(),
            "pixel_values": e.pixel_values,
            "image_grid_thw": e.image_grid_thw,
        }
        with torch.no_grad():
            logp = torch.log_softmax(model(**inputs).logits[0].float(), -1)
        for pos, label in enumerate(e.labels):
            if label != IGNORE_INDEX:
                assert e.input_ids[pos] == label
                terms.append(-logp[pos - 1, label])
    assert len(terms) == sum(lab != IGNORE_INDEX for e in encoded for lab in e.labels)
    torch.testing.assert_close(loss, torch.stack(terms).mean(), atol=1e-5, rtol=1e-5)
