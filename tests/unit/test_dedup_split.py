"""Duplicates and split assignment, decided from the light columns (no Ray)."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pytest

from hazard.config.data import SplitConfig
from pipelines.common import ORDER, REJECT_REASON
from pipelines.dedup_split import LIGHT_COLUMNS, decide, split_key, stratified_splits


def _light(rows: list[tuple]) -> pa.Table:
    """(order, id, answer, split, hash, reject_reason[, prompt]) tuples as the light table."""
    names = [ORDER, "id", "answer", "split", "content_hash", REJECT_REASON, "prompt"]
    return pa.Table.from_pylist(
        [dict(zip(names, (*r, "Grade it.") if len(r) == 6 else r, strict=True)) for r in rows]
    )


def test_split_key_is_sha256_of_seed_and_id():
    assert split_key(3, "a.png") == hashlib.sha256(b"3\x1fa.png").hexdigest()


def test_stratified_cut_by_hand():
    # 10 rows of "x", 5 of "y": x -> 8/1/1; y cuts at floor(4.0+.5)=4 and floor(4.5+.5)=5:
    # 4 train, 1 val, 0 test (0.8 + 0.1 in floats is 0.9000000000000001: exact maths needed)
    rows = [(i, f"x{i}", "x") for i in range(10)] + [(10 + i, f"y{i}", "y") for i in range(5)]
    cfg = SplitConfig(fractions={"train": 0.8, "val": 0.1, "test": 0.1}, seed=7)
    got = stratified_splits(rows, cfg)
    x_sorted = sorted(range(10), key=lambda i: split_key(7, f"x{i}"))
    assert [got[i] for i in x_sorted] == ["train"] * 8 + ["val", "test"]
    y_sorted = sorted(range(5), key=lambda i: split_key(7, f"y{i}"))
    assert [got[10 + i] for i in y_sorted] == ["train"] * 4 + ["val"]


def test_split_depends_on_seed_and_ids_not_on_row_order():
    rows = [(i, f"img{i}.png", "a" if i % 3 else "b") for i in range(60)]
    cfg = SplitConfig(seed=1)
    forward = stratified_splits(rows, cfg)
    backward = stratified_splits([(o, i, a) for o, i, a in reversed(rows)], cfg)
    assert forward == backward
    other = stratified_splits(rows, SplitConfig(seed=2))
    assert other != forward
    assert sum(v == "train" for v in forward.values()) == 48  # a: 40 -> 32, b: 20 -> 16


def test_a_zero_fraction_gets_no_rows():
    rows = [(i, str(i), "a") for i in range(7)]
    got = stratified_splits(rows, SplitConfig(fractions={"train": 0.5, "val": 0.0, "test": 0.5}))
    assert sorted(got.values()) == ["test"] * 3 + ["train"] * 4  # floor(3.5 + 0.5) = 4 train


def test_duplicates_keep_the_first_listed_and_report_label_conflicts():
    rows = [
        (0, "a.png", "no_risk", "train", "h1", None),
        (1, "b.png", "low_risk", None, "h2", None),
        (2, "a_copy.png", "no_risk", "val", "h1", None),  # same label: duplicate
        (3, "a_other.png", "high_risk", None, "h1", None),  # other label: duplicate + conflict
        (4, "bad.png", "no_risk", "train", "h2", "undecodable"),  # rejected before: ignored
        (5, "c.png", "no_risk", None, "h3", None),
    ]
    d = decide(_light(rows), SplitConfig(fractions={"train": 1.0}))
    assert set(d.duplicates) == {2, 3}
    assert d.duplicates[2] == "same content as a.png (split train)"
    assert "conflicting label 'high_risk' vs kept 'no_risk'" in d.duplicates[3]
    assert d.conflicts == [
        {
            "kept_id": "a.png",
            "kept_label": "no_risk",
            "others": [{"id": "a_other.png", "label": "high_risk"}],
        }
    ]
    # only kept rows without a split get one; duplicates and rejected rows do not
    assert d.splits == {1: "train", 5: "train"}


def test_light_columns_are_what_decide_reads():
    assert ORDER in LIGHT_COLUMNS and REJECT_REASON in LIGHT_COLUMNS
    with pytest.raises(KeyError):
        decide(pa.table({"id": ["x"]}), SplitConfig())


def test_the_same_image_asked_another_question_is_not_a_duplicate():
    rows = [
        (0, "s0", "Kane and Gretzka.", "train", "h1", None, "Who are they?"),
        (1, "s1", "Celebrating.", "train", "h1", None, "What are they doing?"),
        (2, "s2", "Two players.", "train", "h1", None, "Who are they?"),
    ]
    d = decide(_light(rows), SplitConfig())
    assert d.duplicates == {
        2: "same content as s0 (split train); conflicting label "
        "'Two players.' vs kept 'Kane and Gretzka.'"
    }
