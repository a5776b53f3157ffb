"""FLARE question files and mixed-task LLaVA rows: the pure row generators (no Ray).

Expected tasks, splits, answers and reasons are written out per row in tests/helpers/flare.py
and below; the import never opens an image, so a missing image passes here (decode rejects it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from hazard.config.data import ConsistencyConfig, DataConfig, SourceConfig
from hazard.core.tasks import get_task
from hazard.infra.storage import open_input
from pipelines.import_flare import answer_text
from pipelines.row_task import UnknownTask, inferred_task, named_task, normalise
from pipelines.sources import RowProblem, plan_source, source_rows
from tests.helpers.flare import DECODE_REASONS, IMAGE_DIR, flare_rows, question, write_flare


def flare_config(root: Path, name: str, task: str = "mixed", **source) -> DataConfig:
    source = {"split_field": "Split", "image_dir": IMAGE_DIR, **source}
    return DataConfig(
        source=SourceConfig(format="flare", uri=str(root), annotations=name, **source),
        output_dir=str(root.parent / "out"),
        task=task,
    )


def read_rows(cfg: DataConfig) -> list[dict]:
    source = plan_source(cfg)
    with open_input(source.annotation_uri) as fh:
        return list(source_rows(source, fh))


IMPORT_REASONS = {"bad_answer", "unknown_task", "bad_split", "unknown_label"}


def test_flare_rows_get_their_task_split_turns_and_reasons(tmp_path: Path):
    root = tmp_path / "flare"
    cases = flare_rows(root)
    rows = read_rows(flare_config(root, write_flare(root, [c[0] for c in cases])))
    assert len(rows) == len(cases)
    splits = {"train": "train", "Validation": "val", "val": "val", "test": "test"}
    for k, (row, (record, expect, split)) in enumerate(zip(rows, cases, strict=True)):
        assert row["_order"] == k and row["id"] == f"retino_questions_train.json:{k}"
        if expect in IMPORT_REASONS:
            assert row["_reject_reason"] == expect, (k, row["_reject_detail"])
            continue
        assert row["_reject_reason"] is None, (k, row["_reject_detail"])
        if expect not in DECODE_REASONS:  # import opens no image: decode rejects these
            assert row["task"] == expect
            assert row["split"] == splits[split]
        names = (
            record["ImageName"] if isinstance(record["ImageName"], list) else [record["ImageName"]]
        )
        assert row["_image_uris"] == [(root / IMAGE_DIR / n).as_uri() for n in names]
        turns = json.loads(row["conversation"])
        assert turns == [
            {"role": "user", "content": "<image>" * len(names) + "\n" + record["Question"]},
            {"role": "assistant", "content": row["answer"]},
        ]
        assert row["prompt"] == record["Question"].strip()


def test_flare_details_name_the_value(tmp_path: Path):
    root = tmp_path / "flare"
    cases = flare_rows(root)
    rows = read_rows(flare_config(root, write_flare(root, [c[0] for c in cases])))
    details = {r["_reject_reason"]: r["_reject_detail"] for r in rows if r["_reject_reason"]}
    assert "TaskType 'Segmentation' maps to no registered task" in details["unknown_task"]
    assert "Split 'holdout' is not one of" in details["bad_split"]
    assert "'E' is not a label of task multiple_choice" in details["unknown_label"]


def test_flare_answers_become_reference_text():
    where = "f.json[0]"
    assert answer_text(17, where) == "17" and answer_text(36.5, where) == "36.5"
    assert answer_text(["caries", " crown"], where) == "caries; crown"
    boxes = {"1": [[1, 2, 30, 40]], "2": [50, 50, 80, 90]}
    expected = [
        {"bbox_2d": [1, 2, 30, 40], "label": "1"},
        {"bbox_2d": [50, 50, 80, 90], "label": "2"},
    ]
    assert json.loads(answer_text(boxes, where)) == expected
    assert json.loads(answer_text(json.dumps(boxes), where)) == expected
    assert answer_text(" {not json ", where) == "{not json"
    # the rewritten boxes read back as FLARE gave them, with and without labels
    assert get_task("grounding").answer.read(answer_text(boxes, where)) == [
        (1, 2, 30, 40),
        (50, 50, 80, 90),
    ]
    assert get_task("instance_detection").answer.read(answer_text(boxes, where)) == {
        "1": [(1, 2, 30, 40)],
        "2": [(50, 50, 80, 90)],
    }
    for bad in (None, True, " ", {"x": "y"}.get("z")):
        with pytest.raises(RowProblem):
            answer_text(bad, where)


def test_a_single_task_job_gives_every_row_its_task(tmp_path: Path):
    root = tmp_path / "flare"
    records = [
        question("Cell Counting", "a.png", "How many?", 3),
        question("Segmentation", "b.png", "How many?", "x"),
    ]
    rows = read_rows(flare_config(root, write_flare(root, records), task="counting"))
    assert [r["task"] for r in rows] == ["counting", "counting"]
    assert [r["_reject_reason"] for r in rows] == [None, "bad_answer"]


def test_task_type_mapping_and_override():
    task_map = {normalise("Detection"): "grounding", normalise("Seg-Mask"): "vqa"}
    assert named_task("DETECTION", "TaskType", task_map).name == "grounding"
    assert named_task("seg_mask", "TaskType", task_map).name == "vqa"
    assert named_task("Multi label", "TaskType", task_map).name == "multi_label"
    for value, got in ((None, "no value"), (3, "int 3"), ("Nope", "'Nope' maps to no")):
        with pytest.raises(UnknownTask, match=got):
            named_task(value, "TaskType", task_map)


def test_config_override_reaches_the_rows(tmp_path: Path):
    root = tmp_path / "flare"
    records = [question("Segmentation", "a.png", "Describe.", "a mask")]
    cfg = flare_config(root, write_flare(root, records), task_map={"segmentation": "report"})
    assert [r["task"] for r in read_rows(cfg)] == ["report"]


@pytest.mark.parametrize(
    ("question_text", "answer", "task"),
    [
        ("<image>Where is the dog?", '[{"bbox_2d": [1, 2, 30, 40], "label": "dog"}]', "grounding"),
        ("<image>Where?", "[10, 20, 30, 40]", "grounding"),
        ("<image>How many?", "12", "counting"),
        ("<image>How tall?", "1.75", "regression"),
        ("<image>Which?\nA. red\nB. blue\nC. green", "B", "multiple_choice"),
        ("<image>Which?\n(A) red\n(B) blue", "A", "multiple_choice"),
        ("<image>Grade it with A or B.", "A", "vqa"),  # no lettered options listed
        ("<image>What is it?", "A dog.", "vqa"),
        ("<image>Where?", "[10, 20, 3000, 40]", "vqa"),  # not a valid box: free text
    ],
)
def test_inferred_task(question_text, answer, task):
    assert inferred_task(question_text, answer).name == task


def test_mixed_config_rules(tmp_path: Path):
    src = {"format": "flare", "uri": str(tmp_path)}
    with pytest.raises(ValidationError, match="task_field/task_map are for task: mixed"):
        DataConfig(source={**src, "task_field": "T"}, output_dir="o", task="counting")
    with pytest.raises(ValidationError, match="task: mixed needs a source format"):
        DataConfig(source={"format": "folder", "uri": "x"}, output_dir="o", task="mixed")
    with pytest.raises(ValidationError, match="cannot score a task: mixed job"):
        DataConfig(
            source=src,
            output_dir="o",
            task="mixed",
            consistency=ConsistencyConfig(enabled=True, model_uri="m"),
        )
    with pytest.raises(ValidationError, match=r"task_map\['x'\]: unknown task 'nope'"):
        SourceConfig(**src, task_map={"x": "nope"})
    with pytest.raises(ValidationError, match="split_field is for format flare"):
        SourceConfig(format="llava", uri="x", split_field="Split")


# --- LLaVA: mixed tasks, inferred row by row; <image> outside user turns ---------------------


def _llava(row_id: str, image: str, turns: list[tuple[str, str]], **extra) -> dict:
    convs = [{"from": who, "value": text} for who, text in turns]
    return {"id": row_id, "image": image, "conversations": convs, **extra}


def llava_config(root: Path, records: list[dict], task: str = "mixed", **source) -> DataConfig:
    root.mkdir(parents=True, exist_ok=True)
    (root / "annotations.json").write_text(json.dumps(records))
    return DataConfig(
        source=SourceConfig(format="llava", uri=str(root), **source),
        output_dir=str(root.parent / "out"),
        task=task,
    )


MIXED_LLAVA = [
    (
        _llava("g", "a.png", [("human", "<image>Box the cat."), ("gpt", "[1, 2, 300, 400]")]),
        "grounding",
    ),
    (_llava("c", "b.png", [("human", "<image>How many?"), ("gpt", "7")]), "counting"),
    (_llava("r", "c.png", [("human", "<image>Score?"), ("gpt", "3.5")]), "regression"),
    (
        _llava("m", "d.png", [("human", "<image>Which?\nA. cat\nB. dog"), ("gpt", "B")]),
        "multiple_choice",
    ),
    (
        _llava(
            "v",
            "e.png",
            [("human", "<image>What?"), ("gpt", "A cat."), ("human", "Colour?"), ("gpt", "Grey")],
        ),
        "vqa",
    ),
]


def test_mixed_llava_rows_are_inferred_row_by_row(tmp_path: Path):
    rows = read_rows(llava_config(tmp_path / "llava", [r for r, _ in MIXED_LLAVA]))
    assert [(r["id"], r["task"], r["_reject_reason"]) for r in rows] == [
        (r["id"], task, None) for r, task in MIXED_LLAVA
    ]


def test_mixed_llava_with_a_task_field(tmp_path: Path):
    records = [
        _llava("a", "a.png", [("human", "<image>How many?"), ("gpt", "7")], kind="count"),
        _llava("b", "b.png", [("human", "<image>How many?"), ("gpt", "7")], kind="vqa"),
        _llava("c", "c.png", [("human", "<image>How many?"), ("gpt", "7")], kind="sing"),
        _llava("d", "d.png", [("human", "<image>How many?"), ("gpt", "7")]),
    ]
    cfg = llava_config(tmp_path / "l", records, task_field="kind", task_map={"count": "counting"})
    rows = read_rows(cfg)
    assert [(r["task"], r["_reject_reason"]) for r in rows] == [
        ("counting", None),
        ("vqa", None),
        (None, "unknown_task"),
        (None, "unknown_task"),
    ]
    assert "kind 'sing' maps to no registered task" in rows[2]["_reject_detail"]
    assert "kind is no value" in rows[3]["_reject_detail"]


@pytest.mark.parametrize("task", ["vqa", "mixed"])
def test_an_image_outside_a_user_turn_is_quarantined(tmp_path: Path, task):
    records = [
        _llava("ok", "a.png", [("human", "<image>What?"), ("gpt", "A cat.")]),
        _llava("bad", "b.png", [("human", "What?"), ("gpt", "<image> A cat.")]),
    ]
    rows = read_rows(llava_config(tmp_path / "l", records, task=task))
    assert [r["_reject_reason"] for r in rows] == [None, "misplaced_image"]
    assert rows[1]["_reject_detail"] == (
        "annotations.json[1]: turn 1 (assistant) holds <image>; images go in user turns only"
    )


# --- stages: per-row task in the lineage and in augmentation ---------------------------------


def test_task_counts_per_task():
    from pipelines.write import task_counts

    def row(task, reason=None, parent=None):
        return {"task": task, "_reject_reason": reason, "parent_id": parent}

    rows = [
        row("counting"),
        row("counting", parent="c0"),
        row("counting", "bad_answer"),
        row("grounding"),
        row(None, "unknown_task"),
        row("grounding", "augment_failed", parent="g0"),
    ]
    assert task_counts(rows) == {
        "counting": {"accepted": 1, "rejected": {"bad_answer": 1}, "written": 2},
        "grounding": {"accepted": 1, "rejected": {"augment_failed": 1}, "written": 1},
    }


@pytest.mark.parametrize(
    ("task", "augmentable"),
    [("counting", True), ("vqa", True), ("grounding", False), ("instance_detection", False)],
)
def test_rows_of_a_boxes_task_are_never_augmented(task, augmentable):
    from pipelines.augment import is_augmentable

    row = {"task": task, "split": "train", "parent_id": None, "answer": "1"}
    assert is_augmentable({**row, "_reject_reason": None}) is augmentable


# --- the tasks FLARE needs -----------------------------------------------------------------


def test_instance_detection_reads_labelled_boxes_and_scores_at_0_3_and_0_5():
    kind = get_task("instance_detection").answer
    assert kind.check('[{"bbox_2d": [0, 0, 100, 100], "label": "1"}]') is None
    assert kind.check("[[0, 0, 100, 100]]") == "has a box without a label"
    assert "has a bad box" in kind.check('[{"bbox_2d": [0, 0, 1100, 100], "label": "1"}]')
    ref = kind.read('[{"bbox_2d": [0, 0, 100, 100], "label": "1"}]')
    # IoU of [0,0,100,40] with [0,0,100,100] = 4000/10000 = 0.4: a match at 0.3, not at 0.5
    pred = kind.parse('[{"bbox_2d": [0, 0, 100, 40], "label": "1"}]')
    by_t = kind.metrics([ref], [pred])["by_threshold"]
    assert sorted(by_t) == [0.3, 0.5]
    assert by_t[0.3].f1 == 1.0 and by_t[0.5].f1 == 0.0


def test_regression_reads_a_number_not_only_whole_ones():
    kind = get_task("regression").answer
    assert kind.read("36.5") == 36.5 and kind.read("-2") == -2.0
    assert kind.check("about 3") == "is not a number"
    # MAE over |36.5 - 35| and |2 - 2.5| = (1.5 + 0.5) / 2 = 1.0
    assert kind.metrics([36.5, 2.0], [35.0, 2.5])["mae"] == pytest.approx(1.0)
