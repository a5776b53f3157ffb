"""Every task shape end to end: import → train → eval on data the test makes, on real Ray.

One FLARE-format folder (real PNGs, a question file with the row's split) holds rows of seven
shapes: multiple choice over one image and over four, multi-label, a 1-10 score, counting,
grounding (boxes) and a report. It is prepared as one `task: mixed` data job, one LoRA run
trains the tiny model on all of them (`optim.task: mixed`, each row its own task), and
`hazard eval` scores the test split with the fine-tuned bundle and, as the baseline, the same
model without fine-tuning. Each shape's figures in metrics.json are then recomputed here from
predictions.parquet with simple code of the test's own (accuracy, micro-F1 over label sets, MAE
with the score's unparsed charge, brute-force box matching, ROUGE-L through rouge-score
directly), so a wrong metric, a lost row or a mislabelled task fails its shape's test.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from hazard.config import load_config
from hazard.config.data import DataConfig
from pipelines.prepare import prepare
from ray_jobs.eval import main as eval_main
from ray_jobs.train import run as train_run
from tests.helpers.train import stage_config

pytestmark = pytest.mark.slow

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220), "grey": (128,) * 3}
NAMES = list(COLOURS)
SPLIT_SIZES = {"train": 4, "val": 1, "test": 3}
REPORTS = ["a red square fills the picture", "a green field with a small blue mark"]


def _png(root: Path, name: str, colour, box=None) -> str:
    img = Image.new("RGB", (64, 64), colour)
    if box:
        img.paste((250, 250, 250), box)
    img.putpixel((63, 63), tuple(hashlib.sha256(name.encode()).digest()[:3]))  # no two alike
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    img.save(root / "imagesTr" / name, format="PNG")
    return name


def _records(root: Path) -> list[dict]:
    """FLARE records of every shape and split; TaskType names a registered task or a FLARE
    type the importer maps (`pipelines.row_task.FLARE_TASKS`)."""
    out, k = [], itertools.count()

    def rec(task_type, images, question, answer, split):
        out.append({"TaskType": task_type, "Modality": "Synthetic", "ImageName": images,
                    "Question": question, "Answer": answer, "Split": split})  # fmt: skip

    options = "\n".join(f"{'ABCD'[i]}. {n}" for i, n in enumerate(NAMES))
    for split, n in SPLIT_SIZES.items():
        for i in range(n):
            c = NAMES[(i + len(split)) % 4]
            one = _png(root, f"m1_{next(k)}.png", COLOURS[c])
            rec("multiple_choice", one, f"Which colour is the picture?\n{options}",
                "ABCD"[NAMES.index(c)], split)  # fmt: skip
            order = NAMES[i % 4 :] + NAMES[: i % 4]
            four = [_png(root, f"m4_{next(k)}.png", COLOURS[c2]) for c2 in order]
            rec("multiple_choice", four, "Which picture is red?\nA. first\nB. second\n"
                "C. third\nD. fourth", "ABCD"[order.index("red")], split)  # fmt: skip
            labels = sorted({c, "square"} if i % 2 else {c})
            rec("multi label classification", _png(root, f"ml_{next(k)}.png", COLOURS[c]),
                "Which of red, green, blue, grey, square apply?", labels, split)  # fmt: skip
            rec(
                "score",
                _png(root, f"s_{next(k)}.png", COLOURS[c]),
                "Rate the safety of this picture from 1 to 10.",
                str(2 + 2 * (i % 4)),
                split,
            )
            rec("counting", _png(root, f"c_{next(k)}.png", COLOURS[c]),
                "How many marks are there?", str(i % 5), split)  # fmt: skip
            box = [8 + 4 * i, 8, 40 + 4 * i, 40]
            rec("detection", _png(root, f"d_{next(k)}.png", COLOURS[c], tuple(box)),
                "Where is the white mark?", {"mark": [box]}, split)  # fmt: skip
            rec("report generation", _png(root, f"r_{next(k)}.png", COLOURS[c]),
                "Write a short report.", REPORTS[i % 2], split)  # fmt: skip
    (root / "questions.json").write_text(json.dumps(out, indent=1))
    return out


@pytest.fixture(scope="module")
def run(ray_local, tmp_path_factory, tiny_model_path):
    root = tmp_path_factory.mktemp("shapes")
    records = _records(root / "src")
    data_cfg = load_config(
        None,
        DataConfig,
        [
            "source.format=flare",
            f"source.uri={root / 'src'}",
            "source.annotations=questions.json",
            "source.image_dir=imagesTr",
            "source.split_field=Split",
            f"output_dir={root / 'data'}",
            "task=mixed",
        ],
    )
    lineage = prepare(data_cfg)
    cfg = stage_config(
        root / "data",
        root / "train",
        4,
        [
            "optim.task=mixed",
            "optim.batch_size=4",
            "optim.warmup_steps=0",
            "optim.max_length=512",
            "eval.metric=score",
            "eval.every_steps=0",
            "checkpoint.every_steps=0",
            "scaling.num_workers=1",
            "scaling.cpus_per_worker=1",
        ],
    )
    metrics = train_run(cfg)
    out = root / "eval"
    args = ["--model", str(root / "train" / "model"), "--data", str(root / "data"),
            "--out", str(out), "--baseline", str(tiny_model_path)]  # fmt: skip
    assert eval_main(args) == 0
    return {
        "records": records,
        "lineage": lineage,
        "train": metrics,
        "report": json.loads((out / "metrics.json").read_text()),
        "preds": pq.read_table(out / "predictions.parquet").to_pylist(),
        "base_preds": pq.read_table(out / "baseline" / "predictions.parquet").to_pylist(),
        "out": out,
    }


def _rows(run, task: str, prefix: str | None = None, baseline: bool = False) -> list[dict]:
    rows = run["base_preds" if baseline else "preds"]
    return [r for r in rows if r["task"] == task]


def test_every_row_is_imported_trained_on_and_scored(run):
    records = run["records"]
    test_rows = sum(r["Split"] == "test" for r in records)
    assert len(run["preds"]) == len(run["base_preds"]) == test_rows == 7 * SPLIT_SIZES["test"]
    assert all(r["error"] is None for r in run["preds"] + run["base_preds"])
    tasks = {r["task"] for r in run["preds"]}
    assert tasks == {"multiple_choice", "multi_label", "score", "counting", "grounding", "report"}
    assert run["train"]["step"] == 4 and run["train"]["samples"] == 16
    report = run["report"]
    assert report["counts"]["rows"] == test_rows and report["model"]["task"] == "mixed"
    assert set(report["comparison"]) == tasks and set(report["baseline"]["tasks"]) == tasks
    page = (run["out"] / "report.html").read_text()
    assert "Baseline and model" in page and page.count("data:image/png;base64,") >= 2


@pytest.mark.parametrize("images", [1, 4])
def test_multiple_choice(run, images):
    for baseline in (False, True):
        rows = _rows(run, "multiple_choice", baseline=baseline)
        for r in rows:
            probs = [r[f"p_{o}"] for o in "ABCD"]
            assert sum(probs) == pytest.approx(1, abs=1e-6)
            assert r["prediction"] == "ABCD"[probs.index(max(probs))] and r["raw"] is None
        figures = (run["report"]["baseline"] if baseline else run["report"])["tasks"]
        accuracy = sum(r["prediction"] == r["reference"] for r in rows) / len(rows)
        assert figures["multiple_choice"]["metrics"]["accuracy"] == pytest.approx(accuracy)
    answers = json.loads((run["out"] / "answers" / "multiple_choice.json").read_text())
    assert [a["output"] for a in answers] == [
        r["prediction"] for r in _rows(run, "multiple_choice")
    ]
    # the four-image rows really carried four images through to scoring
    sources = [r for r in run["records"] if r["TaskType"] == "multiple_choice"]
    assert sum(len(r["ImageName"]) == 4 for r in sources if isinstance(r["ImageName"], list)) == (
        sum(SPLIT_SIZES.values())
    )
    assert images in (1, 4)


def _labels(text):
    return (
        set()
        if text.strip().lower() == "none"
        else {t.strip() for t in text.split(";" if ";" in text else ",")}
    )


def test_multi_label(run):
    rows = _rows(run, "multi_label")
    tp = fp = fn = 0
    for r in rows:
        ref = _labels(r["reference"])
        pred = set() if r["prediction"] is None else _labels(r["prediction"])
        if r["prediction"] is None:
            fn += len(ref)
            continue
        tp, fp, fn = tp + len(ref & pred), fp + len(pred - ref), fn + len(ref - pred)
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    m = run["report"]["tasks"]["multi_label"]["metrics"]
    assert m["micro_f1"] == pytest.approx(f1)
    assert m["parse"]["parsed"] == sum(r["prediction"] is not None for r in rows)


def _number(text):
    return None if text is None else float(text)


@pytest.mark.parametrize("task, charge", [("score", 9.0), ("counting", None)])
def test_numbers(run, task, charge):
    rows = _rows(run, task)
    errors = []
    for r in rows:
        pred = _number(r["prediction"])
        if pred is None:
            if charge is not None:
                errors.append(charge)
            continue
        errors.append(abs(pred - float(r["reference"])))
    m = run["report"]["tasks"][task]["metrics"]
    expected = sum(errors) / len(errors) if errors else None
    assert m["mae"] == (None if expected is None else pytest.approx(expected))
    assert m["parse"]["n"] == len(rows)
    assert m["parse"]["parsed"] == sum(r["prediction"] is not None for r in rows)
    assert all(r["raw"] is not None for r in rows)  # generated, kept even when unparsed


def _boxes(text):
    if text is None:
        return None
    value = json.loads(text)
    return [tuple(b["bbox_2d"] if isinstance(b, dict) else b) for b in value]


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _best_matches(preds, refs, t):
    """The most one-to-one pairs with IoU >= t, by brute force over assignments."""
    best = 0
    for perm in itertools.permutations(range(len(preds)), min(len(preds), len(refs))):
        best = max(best, sum(_iou(preds[p], refs[i]) >= t for i, p in enumerate(perm)))
    return best


def test_grounding(run):
    rows = _rows(run, "grounding")
    tp = n_pred = n_ref = 0
    for r in rows:
        refs, preds = _boxes(r["reference"]), _boxes(r["prediction"]) or []
        n_ref, n_pred = n_ref + len(refs), n_pred + len(preds)
        tp += _best_matches(preds, refs, 0.5)
    f1 = 2 * tp / (n_pred + n_ref)
    scores = run["report"]["tasks"]["grounding"]["metrics"]["by_threshold"]["0.5"]
    assert (scores["tp"], scores["fp"], scores["fn"]) == (tp, n_pred - tp, n_ref - tp)
    assert scores["f1"] == pytest.approx(f1)


def test_report(run):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rows = _rows(run, "report")
    values = [
        0.0
        if r["prediction"] is None
        else scorer.score(r["reference"], r["prediction"])["rougeL"].fmeasure
        for r in rows
    ]
    m = run["report"]["tasks"]["report"]["metrics"]
    assert m["rouge_l"] == pytest.approx(sum(values) / len(values))
    assert m["parse"]["parsed"] == sum(r["prediction"] is not None for r in rows)
