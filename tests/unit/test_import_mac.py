"""MAC multiple choice through the llamafactory importer's row generator (no Ray).

A MAC folder (tests/helpers/mac.py: real PNG covers, alpaca rows, one dataset_info entry per
task and split) is written here; `source.splits` reads three entries in one pass and
`source.unlabelled_splits: [test]` keeps the test rows without an answer. Expected values are
written out by hand from the rows below.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from pydantic import ValidationError

from hazard.config import load_config
from hazard.config.data import (
    AugmentConfig,
    DataConfig,
    SourceConfig,
    SplitConfig,
    ValidationConfig,
)
from hazard.infra.storage import filesystem_for
from pipelines.augment import augment_rows, is_augmentable
from pipelines.consistency import needs_score
from pipelines.dedup_split import decide
from pipelines.sources import SourceError, all_rows, check_source, plan_source
from pipelines.write import check, count
from tests.helpers.augment import stage_row
from tests.helpers.mac import SYSTEM, mac_row, user_turn, write_mac

SPLITS = {"train": "{t}_train", "val": "{t}_dev", "test": "{t}_test"}


def mac_config(root: Path, task: str, **source) -> DataConfig:
    source.setdefault("splits", {s: e.format(t=task) for s, e in SPLITS.items()})
    source.setdefault("unlabelled_splits", ["test"])
    return DataConfig(
        source=SourceConfig(format="llamafactory", uri=str(root), **source),
        output_dir=str(root.parent / "out"),
        task="multiple_choice",
    )


def read(cfg: DataConfig) -> list[dict]:
    source = plan_source(cfg)
    fs, _ = filesystem_for(source.annotation_uri)
    return list(all_rows(source, fs))


def image2text_folder(root: Path) -> dict[str, list[dict]]:
    t = "image2text"
    entries = {
        "image2text_train": [
            mac_row(root, t, 0, "A"),  # no id: <file>:<index>
            mac_row(root, t, 1, "C", "tr-1"),
            mac_row(root, t, 2, "E", "tr-2"),  # unknown_label
            mac_row(root, t, 3, "", "tr-3"),  # labelled split, empty answer: bad_row
            mac_row(root, t, 4, "B", "tr-4", placeholders=2),  # image_count_mismatch
        ],
        "image2text_dev": [mac_row(root, t, 5, "B", "dev-0")],
        "image2text_test": [
            mac_row(root, t, 6, "", "i2t_test_0001"),
            mac_row(root, t, 7, None, "i2t_test_0002"),  # no output key at all
            mac_row(root, t, 8, "D", "i2t_test_0003"),  # an answer in a test row is kept
            {**mac_row(root, t, 9, "", "i2t_test_0004"), "images": []},  # no image: bad_row
        ],
    }
    write_mac(root, entries)
    return entries


def test_image2text_three_entries_in_one_pass(tmp_path: Path):
    root = tmp_path / "mac"
    entries = image2text_folder(root)
    rows = read(mac_config(root, "image2text"))
    # test, then val, then train; _order runs on across the three files
    assert [r["_order"] for r in rows] == list(range(10))
    assert [(r["id"], r["split"], r["answer"], r["_reject_reason"]) for r in rows] == [
        ("i2t_test_0001", "test", None, None),
        ("i2t_test_0002", "test", None, None),
        ("i2t_test_0003", "test", "D", None),
        ("i2t_test_0004", "test", None, "bad_row"),
        ("dev-0", "val", "B", None),
        ("image2text_train.json:0", "train", "A", None),
        ("tr-1", "train", "C", None),
        ("tr-2", "train", "E", "unknown_label"),
        ("tr-3", "train", None, "bad_row"),
        ("tr-4", "train", "B", "image_count_mismatch"),
    ]
    by_id = {r["id"]: r for r in rows}
    details = {r["id"]: r["_reject_detail"] for r in rows if r["_reject_reason"]}
    assert details["tr-2"].startswith("image2text_train.json[2]: 'E' is not a label")
    assert details["tr-3"] == "image2text_train.json[3]: 'output' is empty"
    assert details["tr-4"] == (
        "image2text_train.json[4]: 2 <image> placeholder(s) in the turns but 1 image(s)"
    )
    assert details["i2t_test_0004"] == "image2text_test.json[3]: no image ('images' is empty)"

    test0 = entries["image2text_test"][0]
    unlabelled = by_id["i2t_test_0001"]
    assert json.loads(unlabelled["conversation"]) == [
        {"role": "user", "content": user_turn("image2text", test0)}
    ]
    assert unlabelled["prompt"] == (
        f"{SYSTEM['image2text']}\n\nWhich title belongs to this cover?\n"  # <image> line
        "A. Title 6-A\nB. Title 6-B\nC. Title 6-C\nD. Title 6-D"
    )
    assert unlabelled["_image_uris"] == [(root / "covers/cover_006.png").as_uri()]
    assert unlabelled["source_uri"] == (root / "covers/cover_006.png").as_uri()
    train1 = entries["image2text_train"][1]
    assert json.loads(by_id["tr-1"]["conversation"]) == [
        {"role": "user", "content": user_turn("image2text", train1)},
        {"role": "assistant", "content": "C"},
    ]


def test_text2image_four_images_per_row(tmp_path: Path):
    root = tmp_path / "mac"
    t = "text2image"
    entries = {
        "text2image_train": [
            mac_row(root, t, 0, "C", "t2i-0"),
            mac_row(root, t, 1, "A", "t2i-1", placeholders=3),  # image_count_mismatch
        ],
        "text2image_dev": [mac_row(root, t, 2, "D", "t2i-dev")],
        "text2image_test": [mac_row(root, t, 3, "", "t2i_test_0001")],
    }
    write_mac(root, entries)
    rows = read(mac_config(root, t))
    assert [(r["id"], r["split"], r["answer"], r["_reject_reason"]) for r in rows] == [
        ("t2i_test_0001", "test", None, None),
        ("t2i-dev", "val", "D", None),
        ("t2i-0", "train", "C", None),
        ("t2i-1", "train", "A", "image_count_mismatch"),
    ]
    test = rows[0]
    assert test["_image_uris"] == [
        (root / f"covers/cover_{k:03d}.png").as_uri() for k in (12, 13, 14, 15)
    ]
    conversation = json.loads(test["conversation"])
    assert conversation == [{"role": "user", "content": user_turn(t, entries[f"{t}_test"][0])}]
    assert conversation[0]["content"].count("<image>") == 4
    assert "<image>" not in test["prompt"]
    assert rows[3]["_reject_detail"] == (
        "text2image_train.json[1]: 3 <image> placeholder(s) in the turns but 4 image(s)"
    )


def test_a_test_split_not_declared_unlabelled_rejects_empty_answers(tmp_path: Path):
    root = tmp_path / "mac"
    image2text_folder(root)
    rows = read(mac_config(root, "image2text", unlabelled_splits=[]))
    test = [(r["id"], r["_reject_reason"]) for r in rows if r["split"] == "test"]
    assert test == [
        ("i2t_test_0001", "bad_row"),
        ("i2t_test_0002", "bad_row"),
        ("i2t_test_0003", None),
        ("i2t_test_0004", "bad_row"),
    ]


def test_sharegpt_unlabelled_rows_end_with_the_user(tmp_path: Path):
    root = tmp_path / "chat"
    img = mac_row(root, "image2text", 0, "A")["images"]  # writes the cover
    user = {"from": "human", "value": "<image>Which?"}
    samples = [
        {"id": "q0", "conversations": [user], "images": img},
        {"id": "q1", "conversations": [user, {"from": "gpt", "value": " "}], "images": img},
        {"id": "q2", "conversations": [{"from": "gpt", "value": ""}], "images": img},
    ]
    (root / "test.json").write_text(json.dumps(samples))
    (root / "train.json").write_text(json.dumps(samples[:2]))
    entry = {"formatting": "sharegpt", "columns": {"messages": "conversations", "images": "images"}}
    info = {"tr": {**entry, "file_name": "train.json"}, "te": {**entry, "file_name": "test.json"}}
    (root / "dataset_info.json").write_text(json.dumps(info))
    rows = read(mac_config(root, "x", splits={"train": "tr", "test": "te"}))
    assert [(r["id"], r["split"], r["answer"], r["_reject_reason"]) for r in rows] == [
        ("q0", "test", None, None),
        ("q1", "test", None, None),
        ("q2", "test", None, "bad_row"),  # nothing but a blank answer: no user turn
        ("q0#3", "train", None, "bad_row"),  # ids unique across the files
        ("q1#4", "train", None, "bad_row"),
    ]
    assert json.loads(rows[1]["conversation"]) == [{"role": "user", "content": "<image>Which?"}]


def test_unknown_entry_in_splits_names_the_known_entries(tmp_path: Path):
    root = tmp_path / "mac"
    image2text_folder(root)
    cfg = mac_config(root, "image2text", splits={"train": "image2text_train", "test": "nope"})
    with pytest.raises(SourceError) as err:
        check_source(cfg)
    assert str(err.value) == (
        "source.splits.test: dataset_info.json has no entry 'nope'; its entries: "
        "image2text_train, image2text_dev, image2text_test"
    )


def test_splits_override_from_the_command_line(tmp_path: Path):
    cfg = load_config(
        None,
        DataConfig,
        [
            f"source.uri={tmp_path}",
            "output_dir=out",
            "source.format=llamafactory",
            "source.splits={train: image2text_train, val: image2text_dev, test: image2text_test}",
            "source.unlabelled_splits=[test]",
        ],
    )
    assert cfg.source.splits == {
        "train": "image2text_train",
        "val": "image2text_dev",
        "test": "image2text_test",
    }
    assert cfg.source.unlabelled_splits == ["test"]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"dataset": "a", "splits": {"train": "a"}}, "source.dataset and source.splits are excl"),
        ({"unlabelled_splits": ["test"]}, "source.unlabelled_splits needs source.splits"),
        ({"splits": {"train": "a"}, "unlabelled_splits": ["test"]}, "['test'] are not keys"),
        ({"splits": {"train": "a", "test": "a"}}, "entry(ies) ['a'] for several splits"),
        ({"splits": {}}, "source.splits is empty"),
        ({"splits": {"train": "a", "test": "b"}, "unlabelled_splits": ["train"]}, "'test'"),
        ({"splits": {"holdout": "a"}}, "'train', 'val' or 'test'"),
        ({"format": "folder", "splits": {"train": "a"}}, "for format llamafactory, not 'folder'"),
    ],
)
def test_bad_split_configs(source: dict, message: str):
    with pytest.raises(ValidationError) as err:
        SourceConfig(**{"format": "llamafactory", "uri": "x", **source})
    assert message in str(err.value)


def test_unlabelled_rows_are_never_augmented_or_scored():
    labelled = stage_row("a", "A")
    unlabelled = stage_row("b", None)  # a train row without answer (a guard; config forbids)
    assert is_augmentable(labelled) and not is_augmentable(unlabelled)
    assert needs_score(labelled) and not needs_score(unlabelled)
    out = augment_rows([unlabelled, labelled], AugmentConfig(copies=2), ValidationConfig())
    assert [r["id"] for r in out] == ["b", "a", "a#aug0", "a#aug1"]


def test_an_unlabelled_duplicate_is_no_label_conflict():
    light = (
        pa.Table.from_pylist(
            [
                {"_order": 0, "id": "t0", "prompt": "p", "answer": None, "split": "test"},
                {"_order": 1, "id": "r0", "prompt": "p", "answer": "B", "split": "train"},
                {"_order": 2, "id": "r1", "prompt": "p", "answer": "C", "split": "train"},
            ],
        )
        .append_column("content_hash", pa.array(["h"] * 3))
        .append_column("_reject_reason", pa.array([None] * 3, pa.string()))
    )
    decisions = decide(light, SplitConfig())
    assert decisions.duplicates == {
        1: "same content as t0 (split test)",
        2: "same content as t0 (split test)",
    }
    assert decisions.conflicts == [] and decisions.splits == {}


def test_lineage_counts_unlabelled_rows_per_split():
    base = {"parent_id": None, "_reject_stage": None, "_reject_reason": None}
    rows = [
        {**base, "split": "test", "answer": None},
        {**base, "split": "test", "answer": None},
        {**base, "split": "test", "answer": "A"},
        {**base, "split": "test", "answer": None, "_reject_reason": "duplicate"},
        {**base, "split": "train", "answer": "B"},
    ]
    rows[3]["_reject_stage"] = "dedup"
    splits = count(rows, ("A", "B", "C", "D"))["splits"]
    assert {s: c["unlabelled"] for s, c in splits.items()} == {
        "train": 0,
        "val": 0,
        "test": 2,
        "unassigned": 0,
    }
    assert splits["test"]["accepted"] == 3


def test_lineage_check_compares_unlabelled_rows_with_the_shards():
    base = {"parent_id": None, "_reject_stage": None, "_reject_reason": None, "split": "test"}
    counts = count([{**base, "answer": None}, {**base, "answer": "A"}], ("A", "B", "C", "D"))
    written = {"train": 0, "val": 0, "test": 2}
    assert check(counts, written, 0, {"train": 0, "val": 0, "test": 1}) == []
    assert check(counts, written, 0, {"train": 0, "val": 0, "test": 2}) == [
        "test: shards hold 2 unlabelled rows, expected 1"
    ]
