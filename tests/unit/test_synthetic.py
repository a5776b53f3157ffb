"""The synthetic scene generator: determinism, visible label rules, the folder dataset."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from hazard.core.labels import RISK_LABELS
from hazard.demo.synthetic import (
    CORRUPT_KINDS,
    SceneSpec,
    blue_green_fraction,
    caption,
    hazard_colour_fraction,
    main,
    render_scene,
    write_folder_dataset,
)

SEEDS = range(20)
CORRIDOR_LABELS = ("no_risk", "low_risk", "medium_risk", "high_risk")


@pytest.fixture(scope="module")
def scenes() -> dict[str, list[tuple[Image.Image, SceneSpec]]]:
    return {
        label: [render_scene(label, np.random.default_rng([s, i])) for s in SEEDS]
        for i, label in enumerate(RISK_LABELS)
    }


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("label", RISK_LABELS)
def test_same_seed_same_bytes(label):
    a, spec_a = render_scene(label, np.random.default_rng(7))
    b, spec_b = render_scene(label, np.random.default_rng(7))
    c, _ = render_scene(label, np.random.default_rng(8))
    assert a.tobytes() == b.tobytes()
    assert spec_a == spec_b
    assert a.tobytes() != c.tobytes()


@pytest.mark.parametrize("size", [112, 64, 140])
@pytest.mark.parametrize("label", RISK_LABELS)
def test_every_label_renders_at_size(label, size):
    img, spec = render_scene(label, np.random.default_rng(1), size=size)
    assert img.mode == "RGB" and img.size == (size, size)
    assert spec.label == label and spec.size == size and spec.kind
    for _, (x0, y0, x1, y1) in spec.boxes:
        assert 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0


def test_unknown_label_names_valid_labels():
    with pytest.raises(ValueError, match="no_risk.*non_corridor"):
        render_scene("very_high_risk", np.random.default_rng(0))


def test_high_risk_colour_cue_is_large(scenes):
    fractions = [hazard_colour_fraction(img) for img, _ in scenes["high_risk"]]
    assert min(fractions) >= 0.08, fractions


@pytest.mark.parametrize("label", [x for x in RISK_LABELS if x != "high_risk"])
def test_no_hazard_colours_outside_high_risk(scenes, label):
    fractions = [hazard_colour_fraction(img) for img, _ in scenes[label]]
    assert max(fractions) < 0.01, fractions


def test_high_risk_cue_survives_flip_and_crop(scenes):
    for img, _ in scenes["high_risk"]:
        s = img.size[0]
        side = int(round(s * 0.85**0.5))
        for x, y in ((0, 0), (s - side, s - side), (0, s - side), (s - side, 0)):
            crop = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).crop((x, y, x + side, y + side))
            assert hazard_colour_fraction(crop) >= 0.06


def test_non_corridor_has_more_blue_green(scenes):
    corridor = max(blue_green_fraction(img) for lb in CORRIDOR_LABELS for img, _ in scenes[lb])
    outside = [blue_green_fraction(img) for img, _ in scenes["non_corridor"]]
    assert min(outside) > corridor
    assert min(outside) > 0.1


def test_medium_objects_larger_than_low(scenes):
    low = [spec.object_area() for _, spec in scenes["low_risk"]]
    medium = [spec.object_area() for _, spec in scenes["medium_risk"]]
    assert min(low) > 0.0
    assert min(medium) > max(low)
    assert all(spec.boxes == [] for _, spec in scenes["no_risk"])


def test_kinds_are_varied(scenes):
    for label, items in scenes.items():
        if label != "no_risk":
            assert len({spec.kind for _, spec in items}) >= 3, label
    walls = {spec.wall_colour for lb in CORRIDOR_LABELS for _, spec in scenes[lb]}
    assert len(walls) >= 4


# --------------------------------------------------------------------------- captions


def test_caption_contains_label_and_varies(scenes):
    for label, items in scenes.items():
        for _, spec in items:
            text = caption(spec, np.random.default_rng(0))
            assert label in text.split() or f"{label}." in text or text.endswith(label), text
        _, spec = items[0]
        assert len({caption(spec, np.random.default_rng(s)) for s in range(20)}) >= 3


def test_caption_mentions_what_is_visible():
    spec = SceneSpec("high_risk", "ebike_charging", details={"colour": "red"}, wall_colour="grey")
    texts = {caption(spec, np.random.default_rng(s)) for s in range(20)}
    assert all("bike" in t and "high_risk" in t for t in texts)
    assert any("red" in t for t in texts)


# --------------------------------------------------------------------------- folder dataset


def test_folder_dataset_layout_and_stratified_splits(tmp_path):
    result = write_folder_dataset(tmp_path, n_per_label=20, seed=3)
    rows = _read_csv(tmp_path / "labels.csv")
    assert rows[0] == ["image", "label", "split"]
    body = rows[1:]
    assert len(body) == 100 == result["rows"] and result["corrupt"] == 0
    for image, label, split in body:
        assert image == f"images/{image.split('/')[1]}" and image.startswith(f"images/{label}_")
        assert split in ("train", "val", "test")
        with Image.open(tmp_path / image) as im:
            assert im.size == (112, 112) and im.mode == "RGB"
    for label in RISK_LABELS:
        got = {s: sum(1 for r in body if r[1] == label and r[2] == s) for s in ("train", "val")}
        got["test"] = sum(1 for r in body if r[1] == label and r[2] == "test")
        assert got == {"train": 14, "val": 3, "test": 3} == result["counts"][label]


def test_folder_dataset_is_deterministic(tmp_path):
    a = write_folder_dataset(tmp_path / "a", n_per_label=3, seed=5, corrupt=4)
    b = write_folder_dataset(tmp_path / "b", n_per_label=3, seed=5, corrupt=4)
    assert a == b
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*"))
    assert files_a == files_b
    for rel in files_a:
        if (tmp_path / "a" / rel).is_file():
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_folder_dataset_corrupt_rows(tmp_path):
    result = write_folder_dataset(tmp_path, n_per_label=2, seed=0, corrupt=4)
    assert result["corrupt"] == 4 and sorted(result["corrupt_kinds"]) == sorted(CORRUPT_KINDS)
    body = _read_csv(tmp_path / "labels.csv")[1:]
    assert len(body) == 2 * len(RISK_LABELS) + 4
    good = body[:-4]
    bad = {image.split("_", 2)[2].split(".")[0]: (image, label) for image, label, _ in body[-4:]}
    assert all(label in RISK_LABELS for _, label, _ in good)
    # truncated image bytes: the header is there, decoding fails
    image, label = bad["truncated"]
    assert label in RISK_LABELS
    with pytest.raises(OSError), Image.open(tmp_path / image) as im:
        im.load()
    # a text file named .png
    image, _ = bad["not_an_image"]
    assert image.endswith(".png")
    with pytest.raises(OSError):
        Image.open(tmp_path / image)
    # a valid image whose label is not a risk label
    image, label = bad["unknown_label"]
    assert label not in RISK_LABELS
    with Image.open(tmp_path / image) as im:
        im.load()
    # a row pointing at nothing
    image, label = bad["missing"]
    assert label in RISK_LABELS and not (tmp_path / image).exists()


def test_folder_dataset_jpeg(tmp_path):
    write_folder_dataset(tmp_path, n_per_label=1, image_format="jpg")
    body = _read_csv(tmp_path / "labels.csv")[1:]
    assert all(image.endswith(".jpg") for image, _, _ in body)
    with Image.open(tmp_path / body[0][0]) as im:
        assert im.format == "JPEG"


def test_cli_prints_counts(tmp_path, capsys):
    assert main([str(tmp_path), "--n-per-label", "4", "--seed", "1", "--corrupt", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["corrupt"] == 2 and out["rows"] == 22
    assert sum(out["counts"]["high_risk"].values()) == 4
