"""The pure augmentation functions of pipelines/augment.py (no Ray)."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from hazard.config.data import AugmentConfig
from hazard.schema import content_hash
from pipelines.augment import (
    apply_steps,
    augment_bytes,
    augment_row,
    copy_rng,
    crop_resize,
    hflip,
    plan_copy,
    rotate,
    step_labels,
)
from pipelines.common import REJECT_REASON


def _gradient(w: int = 48, h: int = 32, mode: str = "RGB") -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    rgb = np.stack([x, y, np.full_like(x, 80)], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb).convert(mode)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_hflip_mirrors_and_is_an_involution():
    img = _gradient()
    flipped = np.asarray(hflip(img))
    assert np.array_equal(flipped, np.asarray(img)[:, ::-1])
    assert np.array_equal(np.asarray(hflip(hflip(img))), np.asarray(img))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_rotate_keeps_size_and_mode(mode):
    img = _gradient(mode=mode)
    out = rotate(img, 7.5)
    assert out.size == img.size and out.mode == mode


def test_rotate_zero_is_identity():
    img = _gradient()
    assert np.array_equal(np.asarray(rotate(img, 0.0)), np.asarray(img))


def test_rotate_fills_corners_from_the_image_not_black():
    img = Image.new("RGB", (40, 30), (200, 120, 40))
    out = np.asarray(rotate(img, 10.0)).astype(int)
    # a constant fill would leave dark wedges in the corners; reflected edges keep the colour
    assert np.abs(out - np.array([200, 120, 40])).max() <= 1


def test_rotate_is_counter_clockwise():
    arr = np.zeros((41, 41), dtype=np.uint8)
    arr[20, 35] = 255  # right of centre
    out = np.asarray(rotate(Image.fromarray(arr), 30.0))
    y, x = np.unravel_index(np.argmax(out), out.shape)
    assert y < 20 and x > 20  # moved up, still right: counter-clockwise in image coordinates


def test_rotate_handles_tiny_and_narrow_images():
    for size in [(1, 1), (2, 2), (3, 50)]:
        assert rotate(_gradient(*size), -10.0).size == size


def test_crop_resize_keeps_size_and_full_area_is_identity():
    img = _gradient()
    assert crop_resize(img, 0.85, 0.3, 0.7).size == img.size
    assert np.array_equal(np.asarray(crop_resize(img, 1.0, 0.5, 0.5)), np.asarray(img))


def test_crop_resize_position_follows_offsets():
    img = _gradient(64, 64)
    left = np.asarray(crop_resize(img, 0.5, 0.0, 0.0)).astype(int)
    right = np.asarray(crop_resize(img, 0.5, 1.0, 1.0)).astype(int)
    # red grows left to right, green top to bottom: the bottom-right window is brighter
    assert right[..., 0].mean() > left[..., 0].mean() + 40
    assert right[..., 1].mean() > left[..., 1].mean() + 40


def test_plan_is_deterministic_and_in_range():
    cfg = AugmentConfig(rotate_max_deg=10.0, crop_min_area=0.85, seed=3)
    plans = {(sid, k): plan_copy(cfg, sid, k) for sid in ["a.png", "b.png"] for k in range(20)}
    assert plans[("a.png", 0)] == plan_copy(cfg, "a.png", 0)
    assert len({str(p) for p in plans.values()}) == len(plans)  # copies and samples differ
    for steps in plans.values():
        names = [name for name, _ in steps]
        assert names in (["hflip", "rotate", "crop"], ["rotate", "crop"])
        params = dict(steps)
        assert -10.0 <= params["rotate"][0] <= 10.0
        area, fx, fy = params["crop"]
        assert 0.85 <= area <= 1.0 and 0 <= fx <= 1 and 0 <= fy <= 1
    flips = sum(steps[0][0] == "hflip" for steps in plans.values())
    assert 5 <= flips <= 35  # about half of the 40 copies


def test_plan_depends_on_seed_and_follows_config_order():
    a = plan_copy(AugmentConfig(seed=0), "x.png", 1)
    b = plan_copy(AugmentConfig(seed=1), "x.png", 1)
    assert a != b
    steps = plan_copy(AugmentConfig(ops=["crop", "rotate"]), "x.png", 0)
    assert [name for name, _ in steps] == ["crop", "rotate"]
    only_flip = [plan_copy(AugmentConfig(ops=["hflip"]), "x.png", k) for k in range(8)]
    assert all(steps == [("hflip", ())] for steps in only_flip)
    assert plan_copy(AugmentConfig(rotate_max_deg=0.0, ops=["rotate"]), "x", 0) == [
        ("rotate", (0.0,))
    ]


def test_copy_rng_is_stable():
    assert copy_rng(0, "a", 1).random() == copy_rng(0, "a", 1).random()
    assert copy_rng(0, "a", 1).random() != copy_rng(0, "a", 2).random()


def test_step_labels_format():
    steps = [("hflip", ()), ("rotate", (6.2,)), ("rotate", (-3.0,)), ("crop", (0.9, 0.1, 0.2))]
    assert step_labels(steps) == ["hflip", "rotate:+6.2", "rotate:-3.0", "crop:0.90"]


def test_augment_bytes_is_png_deterministic_and_same_size():
    data = _png(_gradient())
    steps = plan_copy(AugmentConfig(), "img.png", 0)
    out = augment_bytes(data, steps)
    assert out == augment_bytes(data, steps)
    with Image.open(io.BytesIO(out)) as img:
        assert img.format == "PNG" and img.size == (48, 32)
    assert out != data


def test_augment_bytes_accepts_jpeg_palette_and_alpha():
    steps = [("hflip", ()), ("rotate", (5.0,)), ("crop", (0.9, 0.5, 0.5))]
    jpeg = io.BytesIO()
    _gradient().save(jpeg, format="JPEG")
    palette = _gradient().convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 0
    for data, mode in [
        (jpeg.getvalue(), "RGB"),
        (_png(palette), "RGBA"),
        (_png(_gradient(mode="LA")), "RGBA"),
        (_png(_gradient(mode="L")), "L"),
    ]:
        with Image.open(io.BytesIO(augment_bytes(data, steps))) as img:
            assert img.mode == mode and img.size == (48, 32)


def test_apply_steps_rejects_unknown_op():
    with pytest.raises(ValueError, match="unknown augmentation op"):
        apply_steps(_gradient(), [("shear", (0.1,))])


def _row(images: list[bytes]) -> dict:
    return {
        "id": "images/a.png",
        "images": images,
        "task": "corridor_risk",
        "prompt": "p",
        "answer": "no_risk",
        "split": "train",
        "source_uri": "file:///x/images/a.png",
        "content_hash": content_hash(images),
        "parent_id": None,
        "aug_ops": [],
        "_order": 3,
        REJECT_REASON: None,
        "_reject_detail": None,
    }


def test_augment_row_builds_provenance():
    row = _row([_png(_gradient())])
    copies = augment_row(row, AugmentConfig(copies=3))
    assert [c["id"] for c in copies] == [f"images/a.png#aug{k}" for k in range(3)]
    for c in copies:
        assert c["parent_id"] == "images/a.png" and c[REJECT_REASON] is None
        assert c["content_hash"] == content_hash(c["images"]) != row["content_hash"]
        assert all(
            re.fullmatch(r"hflip|rotate:[+-]\d+\.\d|crop:\d\.\d\d", op) for op in c["aug_ops"]
        )
        assert (c["answer"], c["split"], c["source_uri"]) == ("no_risk", "train", row["source_uri"])
    assert row["aug_ops"] == [] and row["parent_id"] is None  # the original is not modified


def test_augment_row_failure_is_a_rejected_copy():
    copies = augment_row(_row([b"not an image"]), AugmentConfig(copies=2))
    assert [c[REJECT_REASON] for c in copies] == ["augment_failed", "augment_failed"]
    assert all(c["images"] == [] and c["parent_id"] == "images/a.png" for c in copies)
