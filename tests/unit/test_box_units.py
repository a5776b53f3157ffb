"""FLARE's pixel boxes: checked at import, rewritten in 0-1000 at decode (no Ray).

Expected coordinates are worked out by hand: x * 1000 / width, y * 1000 / height, rounded.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from hazard.config.data import DataConfig, SourceConfig
from hazard.core.tasks import get_task
from hazard.infra.storage import open_input
from pipelines.box_units import BoxOutsideImage, answer_to_norm1000, pixel_answer_problem
from pipelines.common import BOX_UNITS, IMAGE_URIS, ORDER, PIXELS, REJECT_DETAIL, REJECT_REASON
from pipelines.decode import decode_row
from pipelines.sources import plan_source, source_rows
from tests.helpers.flare import IMAGE_DIR, question, write_flare
from tests.helpers.images import exif_jpeg

GROUNDING, INSTANCES = get_task("grounding"), get_task("instance_detection")


def test_pixel_box_by_hand():
    assert json.loads(answer_to_norm1000("[100, 50, 300, 150]", 400, 200)) == [250, 250, 750, 750]
    labelled = json.dumps([{"bbox_2d": [100, 50, 300, 150], "label": "a"}, [0, 0, 400, 200]])
    assert json.loads(answer_to_norm1000(labelled, 400, 200)) == [
        {"bbox_2d": [250, 250, 750, 750], "label": "a"},
        [0, 0, 1000, 1000],
    ]
    # 1200 x 800: 100/1.2 = 83.3, 1100/1.2 = 916.7, 80/0.8 = 100, 720/0.8 = 900
    assert json.loads(answer_to_norm1000("[[100, 80, 1100, 720]]", 1200, 800)) == [
        [83, 100, 917, 900]
    ]
    assert answer_to_norm1000("[]", 10, 10) == "[]"


def test_boxes_outside_the_image_or_under_a_unit_are_refused():
    with pytest.raises(BoxOutsideImage, match=r"\[10, 10, 80, 40\] lies outside the 64 x 64"):
        answer_to_norm1000("[10, 10, 80, 40]", 64, 64)
    with pytest.raises(BoxOutsideImage):
        answer_to_norm1000("[[0, 0, 10, 10], [0, 0, 10, 65]]", 64, 64)
    with pytest.raises(ValueError, match="under one 0-1000 unit") as info:
        answer_to_norm1000("[0, 0, 0.4, 10]", 4000, 64)  # 0.1 units wide
    assert not isinstance(info.value, BoxOutsideImage)


@pytest.mark.parametrize(
    ("answer", "grounding", "instances"),
    [
        ('[{"bbox_2d": [10, 20, 1300, 400], "label": "a"}]', None, None),  # pixels over 1000
        ("[10, 20, 1300, 400]", None, "has a box without a label"),
        ("[]", None, None),
        ("[300, 20, 10, 400]", "needs x1 < x2", "needs x1 < x2"),
        ("[-1, 0, 4, 4]", "negative pixel coordinate", "negative pixel coordinate"),
        ("[[1, 2, 3]]", "four numbers", "four numbers"),
        ('{"a": 1}', "is not a box", "is not a box"),
        ("somewhere", "is not JSON", "is not JSON"),
    ],
)
def test_pixel_answer_problem(answer, grounding, instances):
    for task, expected in ((GROUNDING, grounding), (INSTANCES, instances)):
        problem = pixel_answer_problem(task, answer)
        assert (problem is None) if expected is None else (expected in problem), (task, problem)


def _flare_rows(root: Path, records: list[dict]) -> list[dict]:
    config = DataConfig(
        source=SourceConfig(
            format="flare", uri=str(root), annotations=write_flare(root, records),
            image_dir=IMAGE_DIR,
        ),
        output_dir=str(root / "out"),
        task="mixed",
    )  # fmt: skip
    source = plan_source(config)
    with open_input(source.annotation_uri) as fh:
        return list(source_rows(source, fh))


def test_flare_import_keeps_pixel_boxes_over_1000_and_marks_them(tmp_path: Path):
    records = [
        question("Detection", "a.png", "Where?", {"lesion": [[100, 80, 1100, 720]]}),
        question("Detection", "b.png", "Where?", {"lesion": [[300, 20, 10, 400]]}),
        question("Counting", "c.png", "How many?", 3),
    ]
    rows = _flare_rows(tmp_path, records)
    assert [r[REJECT_REASON] for r in rows] == [None, "bad_answer", None]
    assert "has a bad box: box [300, 20, 10, 400] needs x1 < x2" in rows[1][REJECT_DETAIL]
    assert json.loads(rows[0]["answer"]) == [{"bbox_2d": [100, 80, 1100, 720], "label": "lesion"}]
    assert [r.get(BOX_UNITS) for r in rows] == [PIXELS, PIXELS, None]


def _row(uri: str, answer: str, units: str | None = PIXELS) -> dict:
    turns = [
        {"role": "user", "content": "<image>\nWhere?"},
        {"role": "assistant", "content": answer},
    ]
    return {
        "id": "r", "task": "grounding", "prompt": "Where?", "answer": answer, "split": "train",
        "conversation": json.dumps(turns), "aug_ops": [], ORDER: 0, IMAGE_URIS: [uri],
        REJECT_REASON: None, BOX_UNITS: units,
    }  # fmt: skip


def _png(path: Path, size: tuple[int, int]) -> str:
    Image.new("RGB", size, (20, 200, 90)).save(path)
    return path.as_uri()


def test_decode_rewrites_answer_and_turn_from_the_original_size(tmp_path: Path):
    # 400 x 200 downscaled to 100 x 50 before storing: the box is converted from 400 x 200
    config = DataConfig(
        source={"uri": str(tmp_path)}, output_dir=str(tmp_path / "o"),
        validation={"pixel_budget": 5000},
    )  # fmt: skip
    answer = '[{"bbox_2d": [100, 50, 300, 150], "label": "a"}]'
    row = decode_row(_row(_png(tmp_path / "a.png", (400, 200)), answer), config)
    assert row[REJECT_REASON] is None, row[REJECT_DETAIL]
    with Image.open(io.BytesIO(row["images"][0])) as img:
        assert img.size == (100, 50)
    expected = [{"bbox_2d": [250, 250, 750, 750], "label": "a"}]
    assert json.loads(row["answer"]) == expected
    assert json.loads(json.loads(row["conversation"])[-1]["content"]) == expected
    assert row[BOX_UNITS] is None
    # a row in 0-1000 already (LLaVA, alpaca) is left as it is
    same = decode_row(_row((tmp_path / "a.png").as_uri(), "[100, 50, 300, 150]", None), config)
    assert same["answer"] == "[100, 50, 300, 150]"


def test_decode_quarantines_a_box_outside_the_image_and_an_oriented_image(tmp_path: Path):
    config = DataConfig(source={"uri": str(tmp_path)}, output_dir=str(tmp_path / "o"))
    row = decode_row(_row(_png(tmp_path / "s.png", (64, 64)), "[10, 10, 80, 40]"), config)
    assert row[REJECT_REASON] == "box_outside_image"
    assert "lies outside the 64 x 64 image" in row[REJECT_DETAIL]
    (tmp_path / "r.jpg").write_bytes(exif_jpeg(6))  # stored 64 x 32, shown 32 x 64
    row = decode_row(_row((tmp_path / "r.jpg").as_uri(), "[1, 1, 30, 30]"), config)
    assert row[REJECT_REASON] == "bad_answer"
    assert "EXIF orientation 6" in row[REJECT_DETAIL]
