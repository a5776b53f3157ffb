"""Source format `flare`: a FLARE 2025 question file -> row-prompt rows.

Needs: `<uri>/<annotations>` (e.g. `retino_questions_train.json`), a JSON list (or .jsonl) of
`{"TaskType", "Modality", "ImageName", "Question", "Answer", "Split"}` as the FLARE 2025 MLLM
challenge ships them; `ImageName` is one path or a list, relative to `<uri>/<image_dir>`
(FLARE's layout: `image_dir: imagesTr` beside the question file).
Adds (see pipelines/sources.py): id = `<file name>:<index>` (FLARE rows have no id);
conversation = a user turn of one `<image>` per image, a newline and the Question, then an
assistant turn of the Answer; prompt = the Question tidied; answer = the Answer as text:
strings as given (stripped), numbers as written (`7`, `0.25`), a list of labels joined by
`; ` (multi-label), a list of boxes as JSON, and FLARE's box answers, a JSON
object `{"<label>": [[x1, y1, x2, y2], ...], ...}` (given as an object or as its JSON text),
rewritten as Qwen2.5-VL's `[{"bbox_2d": [...], "label": "<label>"}, ...]`, which `grounding`
(labels dropped) and `instance_detection` (labels kept) read. FLARE's box coordinates are
pixels of the row's image, which import does not open: a box task's answer is checked in pixel
space (`pipelines.box_units.pixel_answer_problem`: four finite numbers, x1 < x2, y1 < y2, none
negative, labels where the task needs them; `bad_answer` otherwise, whatever the image's size)
and the row is marked `_box_units: "pixels"` (pipelines/common.py); decode rewrites its answer
and assistant turn in 0-1000 from the first image's width and height, and quarantines a box
outside the image (`box_outside_image`). Other formats' boxes are 0-1000 already.
Task: `task: mixed` maps each row's `TaskType` (`source.task_field`) through
`pipelines.row_task.FLARE_TASKS` and `source.task_map`; a single task gives every row that task.
Split: with `source.split_field` (FLARE: `Split`), the row's value (train/training,
val/validation/dev, test/testing, any case) is its split, else `bad_split`; without it splits
are drawn.
Rejections: as the chat formats (pipelines/import_llamafactory.py: `bad_row` for a missing or
non-text Question, a missing Answer or ImageName, `bad_path`, `outside_source`,
`unknown_label` / `bad_answer`, `image_count_mismatch`), `unknown_task`, `bad_split`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any, TextIO

from hazard.config.data import DataConfig
from hazard.core.schema import IMAGE_PLACEHOLDER
from hazard.core.tasks import TaskSpec, get_task
from pipelines.box_units import is_box_task, pixel_answer_problem
from pipelines.common import BOX_UNITS, PIXELS, REJECT_REASON, reject
from pipelines.import_llamafactory import Turns, chat_records
from pipelines.sources import (
    STAGE,
    RowProblem,
    Source,
    check_answer,
    check_json_head,
    finalize,
    inside,
    json_kind,
    read_head,
    require_file,
    show,
)

IMAGES = "ImageName"
QUESTION = "Question"
ANSWER = "Answer"
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}


def plan(source: Source, config: DataConfig) -> Source:
    """The source with its question file checked; SourceError otherwise."""
    rel = inside(config.source.annotations, "source.annotations")
    jsonl = json_kind(rel, "source.annotations")
    source = dataclasses.replace(source, annotation=rel)
    size = require_file(source, rel, config.storage, "question file")
    check_json_head(read_head(source, rel, config.storage), source.annotation_uri, jsonl)
    options = {"jsonl": jsonl, "split_field": config.source.split_field}
    return dataclasses.replace(source, size=size, options=options)


def _is_box(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 4
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    )


def _labelled_boxes(value: dict[str, Any]) -> list[dict[str, Any]] | None:
    """FLARE's `{label: box | [boxes]}` as `[{"bbox_2d", "label"}]`; None for other objects."""
    out = []
    for label, boxes in value.items():
        if _is_box(boxes):
            boxes = [boxes]
        if not isinstance(boxes, list) or not all(_is_box(b) for b in boxes):
            return None
        out += [{"bbox_2d": box, "label": str(label)} for box in boxes]
    return out


def answer_text(value: Any, where: str) -> str:
    """A FLARE Answer as reference text (module docstring); RowProblem bad_row otherwise."""
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            decoded = json.loads(value)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict) and (boxes := _labelled_boxes(decoded)) is not None:
            return json.dumps(boxes)
        return value.strip()
    if isinstance(value, str):
        if not value.strip():
            raise RowProblem("bad_row", f"{where}: {ANSWER} is empty")
        return value.strip()
    if isinstance(value, bool) or value is None:
        raise RowProblem("bad_row", f"{where}: {ANSWER} is {show(value)}, not an answer")
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, dict) and (boxes := _labelled_boxes(value)) is not None:
        return json.dumps(boxes)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return "; ".join(v.strip() for v in value)  # multi-label: labels separated by ';'
    if isinstance(value, list):
        return json.dumps(value)
    raise RowProblem("bad_row", f"{where}: {ANSWER} {show(value)} is not text, a number or boxes")


def image_names(sample: dict[str, Any]) -> list[Any]:
    """The row's ImageName as a list (one name or a list of names)."""
    value = sample.get(IMAGES)
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def turns(sample: dict[str, Any], where: str) -> Turns:
    """(no system text, [user: <image> per image + Question, assistant: Answer])."""
    question = sample.get(QUESTION)
    if not isinstance(question, str) or not question.strip():
        raise RowProblem("bad_row", f"{where}: {QUESTION} is missing or not text")
    if ANSWER not in sample:
        raise RowProblem("bad_row", f"{where}: no {ANSWER}")
    images = IMAGE_PLACEHOLDER * len(image_names(sample))
    user = {"role": "user", "content": f"{images}\n{question.strip()}"}
    return "", [user, {"role": "assistant", "content": answer_text(sample[ANSWER], where)}]


def check_flare_answer(task: TaskSpec, answer: str, where: str) -> None:
    """`check_answer`, but a box task's answer is pixels of an image of unknown size."""
    if not is_box_task(task):
        check_answer(task, answer, where)
    elif problem := pixel_answer_problem(task, answer):
        raise RowProblem("bad_answer", f"{where}: {show(answer)} {problem}")


def _with_split(row: dict[str, Any], sample: Any, field: str, where: str) -> dict[str, Any]:
    """The kept row with its split from `sample[field]`, or rejected `bad_split`."""
    value = sample.get(field)
    split = SPLIT_NAMES.get(value.strip().lower()) if isinstance(value, str) else None
    if split is None:
        known = ", ".join(sorted(SPLIT_NAMES))
        return reject(
            row, "bad_split", f"{where}: {field} {show(value)} is not one of {known}", STAGE
        )
    return {**row, "split": split}


def iter_rows(stream: TextIO, source: Source) -> Iterator[dict[str, Any]]:
    """Every question of the file as a row (pure: no Ray, no image I/O)."""
    field = source.options["split_field"]

    def rows() -> Iterator[dict[str, Any]]:
        jsonl = source.options["jsonl"]
        records = chat_records(stream, source, turns, IMAGES, jsonl, check_flare_answer)
        for where, sample, row in records:
            if row["task"] is not None and is_box_task(get_task(row["task"])):
                row[BOX_UNITS] = PIXELS
            if field is not None and row[REJECT_REASON] is None:
                row = _with_split(row, sample, field, where)
            yield row

    return finalize(rows(), source.annotation_name)
