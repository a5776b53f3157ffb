"""A FLARE 2025-format folder (medical multi-task question file), written by the test.

FLARE ships per data set a question file `[{"TaskType", "Modality", "ImageName", "Question",
"Answer", "Split"}]` beside an image folder (`imagesTr`); ImageName is one name or a list.
`flare_rows` writes real PNGs (distinct colours, so no two share a hash) and returns rows of
every FLARE task type plus one bad row of each kind, each with what the import should make of
it: its task, or the (reason) it is quarantined with (by import, or by decode: DECODE_REASONS).
Detection answers are pixels of their image (sizes chosen per row); decode rewrites them in
0-1000, `NORM_ANSWERS` holding each kept box row's expected answer, computed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

IMAGE_DIR = "imagesTr"
DECODE_REASONS = {"missing_file", "box_outside_image"}
"""Rows import keeps (with their task) that decode quarantines."""

NORM_ANSWERS = {
    # 640 x 480: x * 1000 / 640, y * 1000 / 480, rounded
    "lesion_640": [{"bbox_2d": [16, 42, 469, 833], "label": "lesion"}],
    # 100 x 100: x * 10, y * 10
    "two_100": [
        {"bbox_2d": [50, 50, 500, 500], "label": "1"},
        {"bbox_2d": [600, 600, 900, 900], "label": "1"},
    ],  # fmt: skip
    "instances_100": [
        {"bbox_2d": [10, 20, 300, 400], "label": "1"},
        {"bbox_2d": [500, 500, 800, 900], "label": "2"},
    ],  # fmt: skip
    # 1200 x 800, a box over 1000 px inside the image: 100/1.2=83.3, 1100/1.2=916.7, y / 0.8
    "wide_1200": [{"bbox_2d": [83, 100, 917, 900], "label": "lesion"}],
}
"""Each kept detection row's answer after decode (the Question names the key)."""


def png(root: Path, k: int, size: int | tuple[int, int] = 64) -> str:
    """Name (relative to `root/IMAGE_DIR`) of image `k`, written as a PNG of its own colour;
    `size`: a side, or (width, height)."""
    name = f"img_{k:03d}.png"
    path = root / IMAGE_DIR / name
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = ((41 * k) % 256, (97 * k + 30) % 256, (59 * k + 150) % 256)
    Image.new("RGB", size if isinstance(size, tuple) else (size, size), colour).save(path)
    return name


def question(task_type: str, image: Any, q: str, answer: Any, split: str = "train") -> dict:
    return {
        "TaskType": task_type,
        "Modality": "Retinography",
        "ImageName": image,
        "Question": q,
        "Answer": answer,
        "Split": split,
    }


def flare_rows(root: Path) -> list[tuple[dict[str, Any], str, str | None]]:
    """[(FLARE record, expected task or quarantine reason, expected split)] under `root`."""
    k = iter(range(1000))
    rows: list[tuple[dict[str, Any], str, str | None]] = []

    def add(task_type, answer, expect, split="train", images=1, q="What does it show?", size=64):
        names = [png(root, next(k), size) for _ in range(images)]
        image = names[0] if images == 1 else names
        rows.append((question(task_type, image, q, answer, split), expect, split))

    for i in range(3):
        add("Classification", ["normal", "glaucoma", "cataract"][i], "classification")
    add("Multi-label Classification", "caries; filling", "multi_label", split="Validation")
    add("Multi_label_classification", ["caries", "crown"], "multi_label")
    add("Detection", {"lesion": [[10, 20, 300, 400]]}, "grounding", q="lesion_640", size=(640, 480))
    two = '{"1": [[5, 5, 50, 50], [60, 60, 90, 90]]}'
    add("Detection", two, "grounding", split="test", q="two_100", size=100)
    instances = {"1": [[1, 2, 30, 40]], "2": [[50, 50, 80, 90]]}
    add("Instance Detection", instances, "instance_detection", q="instances_100", size=100)
    wide = {"lesion": [[100, 80, 1100, 720]]}  # pixels over 1000, inside the image
    add("Detection", wide, "grounding", q="wide_1200", size=(1200, 800))
    add("Cell Counting", 17, "counting")
    add("Counting", "4", "counting", split="val")
    add("Regression", 36.5, "regression")
    add("Regression", "0.25", "regression", split="test")
    add("Report Generation", "Normal heart size. No effusion.", "report")
    mcq = "Which finding?\nA. drusen\nB. haemorrhage\nC. none\nD. exudate"
    add("Multiple Choice", "B", "multiple_choice", q=mcq)  # a registered task name as TaskType
    # one bad row of each kind
    missing = question("Classification", "no_such.png", "What?", "normal")
    rows.append((missing, "missing_file", "train"))
    add("Detection", {"lesion": [[300, 20, 10, 400]]}, "bad_answer")  # x1 > x2: not a box
    add("Detection", {"lesion": [[10, 10, 80, 40]]}, "box_outside_image")  # 80 > 64 px
    add("Regression", "about 3", "bad_answer")  # unparseable number
    add("Cell Counting", "2.5", "bad_answer")  # not a whole count
    add("Segmentation", "mask", "unknown_task")
    add("Classification", "normal", "bad_split", split="holdout")
    add("Multiple Choice", "E", "unknown_label", q=mcq)  # outside the closed set A-D
    return rows


def write_flare(root: Path, records: list[dict], name: str = "retino_questions_train.json") -> str:
    """Write the question file; its name."""
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(json.dumps(records, indent=1))
    return name
