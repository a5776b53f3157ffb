"""Box answers given in pixels of the row's image, rewritten in the stored 0-1000 space.

The project stores box answers as Qwen2.5-VL's 0-1000 coordinates (`hazard.core.answer_kinds.
BoxList`). FLARE's detection answers are pixels of the original image; import cannot convert
them (it opens no image), so it marks the row (`pipelines.common.BOX_UNITS` = `PIXELS`) after
`pixel_answer_problem` found nothing wrong short of the image's size, and decode, which knows
the first image's width and height, rewrites the answer with `answer_to_norm1000`.

A box answer here is JSON in one of BoxList's forms: one box `[x1, y1, x2, y2]`, a list of
boxes, or `[{"bbox_2d": [...], "label": ...}, ...]`; the rewrite keeps the form and the labels
and rounds each coordinate to a whole number (hazard.core.detection.to_norm1000, then round).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hazard.core.answer_kinds import BoxList
from hazard.core.detection import check_box, to_norm1000
from hazard.core.tasks import TaskSpec


class BoxOutsideImage(ValueError):
    """A pixel box that does not lie within its image."""


def is_box_task(task: TaskSpec) -> bool:
    """Whether `task`'s answers are boxes (grounding, instance detection)."""
    return isinstance(task.answer, BoxList)


def _map_boxes(answer: str, fn: Callable[[Any], list[float | int]]) -> str:
    """`answer` (a box answer's JSON) with `fn` applied to every box, its form kept. Errors
    complete "<answer> ..."; a box's error keeps its type (BoxOutsideImage)."""
    try:
        value = json.loads(answer)
    except ValueError:
        raise ValueError("is not JSON") from None
    if not isinstance(value, list):
        raise ValueError("is not a box, a list of boxes or a list of bbox_2d items")

    def box(b: Any) -> list[float | int]:
        try:
            return fn(b)
        except ValueError as e:
            raise type(e)(f"has a bad box: {e}") from None

    if len(value) == 4 and not any(isinstance(v, list | dict) for v in value):
        return json.dumps(box(value))
    out = []
    for item in value:
        if isinstance(item, dict) and "bbox_2d" in item:
            out.append({**item, "bbox_2d": box(item["bbox_2d"])})
        else:
            out.append(box(item))
    return json.dumps(out)


def _pixel_box(box: Any) -> list[float]:
    """`box` checked as pixels of an image of unknown size (ValueError naming the fault)."""
    x1, y1, x2, y2 = check_box(box, None)
    if min(x1, y1) < 0:
        raise ValueError(f"box {box} has a negative pixel coordinate")
    return [x1, y1, x2, y2]


def answer_to_norm1000(answer: str, width: int, height: int) -> str:
    """A pixel box answer of a `width` x `height` image in whole 0-1000 units.

    Raises BoxOutsideImage for a box beyond the image, ValueError for any other fault (not box
    JSON, a bad box, a box under one 0-1000 unit wide or tall once rounded); messages complete
    "<answer> ..."."""

    def convert(box: Any) -> list[int]:
        x1, y1, x2, y2 = _pixel_box(box)
        if x2 > width or y2 > height:
            raise BoxOutsideImage(f"box {box} lies outside the {width} x {height} image")
        out = [round(v) for v in to_norm1000((x1, y1, x2, y2), width, height)]
        if out[0] >= out[2] or out[1] >= out[3]:
            raise ValueError(
                f"box {box} is under one 0-1000 unit wide or tall on a {width} x {height} image"
            )
        return out

    return _map_boxes(answer, convert)


def pixel_answer_problem(task: TaskSpec, answer: str) -> str | None:
    """What is wrong with a pixel box answer of a box task whatever its image's size (completing
    "<answer> ..."), or None: read by the task as it will be after decode, on the smallest
    image that holds its boxes."""
    extent = [0.0, 0.0]

    def grow(box: Any) -> list[float]:
        checked = _pixel_box(box)
        extent[:] = max(extent[0], checked[2]), max(extent[1], checked[3])
        return checked

    try:
        _map_boxes(answer, grow)
        norm = answer_to_norm1000(answer, *extent) if extent[0] else answer
    except ValueError as e:
        return str(e)
    return task.answer.check(norm)
