"""hazard/model/answering.py on the tiny Qwen2.5-VL: what a row is asked, batched generation,
and likelihood answers (CPU, fp32)."""

from __future__ import annotations

import copy
import io
import json
import math

import pytest
import torch
from PIL import Image

from hazard.core.decoding import Decoding
from hazard.core.tasks import get_task
from hazard.model.answering import Answerer, ask_messages, generate_texts
from hazard.model.vlm import choice_log_likelihoods, encode_conversation

IMAGE = {"type": "image"}


def _png(colour: tuple[int, int, int], size: tuple[int, int] = (56, 56)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _turns(*turns: tuple[str, str]) -> str:
    return json.dumps([{"role": r, "content": c} for r, c in turns])


# --- ask_messages (no model) ---------------------------------------------------------------------


def test_a_template_task_is_asked_its_prompt_after_its_images():
    spec = get_task("corridor_risk")
    stored = _turns(("user", "<image>ignored"), ("assistant", "no_risk"))
    for conversation in (None, stored):  # a template task never reads the row's turns
        assert ask_messages(spec, "Grade it.", 2, conversation) == [
            {"role": "user", "content": [IMAGE, IMAGE, {"type": "text", "text": "Grade it."}]}
        ]


def test_a_labelled_row_loses_its_last_assistant_turn():
    spec = get_task("multiple_choice")
    conversation = _turns(
        ("user", "<image>\nWhich?"), ("assistant", "A"), ("user", "And now?"), ("assistant", "B")
    )
    assert ask_messages(spec, "unused", 1, conversation) == [
        {"role": "user", "content": [IMAGE, {"type": "text", "text": "\nWhich?"}]},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "And now?"},
    ]


def test_a_system_turn_is_kept():
    spec = get_task("vqa")
    conversation = _turns(
        ("system", "Be brief."), ("user", "What?<image>"), ("assistant", "A cat.")
    )
    assert ask_messages(spec, "unused", 1, conversation) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What?"}, IMAGE]},
    ]


def test_an_unlabelled_row_is_kept_whole():
    spec = get_task("multiple_choice")
    conversation = _turns(("user", "<image>First?"), ("assistant", "C"), ("user", "Then?"))
    assert ask_messages(spec, "unused", 1, conversation) == [
        {"role": "user", "content": [IMAGE, {"type": "text", "text": "First?"}]},
        {"role": "assistant", "content": "C"},
        {"role": "user", "content": "Then?"},
    ]


def test_malformed_turns_are_a_value_error():
    with pytest.raises(ValueError, match="role"):
        ask_messages(get_task("vqa"), "p", 1, _turns(("assistant", "x"), ("user", "<image>")))


# --- the tiny model -----------------------------------------------------------------------------

QUESTIONS = [
    "What?",
    "What colour is the large square in the middle of this picture?",
    "Describe the picture, its colours and its shapes, in a few short words for a report.",
]
COLOURS = [(220, 30, 30), (30, 200, 40), (30, 60, 220)]


def _samples(tiny) -> list:
    model, processor = tiny
    answerer = Answerer(model, processor, get_task("vqa"))
    return [
        answerer.sample([_png(c)], _turns(("user", f"<image>{q}")))
        for q, c in zip(QUESTIONS, COLOURS, strict=True)
    ]


def test_batched_greedy_generation_equals_each_sample_alone(tiny):
    model, processor = tiny
    samples = _samples(tiny)
    lengths = {len(encode_conversation(processor, m, i, 4096).input_ids) for m, i in samples}
    assert len(lengths) == 3  # three prompt lengths: the batch is left-padded
    decoding = Decoding(max_new_tokens=12)
    batched = generate_texts(model, processor, samples, decoding)
    alone = [generate_texts(model, processor, [s], decoding)[0] for s in samples]
    assert batched == alone
    assert any(batched), batched  # something was generated, so the comparison means something


@pytest.fixture(scope="module")
def mcq_samples(tiny):
    model, processor = tiny
    answerer = Answerer(model, processor, get_task("multiple_choice"))
    question = "<image>Which colour?\nA. red\nB. green\nC. blue\nD. grey"
    return [answerer.sample([_png(c)], _turns(("user", question))) for c in COLOURS]


def test_likelihood_answers_are_the_softmaxed_log_likelihoods(tiny, mcq_samples):
    model, processor = tiny
    spec = get_task("multiple_choice")
    answers = Answerer(model, processor, spec).answer(mcq_samples)
    logp = choice_log_likelihoods(model, processor, mcq_samples, spec.labels).tolist()
    for answer, row in zip(answers, logp, strict=True):
        z = sum(math.exp(v) for v in row)
        expected = {c: math.exp(v) / z for c, v in zip(spec.labels, row, strict=True)}
        assert answer.probs == pytest.approx(expected, abs=1e-6)
        assert answer.prediction == max(expected, key=expected.get)
        assert answer.raw is None


def test_ties_go_to_the_first_choice(tiny, mcq_samples):
    """With the output layer zeroed every next token is equally likely: the letters tie."""
    model, processor = tiny
    flat = copy.deepcopy(model)
    with torch.no_grad():
        flat.lm_head.weight.zero_()
    for choices in (("A", "B", "C", "D"), ("C", "A", "D", "B")):
        answerer = Answerer(flat, processor, get_task("multiple_choice"), choices=choices)
        for answer in answerer.answer(mcq_samples):
            assert answer.probs == pytest.approx(dict.fromkeys(choices, 0.25))
            assert answer.prediction == choices[0]
