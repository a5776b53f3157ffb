"""The augment stage (pipelines/augment.py): per-label copies, provenance, encoding, rejection,
and the Ray stage against the plain-loop `augment_rows`."""

from __future__ import annotations

import hashlib
import io
import re

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from hazard.config.data import AugmentConfig, DataConfig, RayConfig, ValidationConfig
from pipelines.augment import augment, augment_rows
from pipelines.common import (
    REJECT_DETAIL,
    REJECT_REASON,
    REJECT_STAGE,
    stage_table,
)
from tests.helpers.augment import encode, scene, stage_row

VALIDATION = ValidationConfig()
CFG = AugmentConfig(
    copies=2, labels={"high_risk": {"copies": 5}, "non_corridor": {"copies": 0}}, seed=0
)
OP = re.compile(
    r"scale:\d\.\d\d(:\w+)?|rotate:[+-]\d+\.\d(:\w+)?|crop:\d\.\d\d|hflip|"
    r"hsv:h[+-]\d+\.\d,s\d\.\d\d,v\d\.\d\d"
)


def _decode(data: bytes) -> tuple[str, np.ndarray]:
    with Image.open(io.BytesIO(data)) as img:
        return img.format, np.asarray(img.convert("RGB"))


def _rows() -> list[dict]:
    return [
        stage_row("a.jpg", "no_risk", fmt="JPEG"),
        stage_row("bb.png", "high_risk"),
        stage_row("ccc.png", "low_risk", images=[b""], **{REJECT_REASON: "undecodable"}),
        stage_row("dddd.png", "no_risk", split="val"),
        stage_row("eeeee.png", "high_risk", split="test"),
        stage_row("a.jpg#aug9", "no_risk", parent_id="a.jpg"),
        stage_row("ggggggg.png", "non_corridor"),
    ]


EXPECTED_IDS = (
    ["a.jpg", "a.jpg#aug0", "a.jpg#aug1", "bb.png"]
    + [f"bb.png#aug{k}" for k in range(5)]
    + ["ccc.png", "dddd.png", "eeeee.png", "a.jpg#aug9", "ggggggg.png"]
)


@pytest.fixture(scope="module")
def out() -> list[dict]:
    return augment_rows(_rows(), CFG, VALIDATION)


# --- rows --------------------------------------------------------------------------------------


def test_rows_pass_through_and_only_kept_original_train_rows_gain_copies(out):
    # 7 rows in; copies: a (no_risk) 2, bb (high_risk) 5, non_corridor 0, the rest none
    assert [r["id"] for r in out] == EXPECTED_IDS and len(out) == 7 + 2 + 5
    originals = {r["id"]: r for r in _rows()}
    for r in out:
        if r["id"] in originals:
            assert r == originals[r["id"]]  # untouched, rejected and val/test rows included


def test_copies_carry_provenance_and_a_fresh_hash(out):
    parents = {r["id"]: r for r in _rows()}
    copies = [r for r in out if r["id"] not in parents]
    assert len(copies) == 7
    for c in copies:
        parent = parents[c["parent_id"]]
        assert c["id"].startswith(parent["id"] + "#aug") and c[REJECT_REASON] is None
        assert [op.split(":")[0] for op in c["aug_ops"]] in (
            ["scale", "rotate", "crop", "hflip", "hsv"],
            ["scale", "rotate", "crop", "hsv"],
        )
        assert all(OP.fullmatch(op) for op in c["aug_ops"]), c["aug_ops"]
        expected = hashlib.sha256(b"".join(hashlib.sha256(d).digest() for d in c["images"]))
        assert c["content_hash"] == expected.hexdigest() != parent["content_hash"]
        for key in ("task", "prompt", "answer", "split", "source_uri", "_order", "_image_uris"):
            assert c[key] == parent[key]
    assert len({c["content_hash"] for c in copies}) == 7


def test_copies_are_reencoded_per_validation_and_keep_the_size(out):
    by_id = {r["id"]: r for r in out}
    for rid, fmt in [("a.jpg#aug0", "JPEG"), ("bb.png#aug3", "PNG")]:  # 'auto' keeps JPEG
        got_fmt, arr = _decode(by_id[rid]["images"][0])
        assert (got_fmt, arr.shape) == (fmt, (72, 96, 3))
    row = stage_row("a.jpg", "no_risk", fmt="JPEG")
    webp = augment_rows([row], CFG, ValidationConfig(encode_format="WEBP"))[1]
    assert _decode(webp["images"][0])[0] == "WEBP"
    low, high = (
        augment_rows([row], CFG, ValidationConfig(jpeg_quality=q))[1]["images"][0] for q in (60, 98)
    )
    assert len(low) < len(high)


def test_same_seed_id_and_copy_give_the_same_bytes_whatever_the_batch(out):
    alone = augment_rows([stage_row("bb.png", "high_risk")], CFG, VALIDATION)
    copies = [r for r in out if r["parent_id"] == "bb.png"]
    assert [r["images"] for r in alone[1:]] == [r["images"] for r in copies]
    assert [r["aug_ops"] for r in alone[1:]] == [r["aug_ops"] for r in copies]
    assert len({tuple(r["aug_ops"]) for r in copies}) == 5  # each copy its own plan
    reseeded = augment_rows(
        [stage_row("bb.png", "high_risk")], CFG.model_copy(update={"seed": 1}), VALIDATION
    )
    assert all(a["images"] != b["images"] for a, b in zip(reseeded[1:], copies, strict=True))


