"""Conversation SFT through the real training job: Ray Train, DeepSpeed, LoRA, one CPU worker.

Two prepared rows of a task whose prompt comes from the row (`multiple_choice`), each a
two-turn, two-image conversation. LoRA's B matrices start at zero, so the first optimizer
step's loss is the untouched tiny model's: it must equal a cross-entropy computed here from a
plain forward at the assistant tokens alone (both turns, or the last), and stay finite.
"""

from __future__ import annotations

import io
import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from hazard.core.schema import SAMPLE_SCHEMA, content_hash
from hazard.model.vlm import END_OF_TURN, load_model, load_processor
from ray_jobs.train import run
from tests.helpers.train import stage_config

pytestmark = pytest.mark.slow


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (112, 112), colour).save(buf, "PNG")
    return buf.getvalue()


def _turns(k: int, answer: str) -> list[dict]:
    return [
        {"role": "system", "content": "You compare journal covers."},
        {"role": "user", "content": f"<image>\nDescribe cover {k}."},
        {"role": "assistant", "content": f"Cover {k} is red."},
        {"role": "user", "content": "Is this <image> the same journal? A. yes B. no"},
        {"role": "assistant", "content": answer},
    ]


ROWS = [(0, "A", (200, 30, 30), (200, 30, 30)), (1, "B", (30, 200, 30), (30, 30, 200))]


def _write(data_dir) -> None:
    """train and val splits of the two conversation rows, in the sample schema."""
    for split in ("train", "val"):
        rows = []
        for k, answer, c1, c2 in ROWS:
            images = [_png(c1), _png(c2)]
            turns = _turns(k, answer)
            rows.append(
                {
                    "id": f"{split}-{k}",
                    "images": images,
                    "task": "multiple_choice",
                    "prompt": turns[-2]["content"].replace("<image>", "").strip(),
                    "answer": answer,
                    "split": split,
                    "source_uri": f"test://{k}",
                    "content_hash": content_hash(images),
                    "parent_id": None,
                    "aug_ops": [],
                    "conversation": json.dumps(turns),
                    "consistency_score": None,
                }
            )
        (data_dir / split).mkdir(parents=True)
        pq.write_table(
            pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA), data_dir / split / "part.parquet"
        )


def _assistant_ce(model_path, last_only: bool) -> float:
    """Mean cross-entropy of the assistant tokens (content + end of turn) of both rows, from a
    plain forward of each whole conversation, located by tokenizing each answer on its own."""
    model, processor = load_model(model_path).eval(), load_processor(model_path)
    tok = processor.tokenizer
    header = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    terms = []
    for k, answer, c1, c2 in ROWS:
        turns = _turns(k, answer)
        messages = []
        for t in turns:
            content = t["content"]
            if "<image>" in content:
                before, after = content.split("<image>")
                content = [
                    *([{"type": "text", "text": before}] if before else []),
                    {"type": "image"},
                    {"type": "text", "text": after},
                ]
            messages.append({"role": t["role"], "content": content})
        text = processor.apply_chat_template(messages, tokenize=False)
        text = text[: text.rindex(END_OF_TURN) + len(END_OF_TURN)]  # ends at the last answer
        images = [Image.open(io.BytesIO(_png(c))).convert("RGB") for c in (c1, c2)]
        inputs = processor(text=[text], images=images, return_tensors="pt")
        ids = inputs["input_ids"][0].tolist()
        with torch.no_grad():
            logp = torch.log_softmax(model(**inputs).logits[0].float(), -1)
        starts = [i + len(header) for i in range(len(ids)) if ids[i : i + len(header)] == header]
        answers = [turns[2]["content"], answer]
        spans = list(zip(starts, answers, strict=True))
        for start, content in spans[-1:] if last_only else spans:
            target = tok(content + END_OF_TURN, add_special_tokens=False)["input_ids"]
            assert ids[start : start + len(target)] == target
            terms += [-logp[start + j - 1, t].item() for j, t in enumerate(target)]
    return sum(terms) / len(terms)


@pytest.mark.parametrize("loss_turns", ["all", "last"])
def test_first_step_loss_counts_only_assistant_tokens(
    tmp_path, ray_local, tiny_model_path, loss_turns
):
    _write(tmp_path / "data")
    cfg = stage_config(
        tmp_path / "data",
        tmp_path / "out",
        2,
        [
            "optim.task=multiple_choice",
            f"optim.loss_turns={loss_turns}",
            "optim.batch_size=2",
            "optim.warmup_steps=0",
            "scaling.num_workers=1",
            "checkpoint.every_steps=0",
        ],
    )
    metrics = run(cfg)
    losses = [s["loss"] for s in metrics["history"]["steps"]]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    expected = _assistant_ce(tiny_model_path, last_only=loss_turns == "last")
    assert losses[0] == pytest.approx(expected, rel=1e-4)
