"""The import stage's pure row generators (no Ray): folder CSV, LLaMA-Factory, LLaVA.

Sources are real files in a temporary folder (and the vendored LLaMA-Factory demo); every
expected value below is written out by hand from the file contents.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
from pathlib import Path

import pytest

from hazard.config.data import DataConfig, SourceConfig
from hazard.core.tasks import TaskSpec, get_task
from hazard.infra.storage import open_input
from pipelines import import_folder, import_llava
from pipelines.json_records import iter_json_list
from pipelines.sources import (
    RowProblem,
    SourceError,
    check_answer,
    check_source,
    plan_source,
    rows_per_block,
    source_rows,
    tidy_prompt,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "llamafactory-mllm-demo"
LABELS = "no_risk, low_risk, medium_risk, high_risk, non_corridor"


def copy_fixture(dst: Path) -> Path:
    """A writable copy of the (read-only) LLaMA-Factory demo."""
    shutil.copytree(FIXTURE, dst, copy_function=shutil.copyfile)
    for folder, _, _ in os.walk(dst):
        os.chmod(folder, 0o755)
    return dst


def config(root: Path, fmt: str = "folder", task: str = "corridor_risk", **source) -> DataConfig:
    return DataConfig(
        source=SourceConfig(format=fmt, uri=str(root), **source),
        output_dir=str(root.parent / "out"),
        task=task,
    )


def read_rows(cfg: DataConfig) -> list[dict]:
    source = plan_source(cfg)
    with open_input(source.annotation_uri) as fh:
        return list(source_rows(source, fh))


def by_order(rows: list[dict]) -> dict[int, dict]:
    assert [r["_order"] for r in rows] == list(range(len(rows)))
    return {r["_order"]: r for r in rows}


def reasons(rows: list[dict]) -> dict[int, str | None]:
    return {r["_order"]: r["_reject_reason"] for r in rows}


# --- folder -----------------------------------------------------------------------------------

FOLDER_CSV = (
    "image,label,split\n"  # line 1
    "images/a.jpg,high_risk,train\n"  # 2: order 0, kept
    "./images//b.jpg, low_risk ,\n"  # 3: order 1, kept, normalised id, no split
    "\n"  # 4: blank, skipped
    "images/c.jpg,High_Risk,val\n"  # 5: order 2, unknown_label (case is not folded)
    "images/d.jpg,no_risk,holdout\n"  # 6: order 3, bad_split
    "images/e.jpg,no_risk\n"  # 7: order 4, bad_row (2 fields)
    "/etc/passwd,no_risk,train\n"  # 8: order 5, bad_path (absolute)
    "../outside.jpg,no_risk,train\n"  # 9: order 6, outside_source
    "images/a\x00b.jpg,no_risk,train\n"  # 10: order 7, bad_path (NUL byte)
    "images/escape.jpg,no_risk,train\n"  # 11: order 8, outside_source (symlink out)
    "images/inner.jpg,medium_risk,test\n"  # 12: order 9, kept (symlink inside)
    ",no_risk,train\n"  # 13: order 10, bad_path (empty)
    "images/f.jpg,,train\n"  # 14: order 11, bad_row (empty label)
    "images/a.jpg,no_risk,test\n"  # 15: order 12, kept, repeated id -> images/a.jpg#12
    "s3://bucket/x.jpg,no_risk,\n"  # 16: order 13, bad_path (a URI)
    "images\\g.jpg,non_corridor,\n"  # 17: order 14, kept, id images/g.jpg
    'images/h.jpg,"no_risk\nextra",val\n'  # 18-19: order 15, unknown_label
    "images/i.jpg,low_risk,Train\n"  # 20: order 16, bad_split
    "images/linkdir/secret.jpg,no_risk,train\n"  # 21: order 17, outside_source (dir link)
)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "images").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"not yours")
    os.symlink(outside / "secret.jpg", root / "images" / "escape.jpg")
    os.symlink("a.jpg", root / "images" / "inner.jpg")
    os.symlink(outside, root / "images" / "linkdir")
    (root / "labels.csv").write_text(FOLDER_CSV, encoding="utf-8")
    return root


def test_folder_rows_every_field_and_reason(folder: Path):
    rows = read_rows(config(folder))
    assert len(rows) == 18
    got = by_order(rows)
    uri = folder.as_uri()
    prompt = get_task("corridor_risk").prompt
    assert got[0] == {
        "id": "images/a.jpg",
        "images": [],
        "task": "corridor_risk",
        "prompt": prompt,
        "answer": "high_risk",
        "split": "train",
        "source_uri": f"{uri}/images/a.jpg",
        "content_hash": "",
        "parent_id": None,
        "aug_ops": [],
        "conversation": None,
        "consistency_score": None,
        "_order": 0,
        "_image_uris": [f"{uri}/images/a.jpg"],
        "_reject_reason": None,
        "_reject_detail": None,
        "_reject_stage": None,
    }
    assert (got[1]["id"], got[1]["answer"], got[1]["split"]) == ("images/b.jpg", "low_risk", None)
    assert (got[9]["id"], got[9]["split"]) == ("images/inner.jpg", "test")
    assert (got[12]["id"], got[12]["answer"]) == ("images/a.jpg#12", "no_risk")
    assert got[14]["id"] == "images/g.jpg"
    assert got[14]["_image_uris"] == [f"{uri}/images/g.jpg"]
    assert reasons(rows) == {
        0: None,
        1: None,
        2: "unknown_label",
        3: "bad_split",
        4: "bad_row",
        5: "bad_path",
        6: "outside_source",
        7: "bad_path",
        8: "outside_source",
        9: None,
        10: "bad_path",
        11: "bad_row",
        12: None,
        13: "bad_path",
        14: None,
        15: "unknown_label",
        16: "bad_split",
        17: "outside_source",
    }
    assert {r["_reject_stage"] for r in rows if r["_reject_reason"]} == {"import"}
    detail = {o: r["_reject_detail"] for o, r in got.items()}
    assert detail[2] == (
        f"labels.csv line 5: 'High_Risk' is not a label of task corridor_risk; "
        f"expected one of {LABELS}"
    )
    assert detail[3] == "labels.csv line 6: split 'holdout' is not one of train, val, test"
    assert detail[4] == "labels.csv line 7: 2 fields, the header has 3"
    assert "NUL byte" in detail[7] and detail[7].startswith("labels.csv line 10:")
    real_secret = os.path.realpath(folder.parent / "outside" / "secret.jpg")
    assert detail[8].startswith("labels.csv line 11:") and real_secret in detail[8]
    assert detail[15].startswith("labels.csv line 18: 'no_risk\\nextra'")
    assert detail[16].startswith("labels.csv line 20: split 'Train'")
    # rows without a usable image path keep a positional id and the CSV as their source
    assert [got[o]["id"] for o in (4, 5, 7, 10)] == [f"labels.csv:{o}" for o in (4, 5, 7, 10)]
    assert got[5]["source_uri"] == f"{uri}/labels.csv#5"
    assert got[11]["id"] == "images/f.jpg"  # path fine, label empty
    assert len({r["id"] for r in rows}) == 18


def test_folder_generator_is_pure_and_split_optional(folder: Path):
    """iter_rows reads any text stream; without a split column every split is None; paths are
    relative to the folder whatever source.image_dir says."""
    source = plan_source(config(folder, image_dir="images"))
    text = "image,label\nimages/a.jpg,no_risk\nimages/b.jpg,low_risk\n"
    rows = list(import_folder.iter_rows(io.StringIO(text, newline=""), source))
    assert [(r["id"], r["answer"], r["split"], r["_reject_reason"]) for r in rows] == [
        ("images/a.jpg", "no_risk", None, None),
        ("images/b.jpg", "low_risk", None, None),
    ]


def test_folder_invalid_utf8_is_a_row_problem(tmp_path: Path):
    root = tmp_path / "src"
    root.mkdir()
    (root / "labels.csv").write_bytes(
        b"image,label\nimg\xff.jpg,no_risk\nok.jpg,low\xe9risk\nfine.jpg,low_risk\n"
    )
    rows = read_rows(config(root))
    assert reasons(rows) == {0: "bad_path", 1: "unknown_label", 2: None}
    assert "not valid UTF-8" in rows[0]["_reject_detail"]
    assert rows[1]["answer"] == "low\\udce9risk"  # storable text, the bad byte spelled out
    for row in rows:
        for key in ("id", "answer", "_reject_detail", "source_uri"):
            if row[key] is not None:
                row[key].encode("utf-8")


@pytest.mark.parametrize(
    ("task", "answers", "expected"),
    [
        ("score", ["7", "Score: 8/10", "great"], [None, None, "bad_answer"]),
        ("counting", ["3", "3.5", "-1", "three"], [None, "bad_answer", "bad_answer", "bad_answer"]),
        ("classification", ["a red door", "x"], [None, None]),
        ("high_risk_binary", ["other", "no_risk"], [None, "unknown_label"]),
    ],
)
def test_folder_answers_by_task(tmp_path: Path, task, answers, expected):
    root = tmp_path / "src"
    root.mkdir()
    body = "".join(f'i{k}.jpg,"{a}"\n' for k, a in enumerate(answers))
    (root / "labels.csv").write_text("image,label\n" + body)
    rows = read_rows(config(root, task=task))
    assert [r["_reject_reason"] for r in rows] == expected
    assert [r["answer"] for r in rows] == answers


def test_folder_source_errors(tmp_path: Path):
    with pytest.raises(SourceError, match="not found"):
        check_source(config(tmp_path / "nope"))
    root = tmp_path / "src"
    root.mkdir()
    with pytest.raises(SourceError, match="labels file not found"):
        check_source(config(root))
    (root / "labels.csv").write_text("image,answer\na.jpg,x\n")
    with pytest.raises(SourceError, match=r"lacks column\(s\) \['label'\]"):
        check_source(config(root))
    (root / "labels.csv").write_text("")
    with pytest.raises(SourceError, match="is empty"):
        check_source(config(root))
    with pytest.raises(SourceError, match="inside the source folder"):
        check_source(config(root, labels_file="../labels.csv"))


# --- LLaMA-Factory ----------------------------------------------------------------------------


def test_llamafactory_demo_vqa():
    rows = read_rows(config(FIXTURE, "llamafactory", task="vqa"))
    assert len(rows) == 6 and all(r["_reject_reason"] is None for r in rows)
    got = by_order(rows)
    uri = FIXTURE.as_uri()
    img = [f"{uri}/mllm_demo_data/{k}.jpg" for k in (1, 2, 3)]
    assert [r["id"] for r in rows] == [f"mllm_demo.json:{k}" for k in range(6)]
    assert [r["_image_uris"] for r in rows] == [[img[0], img[0]], [img[1]], [img[2]]] * 2
    assert [r["source_uri"] for r in rows] == [f"{uri}/mllm_demo.json#0", img[1], img[2]] + [
        f"{uri}/mllm_demo.json#3",
        img[1],
        img[2],
    ]
    assert (got[0]["prompt"], got[0]["answer"]) == (
        "What are they doing?",
        "They are celebrating on the soccer field.",
    )
    assert json.loads(got[0]["conversation"]) == [
        {"role": "user", "content": "<image>Who are they?"},
        {"role": "assistant", "content": "They're Kane and Gretzka from Bayern Munich."},
        {"role": "user", "content": "What are they doing?<image>"},
        {"role": "assistant", "content": "They are celebrating on the soccer field."},
    ]
    assert (got[1]["prompt"], got[1]["answer"]) == (
        "Why is he on the ground?",
        "Because he's sliding on his knees to celebrate.",
    )
    assert (got[3]["prompt"], got[3]["answer"]) == ("他们在做什么？", "他们在足球场上庆祝。")
    assert json.loads(got[5]["conversation"])[0] == {
        "role": "user",
        "content": "<image>请描述这张图片",
    }
    assert {r["split"] for r in rows} == {None}
    assert {r["task"] for r in rows} == {"vqa"}


def test_llamafactory_demo_label_task_rejects_every_answer():
    rows = read_rows(config(FIXTURE, "llamafactory", task="corridor_risk"))
    assert [r["_reject_reason"] for r in rows] == ["unknown_label"] * 6
    assert rows[1]["_reject_detail"] == (
        'mllm_demo.json[1]: "Because he\'s sliding on his knees to celebrate." is not a label '
        f"of task corridor_risk; expected one of {LABELS}"
    )


def test_llamafactory_entry_selection(tmp_path: Path):
    """dataset None takes the only entry with a file here; else the error lists the entries."""
    source = plan_source(config(FIXTURE, "llamafactory", task="vqa"))
    assert (source.annotation, source.options["dataset"]) == ("mllm_demo.json", "mllm_demo")
    assert source.options["tags"]["system_tag"] is None  # `tags` given: unlisted tags unset
    assert source.options["columns"]["images"] == "images"
    with pytest.raises(SourceError) as err:
        check_source(config(FIXTURE, "llamafactory", dataset="nope"))
    assert "no entry 'nope'" in str(err.value)
    assert "identity, alpaca_en_demo" in str(err.value) and "mllm_demo" in str(err.value)
    with pytest.raises(SourceError, match="has no file_name"):
        check_source(config(FIXTURE, "llamafactory", dataset="alpaca_en"))
    with pytest.raises(SourceError, match="ranking"):
        check_source(config(FIXTURE, "llamafactory", dataset="dpo_en_demo"))
    with pytest.raises(SourceError, match="no images column"):
        check_source(config(FIXTURE, "llamafactory", dataset="mllm_audio_demo"))

    root = copy_fixture(tmp_path / "two")
    (root / "identity.json").write_text("[]")
    with pytest.raises(SourceError) as err:
        check_source(config(root, "llamafactory"))
    assert "2 with a file" in str(err.value) and "(identity, mllm_demo)" in str(err.value)


def _write(root: Path, info: dict, name: str, data: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_info.json").write_text(json.dumps(info))
    (root / name).write_text(data, encoding="utf-8")


ALPACA = [
    {
        "instruction": "<image>Grade the fire risk.",
        "input": "",
        "output": "high_risk",
        "images": ["imgs/1.jpg"],
        "system": "You are a fire inspector.",
    },
    {
        "instruction": "<image>Grade",
        "input": "Look at the exit.",
        "output": " low_risk\n",
        "images": "imgs/2.jpg",
        "history": [["Is this a corridor?", "Yes."]],
    },
    {"instruction": "Grade the fire risk.", "output": "no_risk", "images": ["imgs/3.jpg"]},
    {"instruction": "<image>Grade", "output": "", "images": ["imgs/4.jpg"]},
    {"instruction": "<image>Grade", "output": "severe", "images": ["imgs/5.jpg"]},
    {"instruction": "<image><image>Grade", "output": "low_risk", "images": ["a.jpg", "b.jpg"]},
]


def test_llamafactory_alpaca(tmp_path: Path):
    root = tmp_path / "alp"
    columns = {"prompt": "instruction", "query": "input", "response": "output"}
    columns |= {"images": "images", "system": "system", "history": "history"}
    _write(root, {"corr": {"file_name": "corr.json", "columns": columns}}, "corr.json", "")
    (root / "corr.json").write_text(json.dumps(ALPACA, indent=1))
    rows = read_rows(config(root, "llamafactory"))
    assert reasons(rows) == {
        0: None,
        1: None,
        2: "image_count_mismatch",
        3: "bad_row",
        4: "unknown_label",
        5: "image_count_mismatch",
    }
    uri = root.as_uri()
    assert rows[0]["id"] == "corr.json:0"
    assert (rows[0]["prompt"], rows[0]["answer"]) == ("Grade the fire risk.", "high_risk")
    assert rows[0]["source_uri"] == f"{uri}/imgs/1.jpg"
    assert json.loads(rows[0]["conversation"]) == [
        {"role": "system", "content": "You are a fire inspector."},
        {"role": "user", "content": "<image>Grade the fire risk."},
        {"role": "assistant", "content": "high_risk"},
    ]
    assert (rows[1]["prompt"], rows[1]["answer"]) == ("Grade\nLook at the exit.", "low_risk")
    assert rows[1]["_image_uris"] == [f"{uri}/imgs/2.jpg"]
    assert json.loads(rows[1]["conversation"]) == [
        {"role": "user", "content": "Is this a corridor?"},
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "<image>Grade\nLook at the exit."},
        {"role": "assistant", "content": " low_risk\n"},
    ]
    assert rows[2]["_reject_detail"] == (
        "corr.json[2]: 0 <image> placeholder(s) in the turns but 1 image(s)"
    )
    assert rows[3]["_reject_detail"] == "corr.json[3]: 'output' is empty"
    assert rows[5]["_reject_detail"] == (
        "corr.json[5]: 2 images, but task corridor_risk takes one image per sample"
    )


OK_TURNS = [{"from": "human", "value": "<image>Q"}, {"from": "gpt", "value": "A"}]
CHAT_LINES = [  # file lines 1..12
    {
        "id": "s1",
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "<image>\nWhat is   in the\tpicture?"},
            {"from": "gpt", "value": "A corridor."},
        ],
        "images": ["a.jpg"],
    },
    "",
    {"id": "s1", "conversations": OK_TURNS, "images": ["b.jpg"]},
    "{oops",
    {"conversations": [OK_TURNS[0], {"from": "observation", "value": "t"}], "images": ["a.jpg"]},
    {"conversations": OK_TURNS[:1], "images": ["a.jpg"]},
    {"conversations": OK_TURNS, "images": ["a.jpg", "b.jpg"]},
    {"conversations": OK_TURNS, "images": [{"bytes": "..."}]},
    {"conversations": [OK_TURNS[0], {"from": "gpt", "value": " "}], "images": ["a.jpg"]},
    ["not", "an object"],
    {"conversations": OK_TURNS},
    {"id": 7, "conversations": OK_TURNS, "images": ["../../etc/x.jpg"]},
]


def test_llamafactory_sharegpt_jsonl_default_tags(tmp_path: Path):
    root = tmp_path / "chat"
    entry = {"file_name": "chat.jsonl", "formatting": "sharegpt"}
    entry["columns"] = {"messages": "conversations", "images": "images"}
    _write(root, {"other": {"file_name": "x.json"}, "chat": entry}, "chat.jsonl", "")
    lines = [x if isinstance(x, str) else json.dumps(x) for x in CHAT_LINES]
    (root / "chat.jsonl").write_text("\n".join(lines) + "\n")
    rows = read_rows(config(root, "llamafactory", task="vqa", dataset="chat"))
    assert reasons(rows) == {
        0: None,
        1: None,
        2: "bad_row",
        3: "bad_row",
        4: "bad_row",
        5: "image_count_mismatch",
        6: "bad_row",
        7: "bad_row",
        8: "bad_row",
        9: "bad_row",
        10: "outside_source",
    }
    assert [r["id"] for r in rows[:2]] == ["s1", "s1#1"]
    assert rows[0]["prompt"] == "What is in the picture?"
    assert json.loads(rows[0]["conversation"])[0] == {"role": "system", "content": "Be brief."}
    details = [r["_reject_detail"] for r in rows]
    assert details[2].startswith("chat.jsonl line 4: invalid JSON")
    assert details[3] == "chat.jsonl line 5: turn 1 is a tool turn ('observation')"
    assert details[4] == "chat.jsonl line 6: the last turn is the user's: no assistant answer"
    assert details[6] == "chat.jsonl line 8: image path is dict, not a string"
    assert details[7] == "chat.jsonl line 9: turn 1 is empty"
    assert details[8] == "chat.jsonl line 10: list, not an object"
    assert details[9] == "chat.jsonl line 11: no image ('images' is empty)"
    assert rows[10]["id"] == "7"


def test_llamafactory_source_errors(tmp_path: Path):
    root = tmp_path / "bad"
    _write(root, {"d": {"file_name": "d.json", "formatting": "sharegpt"}}, "d.json", "[]")
    with pytest.raises(SourceError, match="no images column"):
        check_source(config(root, "llamafactory"))
    columns = {"messages": "messages", "images": "images"}
    entry = {"file_name": "d.json", "formatting": "sharegpt", "columns": columns}
    entry["tags"] = {"role_tag": "role", "content_tag": "content"}
    _write(root, {"d": entry}, "d.json", "[]")
    with pytest.raises(SourceError, match="tags leave 'user_tag' unset"):
        check_source(config(root, "llamafactory"))
    columns = {"prompt": "p", "response": "r", "images": "i"}
    _write(root, {"d": {"file_name": "d.json", "columns": {"images": "i"}}}, "d.json", "[]")
    with pytest.raises(SourceError, match="columns leave 'response' unset"):
        check_source(config(root, "llamafactory"))
    _write(root, {"d": {"file_name": "d.json", "columns": columns}}, "d.json", '{"a": 1}')
    with pytest.raises(SourceError, match=r"not a JSON list of objects: it starts with '\{'"):
        check_source(config(root, "llamafactory"))
    (root / "d.json").write_text('["x"]')
    with pytest.raises(SourceError, match="its first element starts with"):
        check_source(config(root, "llamafactory"))
    _write(root, {"d": {"file_name": "d.csv", "columns": columns}}, "d.csv", "a,b\n")
    with pytest.raises(SourceError, match="expected .json or .jsonl"):
        check_source(config(root, "llamafactory"))
    (root / "dataset_info.json").unlink()
    with pytest.raises(SourceError, match="dataset_info.json not found"):
        check_source(config(root, "llamafactory"))


def test_broken_json_list_fails_as_a_source_error(tmp_path: Path):
    root = tmp_path / "broken"
    columns = {"prompt": "instruction", "response": "output", "images": "images"}
    entry = {"file_name": "d.json", "columns": columns}
    good = {"instruction": "<image>Q", "output": "A", "images": ["a.jpg"]}
    _write(root, {"d": entry}, "d.json", "[" + json.dumps(good) + ', {"instruction": }]')
    source = plan_source(config(root, "llamafactory", task="vqa"))  # the head looks fine
    rows = []
    with (
        pytest.raises(SourceError, match=r"d.json: invalid JSON in element 1"),
        open_input(source.annotation_uri) as fh,
    ):
        rows.extend(source_rows(source, fh))
    assert len(rows) == 1 and rows[0]["_reject_reason"] is None


# --- LLaVA ------------------------------------------------------------------------------------


def _llava(human: str, gpt: str) -> list[dict]:
    return [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]


LLAVA = [
    {"id": "000001", "image": "coco/1.jpg", "conversations": _llava("<image>\nFire?", "high_risk")},
    {
        "id": "000002",
        "image": ["a.jpg", "b.jpg"],
        "conversations": _llava("<image> <image> Compare", "low_risk"),
    },  # noqa: E501
    {"id": "000003", "image": "c.jpg", "conversations": list(reversed(_llava("<image>", "x")))},
    {"id": "000004", "conversations": _llava("Hi", "no_risk")},
    {"id": "000005", "image": "d.jpg", "conversations": _llava("<image>Q", "Medium_risk")},
    {"id": "000006", "image": "../../x.jpg", "conversations": _llava("<image>Q", "no_risk")},
    {"id": "000007", "image": "../top.jpg", "conversations": _llava("<image>Q", "no_risk")},
]


@pytest.fixture()
def llava(tmp_path: Path) -> Path:
    root = tmp_path / "llava"
    (root / "images").mkdir(parents=True)
    (root / "ann.json").write_text(json.dumps(LLAVA))
    return root


def test_llava_rows(llava: Path):
    rows = read_rows(config(llava, "llava", annotations="ann.json", image_dir="images"))
    assert reasons(rows) == {
        0: None,
        1: "image_count_mismatch",
        2: "bad_row",
        3: "bad_row",
        4: "unknown_label",
        5: "outside_source",
        6: None,
    }
    uri = llava.as_uri()
    assert [r["id"] for r in rows] == [f"00000{k}" for k in range(1, 8)]
    assert rows[0]["_image_uris"] == [f"{uri}/images/coco/1.jpg"]
    assert (rows[0]["prompt"], rows[0]["answer"]) == ("Fire?", "high_risk")
    assert json.loads(rows[0]["conversation"]) == [
        {"role": "user", "content": "<image>\nFire?"},
        {"role": "assistant", "content": "high_risk"},
    ]
    assert rows[2]["_reject_detail"] == (
        "ann.json[2]: turn 0 has from 'gpt', expected 'human' (turns alternate 'human' and 'gpt')"
    )
    assert rows[6]["_image_uris"] == [f"{uri}/top.jpg"]  # outside image_dir, inside the source


def test_llava_multi_image_for_a_multi_image_task(llava: Path):
    rows = read_rows(config(llava, "llava", "vqa", annotations="ann.json", image_dir="images"))
    uri = llava.as_uri()
    assert rows[1]["_reject_reason"] is None
    assert rows[1]["prompt"] == "Compare"
    assert rows[1]["_image_uris"] == [f"{uri}/images/a.jpg", f"{uri}/images/b.jpg"]
    assert rows[1]["source_uri"] == f"{uri}/ann.json#1"
    assert rows[4]["_reject_reason"] is None  # vqa: any non-empty answer
    # the generator reads any text stream (here JSON lines)
    source = plan_source(config(llava, "llava", "vqa", annotations="ann.json"))
    source = dataclasses.replace(source, options={"jsonl": True})
    text = "\n".join(json.dumps(s) for s in LLAVA[:2])
    got = list(import_llava.iter_rows(io.StringIO(text), source))
    assert [r["_image_uris"] for r in got] == [
        [f"{uri}/coco/1.jpg"],
        [f"{uri}/a.jpg", f"{uri}/b.jpg"],
    ]


def test_llava_source_errors(llava: Path):
    with pytest.raises(SourceError, match="annotation file not found"):
        check_source(config(llava, "llava"))
    with pytest.raises(SourceError, match="source.image_dir"):
        check_source(config(llava, "llava", annotations="ann.json", image_dir="../x"))


# --- shared pieces ----------------------------------------------------------------------------


TRICKY = [
    {"s": 'a "quoted" ] } [ {', "n": 12345678901234567890, "f": -0.25e-3, "u": "é\u2603"},
    [],
    {},
    "x\\y\n",
    123456789,
    [1, [2, [3]]],
    None,
    True,
]


@pytest.mark.parametrize("read_size", [1, 3, 7, 64, 1 << 20])
def test_streaming_json_list_parser_matches_json_loads(read_size):
    text = json.dumps(TRICKY, indent=2, ensure_ascii=False)
    got = list(iter_json_list(io.StringIO(text), "t.json", read_size=read_size))
    assert got == json.loads(text)
    assert list(iter_json_list(io.StringIO(" [ ] \n"), "e.json", read_size=read_size)) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2", "ends inside the list"),
        ("[1 2]", "expected ',' or ']' after element 0"),
        ("[1,]", "invalid JSON in element 1"),
        ("[1] x", "unexpected data after the JSON list"),
        ('{"a": 1}', "not a JSON list"),
        ("", "not a JSON list"),
    ],
)
def test_streaming_json_list_parser_errors(text, message):
    with pytest.raises(SourceError, match=message):
        list(iter_json_list(io.StringIO(text), "t.json", read_size=2))


def test_tidy_prompt():
    assert tidy_prompt("<image>Who are they?") == "Who are they?"
    assert tidy_prompt("What  are\tthey doing?<image>") == "What are they doing?"
    assert tidy_prompt("Look <image> here\n\n\n\n<image>\nand here ") == "Look here\n\nand here"
    assert tidy_prompt("<image>") == ""


def test_rows_per_block_follows_the_file_size(folder: Path):
    source = plan_source(config(folder))
    assert rows_per_block(source, 32) == 32  # a small file: batch-size blocks
    big = dataclasses.replace(source, size=4_000_000)
    assert rows_per_block(big, 32) == 500  # 100k estimated rows / 200 blocks
    huge = dataclasses.replace(source, size=10**10)
    assert rows_per_block(huge, 32) == 8192


@pytest.mark.parametrize(
    "task, answer, problem",
    [
        ("score", "7", None),
        ("score", "Score: 10/10", None),
        ("score", "eleven", "'eleven' holds no score from 1 to 10"),
        ("counting", "12", None),
        ("counting", "12.5", "'12.5' is not a whole number (counting)"),
        ("counting", "twelve", "'twelve' is not a whole number (counting)"),
        ("vqa", "anything at all", None),
    ],
)
def test_free_text_answers_are_checked_by_their_task(task, answer, problem):
    if problem is None:
        check_answer(get_task(task), answer, "f.json[0]")
        return
    with pytest.raises(RowProblem) as err:
        check_answer(get_task(task), answer, "f.json[0]")
    assert err.value.reason == "bad_answer"
    assert err.value.detail == f"f.json[0]: {problem}"


def test_a_new_task_brings_its_own_answer_check():
    """A task defined here, with no change to pipelines/: its check decides what is refused."""
    even = TaskSpec(
        "even", "An even number?", answer_check=lambda a: None if a in ("0", "2") else "is odd"
    )
    check_answer(even, "2", "x")
    with pytest.raises(RowProblem, match=r"^x: '3' is odd$"):
        check_answer(even, "3", "x")
