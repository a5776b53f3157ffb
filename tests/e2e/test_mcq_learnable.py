"""Fine-tuning beats no fine-tuning on a learnable multiple-choice set in the MAC format.

The test writes a MAC folder (LLaMA-Factory alpaca rows, `dataset_info.json` with one entry per
split, test rows with an `id` and no `output`) whose answer is learnable from the picture: the
cover's colour family names the option (red A, green B, blue C, grey D), each cover a different
shade, the option titles the same for every row. `configs/tiny/mcq_data.yaml` prepares it and
`configs/tiny/mcq.yaml` (shortened) fine-tunes the tiny model; `hazard eval` then scores the
labelled `val` split with the base model plus the best checkpoint's LoRA adapter against the
same base model without fine-tuning (the adapter's scores must equal those the bundle recorded
for `val` at export), and the unlabelled `test` split with the bundle for the submission file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from hazard.config import load_config
from hazard.config.data import DataConfig
from hazard.infra.bundle import read_meta
from pipelines.prepare import prepare
from ray_jobs.eval import main as eval_main
from ray_jobs.train import run as train_run
from tests.helpers.mac import COLUMNS, SYSTEM
from tests.helpers.train import REPO, kept_checkpoints, stage_config

pytestmark = pytest.mark.slow

FAMILIES = [(200, 40, 40), (40, 180, 60), (40, 70, 210), (128, 128, 128)]  # A, B, C, D
SIZES = {"train": 48, "dev": 12, "test": 8}
QUESTION = "<image>\nWhich title belongs to this cover?\n" + "\n".join(
    f"{o}. {t}" for o, t in zip("ABCD", ("Ember", "Canopy", "Tide", "Slate"), strict=True)
)


def _write_mac(root: Path) -> dict[str, list[dict]]:
    """The MAC folder; {entry: rows}."""
    entries: dict[str, list[dict]] = {}
    k = 0
    for split, n in SIZES.items():
        rows = []
        for i in range(n):
            family = i % 4
            shade = (k * 7) % 40 - 20  # a different shade of the family each time
            colour = tuple(max(0, min(255, c + shade)) for c in FAMILIES[family])
            rel = f"covers/{split}_{i:03d}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 64), colour).save(root / rel, format="PNG")
            row = {"system": SYSTEM["image2text"], "input": QUESTION, "images": [rel]}
            if split == "test":
                row |= {"id": f"mac-{i:03d}", "output": ""}
            else:
                row["output"] = "ABCD"[family]
            rows.append(row)
            k += 1
        entries[f"image2text_{split}"] = rows
    info = {name: {"file_name": f"{name}.json", "columns": COLUMNS} for name in entries}
    (root / "dataset_info.json").write_text(json.dumps(info, indent=1))
    for name, rows in entries.items():
        (root / f"{name}.json").write_text(json.dumps(rows, indent=1))
    return entries


@pytest.fixture(scope="module")
def run(ray_local, tmp_path_factory, tiny_model_path):
    root = tmp_path_factory.mktemp("mac")
    entries = _write_mac(root / "raw")
    data = root / "data"
    prepare(
        load_config(
            REPO / "configs/tiny/mcq_data.yaml",
            DataConfig,
            [f"source.uri={root / 'raw'}", f"output_dir={data}"],
        )
    )
    cfg = stage_config(
        data,
        root / "train",
        120,
        [
            "optim.warmup_steps=10",
            "optim.batch_size=8",
            "eval.every_steps=30",
            "checkpoint.every_steps=0",
            "scaling.num_workers=1",
            "scaling.cpus_per_worker=1",
        ],
        stage_file="configs/tiny/mcq.yaml",
    )
    train = train_run(cfg)
    model = root / "train" / "model"
    common = ["--data", str(data), "--set", "batch_size=8", "--set", "dataset=image2text"]
    # the best checkpoint's LoRA adapter over the base model, as a user evaluates a run
    adapter = kept_checkpoints(train["checkpoint_dir"])[train["best_step"]] / "adapter"
    val, test = root / "eval_val", root / "eval_test"
    base = str(tiny_model_path)
    assert eval_main(["--model", base, "--adapter", str(adapter), "--split", "val",
                      "--out", str(val), "--baseline", base, *common]) == 0  # fmt: skip
    assert eval_main(["--model", str(model), "--split", "test", "--out", str(test), *common]) == 0
    return {"entries": entries, "train": train, "val": val, "test": test, "bundle": model}


def test_fine_tuned_beats_the_base_model(run):
    report = json.loads((run["val"] / "metrics.json").read_text())
    preds = pq.read_table(run["val"] / "predictions.parquet").to_pylist()
    base = pq.read_table(run["val"] / "baseline" / "predictions.parquet").to_pylist()
    expected = [r["output"] for r in run["entries"]["image2text_dev"]]
    assert sorted(p["reference"] for p in preds) == sorted(expected)

    def accuracy(rows):
        return sum(r["prediction"] == r["reference"] for r in rows) / len(rows)

    tuned = report["tasks"]["multiple_choice"]["metrics"]["accuracy"]
    untuned = report["baseline"]["tasks"]["multiple_choice"]["metrics"]["accuracy"]
    assert tuned == pytest.approx(accuracy(preds)) and untuned == pytest.approx(accuracy(base))
    print(f"MAC-format val accuracy: fine-tuned {tuned:.3f}, base {untuned:.3f}")
    assert tuned >= untuned + 0.25, (tuned, untuned)
    comparison = report["comparison"]["multiple_choice"]
    assert comparison["model_is_better"] is True and comparison["figure"] == "accuracy"
    page = (run["val"] / "report.html").read_text()
    assert f"<td>{untuned:.4f}</td><td>{tuned:.4f}</td>" in page


def test_answers_file_has_one_valid_letter_per_test_id(run):
    answers = json.loads((run["test"] / "answers" / "image2text.json").read_text())
    ids = [r["id"] for r in run["entries"]["image2text_test"]]
    assert sorted(a["id"] for a in answers) == sorted(ids) and len(answers) == len(ids)
    assert all(a["output"] in ("A", "B", "C", "D") for a in answers)
    report = json.loads((run["test"] / "metrics.json").read_text())
    counts = report["tasks"]["multiple_choice"]["counts"]
    assert (
        counts["unlabelled"] == len(ids) and report["tasks"]["multiple_choice"]["metrics"] is None
    )


def test_base_plus_adapter_scores_as_its_bundle(run):
    """The bundle is the best checkpoint's adapter merged into the base: scoring the base with
    that adapter gives the probabilities the bundle's export recorded for `val`."""
    meta = read_meta(run["bundle"])
    merged = pq.read_table(run["val"] / "predictions.parquet").to_pylist()
    assert meta.labels == list("ABCD")
    recorded = meta.val_predictions.probabilities
    assert len(recorded) == len(merged)
    for row, probs in zip(merged, recorded, strict=True):
        assert [row[f"p_{o}"] for o in "ABCD"] == pytest.approx(probs, abs=1e-5)
    report = json.loads((run["val"] / "metrics.json").read_text())
    assert report["model"]["kind"] == "adapter" and report["model"]["adapter"].endswith("adapter")