def test_per_label_ops_apply_exactly():
    cfg = AugmentConfig(copies=1, labels={"high_risk": {"copies": 3, "ops": ["hflip"]}})
    row = stage_row("bb.png", "high_risk")
    copies = augment_rows([row], cfg, VALIDATION)[1:]
    assert [c["aug_ops"] for c in copies] == [["hflip"]] * 3
    parent = _decode(row["images"][0])[1]
    for c in copies:  # PNG in, PNG out: the mirror is exact
        assert np.array_equal(_decode(c["images"][0])[1], parent[:, ::-1])
    other = augment_rows([stage_row("a.png", "no_risk")], cfg, VALIDATION)[1:]
    assert len(other) == 1 and len(other[0]["aug_ops"]) >= 4  # defaults for other labels


def test_protected_colours_survive_a_colour_only_copy():
    cfg = AugmentConfig(copies=4, ops=["hsv"], hue_shift_deg=30.0)
    row = stage_row("bb.png", "high_risk")
    parent = _decode(row["images"][0])[1]
    for c in augment_rows([row], cfg, VALIDATION)[1:]:
        arr = _decode(c["images"][0])[1]
        assert np.array_equal(arr[15:35, 30:60], parent[15:35, 30:60])  # red sign
        assert np.array_equal(arr[55:60], parent[55:60])  # yellow tape
        assert np.all(np.any(arr[:15] != parent[:15], axis=-1))  # grey wall: value changed


def test_multi_image_rows_apply_one_plan_to_each_image():
    png = encode(scene(3), "PNG")
    row = stage_row("pair.png", "no_risk", images=[png, png])
    for c in augment_rows([row], AugmentConfig(copies=3), VALIDATION)[1:]:
        assert len(c["images"]) == 2 and c["images"][0] == c["images"][1]
    flat = encode(np.full((72, 96, 3), 128, np.uint8), "PNG")
    checker = (np.indices((72, 96)).sum(0) % 2 * 120 + 60).astype(np.uint8)
    mixed = stage_row("mixed.png", "no_risk", images=[flat, encode(checker, "PNG")])
    cfg = AugmentConfig(copies=3, ops=["rotate"])
    ops = [c["aug_ops"] for c in augment_rows([mixed], cfg, VALIDATION)[1:]]
    assert all(re.fullmatch(r"rotate:[+-]\d+\.\d:constant/reflect", o[0]) for o in ops), ops


def test_a_copy_that_fails_is_rejected_and_the_parent_kept():
    bad = stage_row("bad.png", "no_risk", images=[b"not an image"])
    out = augment_rows([bad], CFG, VALIDATION)
    assert out[0] == bad
    assert [r["id"] for r in out[1:]] == ["bad.png#aug0", "bad.png#aug1"]
    for r in out[1:]:
        assert (r[REJECT_REASON], r[REJECT_STAGE], r["images"]) == ("augment_failed", "augment", [])
        assert r["parent_id"] == "bad.png" and "cannot decode" in r[REJECT_DETAIL]


# --- config ------------------------------------------------------------------------------------


def test_rule_for_label_and_enabled():
    assert CFG.rule_for("high_risk") == (5, ["scale", "rotate", "crop", "hflip", "hsv"])
    assert CFG.rule_for("non_corridor")[0] == 0 and CFG.rule_for("no_risk")[0] == 2
    assert CFG.rule_for(None)[0] == 2
    assert AugmentConfig(copies=0, labels={"high_risk": {"copies": 3}}).enabled
    assert not AugmentConfig(copies=0).enabled


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"ops": ["blur"]}, "ops"),
        ({"ops": ["hsv", "hsv"]}, "must not repeat"),
        ({"scale_range": [1.2, 0.9]}, "scale_range"),
        ({"scale_range": [0.3, 1.0]}, "scale_range"),
        ({"rotate_max_deg": 45}, "rotate_max_deg"),
        ({"crop_min_area": 0.3}, "crop_min_area"),
        ({"labels": {"high_risk": {"ops": ["hflip", "hflip"]}}}, "must not repeat"),
        ({"labels": {"high_risk": {"copies": 2, "ops": []}}}, "needs at least one op"),
        ({"labels": {"high_risk": {"copise": 2}}}, "copise"),
        ({"protected_hues": [{"name": "red", "hue": [350, 400]}]}, "hue"),
    ],
)
def test_invalid_configs_are_rejected(bad, match):
    with pytest.raises(ValidationError, match=match):
        AugmentConfig.model_validate(bad)


def test_check_labels_against_the_task():
    cfg = AugmentConfig(labels={"high_risk": {"copies": 4}, "hihg_risk": {"copies": 1}})
    with pytest.raises(ValueError, match=r"unknown label\(s\) \['hihg_risk'\]"):
        cfg.check_labels(("no_risk", "high_risk"))
    cfg.check_labels(None)  # free-text task: anything goes
    data = DataConfig(source={"uri": "x"}, output_dir="y", augment={"labels": {"high_risk": {}}})
    assert data.augment.rule_for("high_risk") == data.augment.rule_for("other")


# --- the Ray stage -----------------------------------------------------------------------------


@pytest.mark.slow
def test_stage_on_ray_adds_the_same_copies_as_the_plain_loop(ray_local):
    import ray
    from ray.data.dataset import MaterializedDataset

    rows = _rows()
    ds = ray.data.from_arrow([stage_table(rows[:3]), stage_table(rows[3:])])
    staged = augment(ds, CFG, VALIDATION, RayConfig(batch_size=2))
    assert not isinstance(staged, MaterializedDataset)  # lazy
    got = {r["id"]: r for r in staged.take_all()}
    expected = {r["id"]: r for r in augment_rows(rows, CFG, VALIDATION)}
    assert len(got) == len(rows) + 7 and set(got) == set(EXPECTED_IDS)
    for rid, row in expected.items():
        assert got[rid] == row, rid  # originals untouched, copies byte-identical
    assert augment(ds, AugmentConfig(copies=0), VALIDATION, RayConfig()) is ds
