"""A FLARE 2025-format folder (medical multi-task question file), written by the test.

FLARE ships per data set a question file `[{"TaskType", "Modality", "ImageName", "Question",
"Answer", "Split"}]` beside an image folder (`imagesTr`); ImageName is one name or a list.
`flare_rows` writes real PNGs (distinct colours, so no two share a hash) and returns rows of
every FLARE task type plus one bad row of each kind, each with what the import should make of
it: its task, or the (reason) it is quarantined with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

IMAGE_DIR = "imagesTr"


def png(root: Path, k: int, size: int = 64) -> str:
    """Name (relative to `root/IMAGE_DIR`) of image `k`, written as a PNG of its own colour."""
    name = f"img_{k:03d}.png"
    path = root / IMAGE_DIR / name
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = ((41 * k) % 256, (97 * k + 30) % 256, (59 * k + 150) % 256)
    Image.new("RGB", (size, size), colour).save(path, format="PNG")
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

    def add(task_type, answer, expect, split="train", images=1, q="What does it show?"):
        names = [png(root, next(k)) for _ in range(images)]
        image = names[0] if images == 1 else names
        rows.append((question(task_type, image, q, answer, split), expect, split))

    for i in range(3):
        add("Classification", ["normal", "glaucoma", "cataract"][i], "classification")
    add("Multi-label Classification", "caries; filling", "multi_label", split="Validation")
    add("Multi_label_classification", ["caries", "crown"], "multi_label")
    add("Detection", {"lesion": [[10, 20, 300, 400]]}, "grounding")
    add("Detection", '{"1": [[5, 5, 50, 50], [60, 60, 90, 90]]}', "grounding", split="test")
    add(
        "Instance Detection", {"1": [[1, 2, 30, 40]], "2": [[50, 50, 80, 90]]}, "instance_detection"
    )
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
    add("Detection", {"lesion": [[10, 20, 1300, 400]]}, "bad_answer")  # box outside 0-1000
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
