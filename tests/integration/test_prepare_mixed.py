"""A FLARE question file and a mixed-task LLaVA file, each prepared in one run on real Ray.

FLARE: the test writes real PNGs and a question file of every FLARE task type plus one bad
row of each kind (tests/helpers/flare.py: missing image, a box that is not one, a pixel box
outside its image, unparseable number, answer outside a closed set, unknown TaskType, bad Split)
and prepares it with `task: mixed`; the lineage's per-task and per-reason counts must equal what
the test computes from the rows it wrote, and each kept detection row's answer (pixels, one of
them over 1000 on a 1200 x 800 image) must come out in 0-1000 as computed by hand.
LLaVA: rows of five task shapes without a task key; each written row's task must be the one
its answer's shape gives, row by row.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hazard.config.data import AugmentConfig, DataConfig, RayConfig, SourceConfig
from hazard.core.schema import SPLITS
from hazard.core.tasks import get_task
from pipelines.prepare import prepare
from tests.helpers.flare import (
    DECODE_REASONS,
    IMAGE_DIR,
    NORM_ANSWERS,
    flare_rows,
    png,
    write_flare,
)

COPIES = 1
IMPORT_REASONS = {"bad_answer", "unknown_task", "bad_split", "unknown_label"}
BOX_TASKS = {"grounding", "instance_detection"}


def _written(out: Path) -> list[dict]:
    return [r for s in SPLITS for r in pq.read_table(out / s).to_pylist()]


@pytest.fixture(scope="module")
def flare_run(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("flare")
    cases = flare_rows(root)
    out = tmp_path_factory.mktemp("prepared_flare")
    config = DataConfig(
        source=SourceConfig(
            format="flare",
            uri=str(root),
            annotations=write_flare(root, [c[0] for c in cases]),
            image_dir=IMAGE_DIR,
            split_field="Split",
        ),
        output_dir=str(out),
        task="mixed",
        augment=AugmentConfig(copies=COPIES, seed=0),
        ray=RayConfig(batch_size=4),
    )
    return cases, prepare(config), out


def _expected_tasks(cases) -> dict[str, dict]:
    """Per task: accepted originals, rejected by reason, written rows (copies included)."""
    rejected_task = {"missing_file": "classification", "bad_split": "classification"}
    rejected_task["unknown_label"] = "multiple_choice"
    out: dict[str, dict] = {}
    for record, expect, split in cases:
        if expect == "unknown_task":
            continue  # no task known: counted in the quarantine only
        if expect in IMPORT_REASONS | DECODE_REASONS:
            task = (
                rejected_task.get(expect)
                or {
                    "Detection": "grounding",
                    "Regression": "regression",
                    "Cell Counting": "counting",
                }[record["TaskType"]]
            )
            c = out.setdefault(task, {"accepted": 0, "rejected": Counter(), "written": 0})
            c["rejected"][expect] += 1
            continue
        c = out.setdefault(expect, {"accepted": 0, "rejected": Counter(), "written": 0})
        c["accepted"] += 1
        c["written"] += 1 + (COPIES if split == "train" and expect not in BOX_TASKS else 0)
    return {t: {**c, "rejected": dict(c["rejected"])} for t, c in sorted(out.items())}


def test_flare_counts_per_task_equal_the_rows_written(flare_run):
    cases, report, out = flare_run
    assert report["tasks"] == _expected_tasks(cases)
    assert report["invariants"]["ok"]
    written = Counter(r["task"] for r in _written(out))
    assert written == {t: c["written"] for t, c in report["tasks"].items() if c["written"]}


def test_flare_quarantine_by_reason(flare_run):
    cases, report, out = flare_run
    bad = [e for _, e, _ in cases if e in IMPORT_REASONS | DECODE_REASONS]
    assert report["quarantine"]["by_reason"] == dict(sorted(Counter(bad).items()))
    table = pq.read_table(out / "quarantine.parquet").to_pylist()
    assert Counter(r["reason"] for r in table) == Counter(bad)


def test_flare_splits_and_no_copy_of_a_box_row(flare_run):
    cases, report, out = flare_run
    rows = _written(out)
    originals = [r for r in rows if r["parent_id"] is None]
    kept = [(rec, e, s) for rec, e, s in cases if e not in IMPORT_REASONS | DECODE_REASONS]
    names = {"train": "train", "Validation": "val", "val": "val", "test": "test"}
    assert Counter(r["split"] for r in originals) == Counter(names[s] for _, _, s in kept)
    copies = [r for r in rows if r["parent_id"] is not None]
    assert copies and all(r["split"] == "train" for r in copies)
    assert not [r for r in copies if r["task"] in BOX_TASKS]
    for r in originals:
        turns = json.loads(r["conversation"])
        assert turns[-1] == {"role": "assistant", "content": r["answer"]}
        assert turns[0]["content"].count("<image>") == len(r["images"])


def test_flare_pixel_boxes_are_written_in_0_1000(flare_run):
    _, _, out = flare_run
    boxes = [r for r in _written(out) if r["task"] in BOX_TASKS]
    assert sorted(r["prompt"] for r in boxes) == sorted(NORM_ANSWERS)
    for r in boxes:
        assert json.loads(r["answer"]) == NORM_ANSWERS[r["prompt"]], r["prompt"]
        assert get_task(r["task"]).answer.check(r["answer"]) is None


# --- LLaVA, tasks inferred ---------------------------------------------------------------------


def _turns(*pairs: str) -> list[dict]:
    return [{"from": ("human", "gpt")[i % 2], "value": v} for i, v in enumerate(pairs)]


LLAVA = [
    ("g", ("<image>Box the cat.", '[{"bbox_2d": [1, 2, 300, 400], "label": "cat"}]'), "grounding"),
    ("c", ("<image>How many cats?", "7"), "counting"),
    ("r", ("<image>How long is it in m?", "3.5"), "regression"),
    ("m", ("<image>Which animal?\nA. cat\nB. dog\nC. bird\nD. fish", "B"), "multiple_choice"),
    ("v", ("<image>What is it?", "A cat.", "What colour?", "Grey."), "vqa"),
    ("b", ("What is it?", "<image> A cat."), "misplaced_image"),
]


@pytest.fixture(scope="module")
def llava_run(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("llava")
    records = [
        {"id": i, "image": f"{IMAGE_DIR}/{png(root, k)}", "conversations": _turns(*pairs)}
        for k, (i, pairs, _) in enumerate(LLAVA)
    ]
    (root / "annotations.json").write_text(json.dumps(records))
    out = tmp_path_factory.mktemp("prepared_llava")
    config = DataConfig(
        source=SourceConfig(format="llava", uri=str(root)),
        output_dir=str(out),
        task="mixed",
        augment=AugmentConfig(copies=0),
        ray=RayConfig(batch_size=4),
    )
    return prepare(config), out


def test_llava_tasks_are_inferred_row_by_row(llava_run):
    report, out = llava_run
    tasks = {r["id"]: r["task"] for r in _written(out)}
    assert tasks == {i: t for i, _, t in LLAVA if t != "misplaced_image"}
    assert report["quarantine"]["by_reason"] == {"misplaced_image": 1}
    assert report["tasks"] == {
        t: {"accepted": 1, "rejected": {}, "written": 1}
        for t in sorted(t for _, _, t in LLAVA if t != "misplaced_image")
    } | {"vqa": {"accepted": 1, "rejected": {"misplaced_image": 1}, "written": 1}}
