"""`hazard score-dataset` with `model_uri`: one task's bundle over a prepared Parquet split
(multiple_choice: the rows' own turns, one to four images) and over a folder of images
(high_risk_binary, the template prompt), through Ray Data's actor pool. Each row's
probabilities are checked against `choice_log_likelihoods`, softmaxed, computed here."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from hazard.config.score import ScoreDatasetConfig
from hazard.core.schema import IMAGE_PLACEHOLDER
from hazard.core.tasks import get_task
from hazard.model.vlm import (
    choice_log_likelihoods,
    conversation_messages,
    load_model,
    load_processor,
    open_stored_image,
    template_messages,
)
from pipelines.score import score_dataset
from tests.helpers.serve import image_bytes, make_bundle

pytestmark = pytest.mark.slow

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)]


def _expected(bundle, samples, choices) -> list[dict[str, float]]:
    """softmax(choice_log_likelihoods) per (messages, image bytes), one sample at a time."""
    model, processor = load_model(bundle), load_processor(bundle)
    out = []
    for messages, images in samples:
        pics = [open_stored_image(d) for d in images]
        logp = choice_log_likelihoods(model, processor, [(messages, pics)], tuple(choices))
        out.append(dict(zip(choices, torch.softmax(logp, dim=-1)[0].tolist(), strict=True)))
    return out


def test_multiple_choice_split(tmp_path, tiny_model_path, ray_local):
    bundle = make_bundle(
        tiny_model_path, tmp_path / "mcq", "mcq-t", "1.0", "base", task="multiple_choice"
    )
    rows, samples = [], []
    for i, n in enumerate((1, 4, 2)):
        images = [image_bytes((56 + 8 * k, 48), COLOURS[(i + k) % 4]) for k in range(n)]
        turns = [
            {"role": "user", "content": IMAGE_PLACEHOLDER * n + f"Question {i}? A, B, C or D."},
            {"role": "assistant", "content": "B"},  # the reference: never shown to the model
        ]
        rows.append({"id": f"r{i}", "images": images, "conversation": json.dumps(turns)})
        samples.append((conversation_messages(turns[:1]), images))
    rows.append({"id": "bad", "images": [b"not an image"], "conversation": rows[0]["conversation"]})
    split = tmp_path / "split"
    split.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), split / "part-0.parquet")
    cfg = ScoreDatasetConfig(
        source=str(split), model_uri=str(bundle), output_dir=str(tmp_path / "out"), batch_size=2
    )
    summary = score_dataset(cfg)
    got = pq.read_table(tmp_path / "out" / "predictions.parquet").to_pylist()
    assert [r["id"] for r in got] == ["r0", "r1", "r2", "bad"]
    for row, want in zip(got, _expected(bundle, samples, "ABCD"), strict=False):
        assert row["error"] is None
        for choice, p in want.items():
            assert row[f"p_{choice}"] == pytest.approx(p, abs=1e-5)
        assert row["answer"] == max(want, key=want.get)
    assert got[3]["error"] == "undecodable" and got[3]["answer"] is None
    answers = json.loads((tmp_path / "out" / "answers" / "multiple_choice.json").read_text())
    assert answers == [{"id": r["id"], "output": r["answer"] or ""} for r in got]
    assert summary["task"] == "multiple_choice" and summary["listed"] == 4
    assert summary["failed_by_reason"] == {"undecodable": 1}


def test_template_task_folder(tmp_path, tiny_model_path, ray_local):
    bundle = make_bundle(
        tiny_model_path, tmp_path / "bin", "bin-t", "1.0", "base", task="high_risk_binary"
    )
    folder = tmp_path / "images"
    folder.mkdir()
    images = {f"img{i}.png": image_bytes((64, 40 + 8 * i), c) for i, c in enumerate(COLOURS)}
    for name, data in images.items():
        (folder / name).write_bytes(data)
    cfg = ScoreDatasetConfig(
        source=str(folder), model_uri=str(bundle), output_dir=str(tmp_path / "out")
    )
    summary = score_dataset(cfg)
    spec = get_task("high_risk_binary")
    got = pq.read_table(tmp_path / "out" / "predictions.parquet").to_pylist()
    assert [r["id"] for r in got] == sorted(images)
    asked = [(template_messages(spec.prompt, None, 1), [images[r["id"]]]) for r in got]
    for row, want in zip(got, _expected(bundle, asked, spec.labels), strict=True):
        for choice, p in want.items():
            assert row[f"p_{choice}"] == pytest.approx(p, abs=1e-5)
        assert row["answer"] == max(want, key=want.get) and row["error"] is None
    assert summary["scored"] == len(images)
    # a row-prompt task has no question in a folder of images: refused before scoring
    mcq = make_bundle(
        tiny_model_path, tmp_path / "mcq", "mcq-t", "1.0", "base", task="multiple_choice"
    )
    with pytest.raises(ValueError, match="own prompt"):
        score_dataset(cfg.model_copy(update={"model_uri": str(mcq)}))
