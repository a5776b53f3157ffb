"""The pure augmentation ops of hazard/augment (no Ray): plans, geometry, padding,
protected-hue HSV jitter."""

from __future__ import annotations

import colorsys
import math
import re

import numpy as np
import pytest
from PIL import Image

from hazard.augment.colour import hsv_jitter, hsv_to_rgb, protected_mask, rgb_to_hsv
from hazard.augment.geometry import Padding, choose_padding, pad_array, warp
from hazard.augment.ops import crop, hflip, rotate, scale, vflip
from hazard.config.data import AugmentConfig
from pipelines.augment_plan import apply_plan, copy_rng, plan_copy, step_labels

BANDS = AugmentConfig().protected_hues
EDGE = Padding("edge", ())


def _ramp(w: int = 64, h: int = 48) -> Image.Image:
    """R = 4x, G = 4y, B = 80: linear, so bilinear interpolation of it is exact."""
    x = (4 * np.arange(w))[None, :].repeat(h, 0)
    y = (4 * np.arange(h))[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 80)], -1).astype(np.uint8))


def _blob_centre(arr: np.ndarray) -> tuple[float, float]:
    """Intensity-weighted centre (x, y) in pixel-centre coordinates of a 2-D array."""
    ys, xs = np.indices(arr.shape)
    w = arr.astype(np.float64)
    return float((w * (xs + 0.5)).sum() / w.sum()), float((w * (ys + 0.5)).sum() / w.sum())


def _blob(size: int, cx: int, cy: int) -> Image.Image:
    """A smooth (Gaussian, sigma 3) spot centred on pixel (cx, cy) of a dark square."""
    ys, xs = np.indices((size, size))
    arr = 250 * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * 3.0**2))
    return Image.fromarray(np.rint(arr).astype(np.uint8))


# --- plans -------------------------------------------------------------------------------------


def test_copy_rng_depends_on_seed_id_and_copy_only():
    first = copy_rng(0, "a.png", 1).random(4)
    assert np.array_equal(first, copy_rng(0, "a.png", 1).random(4))
    for other in [copy_rng(0, "a.png", 2), copy_rng(1, "a.png", 1), copy_rng(0, "b.png", 1)]:
        assert not np.array_equal(first, other.random(4))


def test_plan_is_deterministic_and_copies_differ():
    cfg = AugmentConfig(seed=3)
    plans = {(sid, k): plan_copy(cfg, sid, k) for sid in ["a.png", "b.png"] for k in range(20)}
    assert plans[("a.png", 7)] == plan_copy(cfg, "a.png", 7)
    assert len({str(p) for p in plans.values()}) == 40
    assert plan_copy(AugmentConfig(seed=4), "a.png", 7) != plans[("a.png", 7)]


def test_plan_parameters_stay_in_their_bounds():
    cfg = AugmentConfig(
        scale_range=(0.8, 1.2), rotate_max_deg=7.0, crop_min_area=0.8, hue_shift_deg=12.0
    )
    for k in range(300):
        steps = dict(plan_copy(cfg, "x.jpg", k))
        (s,), (angle,), (area, fx, fy) = steps["scale"], steps["rotate"], steps["crop"]
        hue, sat, val = steps["hsv"]
        assert 0.8 <= s <= 1.2 and -7.0 <= angle <= 7.0 and 0 <= fx <= 1 and 0 <= fy <= 1
        assert 0.8 <= area <= 1.0
        zoom = max(s, 1.0) ** 2  # scale-up and crop together keep >= 80 % (or 1/zoom)
        assert area / zoom >= min(0.8, 1 / zoom) - 1e-9
        assert -12.0 <= hue <= 12.0 and 0.8 <= sat <= 1.2 and 0.85 <= val <= 1.15
        assert "vflip" not in steps  # off by default: corridors have a floor


def test_scale_up_tightens_the_crop():
    cfg = AugmentConfig(scale_range=(1.1, 1.1), crop_min_area=0.85)
    areas = [dict(plan_copy(cfg, "x", k))["crop"][0] for k in range(50)]
    # 0.85 * 1.1^2 = 1.0285 > 1: no room left to crop
    assert areas == [1.0] * 50


def test_plan_order_is_fixed_and_ops_do_not_move_each_other():
    full = plan_copy(AugmentConfig(flip_prob=1.0), "x", 2)
    assert [n for n, _ in full] == ["scale", "rotate", "crop", "hflip", "hsv"]
    shuffled = AugmentConfig(ops=["hsv", "hflip", "crop", "rotate", "scale"], flip_prob=1.0)
    assert plan_copy(shuffled, "x", 2) == full
    only = plan_copy(AugmentConfig(), "x", 2, ops=["rotate", "hsv"])
    assert only == [s for s in full if s[0] in ("rotate", "hsv")]


def test_flip_probability_and_only_flips_rule():
    cfg = AugmentConfig(ops=["rotate", "hflip", "vflip"], flip_prob=0.5)
    plans = [dict(plan_copy(cfg, "x", k)) for k in range(400)]
    h = sum("hflip" in p for p in plans)
    v = sum("vflip" in p for p in plans)
    assert 150 <= h <= 250 and 150 <= v <= 250  # binomial(400, 0.5): mean 200, sd 10
    never = AugmentConfig(ops=["rotate", "hflip"], flip_prob=0.0)
    assert all("hflip" not in dict(plan_copy(never, "x", k)) for k in range(50))
    only = AugmentConfig(ops=["hflip"], flip_prob=0.0)
    assert all(plan_copy(only, "x", k) == [("hflip", ())] for k in range(20))


def test_step_labels_format():
    steps = [
        ("scale", (0.93,)),
        ("rotate", (6.2,)),
        ("crop", (0.91, 0.1, 0.2)),
        ("hflip", ()),
        ("vflip", ()),
        ("hsv", (8.0, 0.92, 1.05)),
    ]
    assert step_labels(steps, ["reflect"]) == [
        "scale:0.93:reflect",
        "rotate:+6.2:reflect",
        "crop:0.91",
        "hflip",
        "vflip",
        "hsv:h+8.0,s0.92,v1.05",
    ]
    # scale-up and a zero angle uncover nothing: no padding suffix
    assert step_labels([("scale", (1.07,)), ("rotate", (0.0,))], ["edge"]) == [
        "scale:1.07",
        "rotate:+0.0",
    ]
    assert step_labels([("rotate", (-3.0,)), ("hsv", (-0.5, 1.1, 0.9))], ["edge", "edge"]) == [
        "rotate:-3.0:edge",
        "hsv:h-0.5,s1.10,v0.90",
    ]
    assert step_labels([("rotate", (-3.0,))], ["edge", "constant"]) == ["rotate:-3.0:edge/constant"]
    pattern = "|".join(
        [
            r"scale:\d\.\d\d(:\w+)?",
            r"rotate:[+-]\d+\.\d(:\w+)?",
            r"crop:\d\.\d\d",
            "hflip",
            r"hsv:h[+-]\d+\.\d,s\d\.\d\d,v\d\.\d\d",
        ]
    )
    for k in range(20):
        labels = step_labels(plan_copy(AugmentConfig(), "y", k), ["reflect"])
        assert all(re.fullmatch(pattern, label) for label in labels), labels


# --- geometry ----------------------------------------------------------------------------------


def test_flips_move_a_known_pixel():
    arr = np.zeros((8, 10, 3), dtype=np.uint8)
    arr[5, 3] = (255, 10, 20)
    for out, (y, x) in [
        (hflip(Image.fromarray(arr)), (5, 6)),
        (vflip(Image.fromarray(arr)), (2, 3)),
        (apply_plan(Image.fromarray(arr), [("hflip", ())], EDGE), (5, 6)),
        (apply_plan(Image.fromarray(arr), [("hflip", ()), ("vflip", ())], EDGE), (2, 6)),
    ]:
        got = np.asarray(out)
        assert tuple(got[y, x]) == (255, 10, 20) and int(got.sum()) == 285


def test_warp_of_a_flip_matrix_is_exact_without_the_transpose_shortcut():
    img = _ramp(9, 7)
    m = np.array([[-1.0, 0, 9], [0, 1, 0], [0, 0, 1]])
    m[0, 0] += 1e-7  # not recognised as a flip: goes through the affine resample
    assert np.array_equal(np.asarray(warp(img, m, EDGE)), np.asarray(img)[:, ::-1])


@pytest.mark.parametrize("resample", ["bilinear", "bicubic"])
def test_rotate_by_right_angles_of_a_square_equals_rot90(resample):
    arr = np.random.default_rng(0).integers(0, 256, (9, 9, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    assert np.array_equal(np.asarray(rotate(img, 90.0, resample=resample)), np.rot90(arr))
    assert np.array_equal(np.asarray(rotate(img, -90.0, resample=resample)), np.rot90(arr, -1))
    assert np.array_equal(np.asarray(rotate(img, 180.0, resample=resample)), np.rot90(arr, 2))


def test_rotate_is_counter_clockwise_about_the_centre():
    out = np.asarray(rotate(_blob(61, 45, 30), 30.0))  # 15 px right of the centre (30.5, 30.5)
    x, y = _blob_centre(out)
    # counter-clockwise on screen: up and still right, at radius 15
    assert x == pytest.approx(30.5 + 15 * math.cos(math.radians(30)), abs=0.1)
    assert y == pytest.approx(30.5 - 15 * math.sin(math.radians(30)), abs=0.1)


@pytest.mark.parametrize("factor", [0.6, 1.25])
def test_scale_zooms_about_the_centre_and_keeps_the_size(factor):
    img = _blob(61, 40, 22)  # offset (+10, -8) from the centre
    out = scale(img, factor, Padding("constant", (0,)))
    assert out.size == img.size
    x, y = _blob_centre(np.asarray(out))
    assert x == pytest.approx(30.5 + 10 * factor, abs=0.1)
    assert y == pytest.approx(30.5 - 8 * factor, abs=0.1)


def test_crop_window_is_resized_back_exactly():
    img = _ramp(64, 48)
    assert crop(img, 0.25, 0.3, 0.7).size == (64, 48)
    assert np.array_equal(np.asarray(crop(img, 1.0, 0.5, 0.5)), np.asarray(img))
    # area 1/4: a half-size window; output column i reads input x = x0 + (i + 0.5) / 2
    for fx, x0 in [(0.0, 0), (1.0, 32)]:
        red = np.asarray(crop(img, 0.25, fx, 0.0))[..., 0].astype(int)
        expected = 4 * (x0 + (np.arange(1, 63) + 0.5) / 2 - 0.5)  # R = 4x at pixel centres
        assert np.array_equal(red[10, 1:63], expected.astype(int))


def test_geometry_composes_in_plan_order_with_one_resample():
    rng = np.random.default_rng(1)
    smooth = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize(
        (128, 96), Image.Resampling.BICUBIC
    )
    steps = [("rotate", (8.0,)), ("crop", (0.8, 0.2, 0.7)), ("hflip", ())]
    one = np.asarray(apply_plan(smooth, steps, Padding("reflect", ()))).astype(int)
    chained = hflip(crop(rotate(smooth, 8.0, Padding("reflect", ())), 0.8, 0.2, 0.7))
    wrong = rotate(hflip(crop(smooth, 0.8, 0.2, 0.7)), 8.0, Padding("reflect", ()))
    inner = (slice(12, -12), slice(16, -16))
    assert np.abs(one - np.asarray(chained).astype(int))[inner].mean() < 2.0
    assert np.abs(one - np.asarray(wrong).astype(int))[inner].mean() > 8.0


def test_apply_plan_rejects_unknown_ops_and_keeps_modes():
    with pytest.raises(ValueError, match="unknown augmentation op"):
        apply_plan(_ramp(), [("shear", (0.1,))], EDGE)
    steps = plan_copy(AugmentConfig(), "m", 0)
    for mode in ["RGB", "RGBA", "L"]:
        out = apply_plan(_ramp().convert(mode), steps, EDGE, BANDS)
        assert out.mode == mode and out.size == (64, 48)


# --- padding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["edge", "reflect"])
@pytest.mark.parametrize(
    "widths",
    [((0, 0), (0, 0)), ((1, 2), (3, 0)), ((4, 4), (6, 6)), ((0, 4), (2, 0)), ((6, 1), (1, 9))],
)
def test_pad_array_matches_numpy_pad(mode, widths):
    arr = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(pad_array(arr, widths, mode), np.pad(arr, (*widths, (0, 0)), mode=mode))
    grey = arr[..., 0]
    assert np.array_equal(pad_array(grey, widths, mode), np.pad(grey, widths, mode=mode))


def test_choose_padding_flat_border_is_constant_with_its_mean_colour():
    rng = np.random.default_rng(3)
    arr = np.full((100, 150, 3), (90, 140, 200), dtype=np.int16)
    arr += rng.integers(-1, 2, arr.shape).astype(np.int16)  # sensor noise, std ~0.8
    arr[30:70, 40:110] = rng.integers(0, 256, (40, 70, 3))  # busy centre, away from the border
    pad = choose_padding(arr.astype(np.uint8))
    assert pad == Padding("constant", (90, 140, 200))


def test_choose_padding_textured_border_reflects():
    checker = (np.indices((100, 150)).sum(0) % 2 * 120 + 60).astype(np.uint8)  # 60/180 pixels
    assert choose_padding(np.stack([checker] * 3, -1)).mode == "reflect"
    assert choose_padding(checker).mode == "reflect"  # L images too


def test_choose_padding_smooth_varying_border_replicates_edges():
    ramp = np.asarray(_ramp(64, 48))  # std ~55 but neighbours differ by 4 at most
    assert choose_padding(ramp).mode == "edge"
    assert choose_padding(ramp, texture_grad=1.0).mode == "reflect"  # its grad is 4/3
    assert choose_padding(ramp, flat_std=100.0).mode == "constant"
    assert choose_padding(ramp, mode="reflect").mode == "reflect"  # a fixed mode wins


def test_padding_fills_what_scale_down_uncovers():
    img = _ramp(64, 48)  # R = 4x, G = 4y
    # scale 0.5: output column i reads input x = 2 (i + 0.5) - 32, row j reads y = 2 (j + 0.5)
    # - 24: columns 0-15 and rows 0-11 lie outside the image
    edge = np.asarray(scale(img, 0.5, Padding("edge", ()))).astype(int)
    refl = np.asarray(scale(img, 0.5, Padding("reflect", ()))).astype(int)
    const = np.asarray(scale(img, 0.5, Padding("constant", (7, 8, 9))))
    assert np.all(edge[:, :16, 0] == 0)  # the first column (R = 0) replicated
    # reflect mirrors about pixel 0 (centre x = 0.5): R = 4 |x - 0.5|, growing leftwards
    assert [refl[24, i, 0] for i in (2, 4, 10, 14)] == [110, 94, 46, 14]
    assert np.all(const[:, :16] == (7, 8, 9)) and np.all(const[:12] == (7, 8, 9))
    assert np.all(const[12:36, 16:48] != (7, 8, 9))
    inside = (slice(12, 36), slice(16, 48))
    assert np.array_equal(edge[inside], refl[inside])  # padding plays no part there


def test_rotated_flat_image_has_no_dark_corners():
    img = Image.new("RGB", (40, 30), (200, 120, 40))
    pad = choose_padding(np.asarray(img))
    assert pad == Padding("constant", (200, 120, 40))
    assert np.all(np.asarray(rotate(img, 10.0, pad)) == (200, 120, 40))


# --- colour ------------------------------------------------------------------------------------


def test_rgb_to_hsv_matches_colorsys():
    rgb = np.random.default_rng(4).integers(0, 256, (3000, 3), dtype=np.uint8)
    hue, sat, val = rgb_to_hsv(rgb)
    ref = np.array([colorsys.rgb_to_hsv(*(c / 255.0)) for c in rgb])
    assert np.abs((hue - ref[:, 0] + 0.5) % 1 - 0.5).max() < 1e-5
    assert np.abs(sat - ref[:, 1]).max() < 1e-5 and np.abs(val / 255 - ref[:, 2]).max() < 1e-5


def test_hsv_to_rgb_matches_colorsys_with_any_hue():
    rng = np.random.default_rng(5)
    hue = rng.uniform(-2, 3, 3000).astype(np.float32)
    sat = rng.uniform(0, 1, 3000).astype(np.float32)
    val = rng.uniform(0, 255, 3000).astype(np.float32)
    ref = np.array(
        [colorsys.hsv_to_rgb(h % 1, s, v) for h, s, v in zip(hue, sat, val, strict=True)]
    )
    assert np.abs(hsv_to_rgb(hue, sat, val).astype(float) - ref).max() <= 0.5 + 1e-3


def test_hsv_round_trip_is_exact_for_every_colour():
    levels = np.arange(0, 256, 3, dtype=np.uint8)
    rgb = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    assert np.array_equal(hsv_to_rgb(*rgb_to_hsv(rgb)), rgb)
    img = Image.fromarray(rgb.reshape(86, 86 * 86, 3))
    assert np.array_equal(np.asarray(hsv_jitter(img, 0.0, 1.0, 1.0, BANDS)), np.asarray(img))


# Test colours: (rgb, protected by the default bands: hue in [335, 70], s >= 0.55, v >= 0.45).
COLOURS = [
    ((255, 0, 0), True),  # red, hue 0
    ((214, 34, 28), True),  # sign red, hue 2
    ((230, 20, 90), True),  # crimson, hue 340
    ((240, 118, 18), True),  # safety orange, hue 27
    ((250, 210, 30), True),  # safety yellow, hue 49
    ((200, 190, 40), True),  # dull yellow, hue 56, s 0.80
    ((30, 60, 200), False),  # blue
    ((40, 180, 60), False),  # green
    ((150, 50, 200), False),  # purple, hue 280
    ((128, 128, 128), False),  # grey: no hue
    ((90, 10, 10), False),  # dark red: v 0.35 < 0.45
    ((230, 170, 160), False),  # pale pink: s 0.30 < 0.55
    ((150, 122, 96), False),  # wood floor: hue 29 but s 0.36
    ((120, 200, 30), False),  # yellow-green: hue 88, outside the yellow band
]


def _swatches(cells: int = 6) -> tuple[Image.Image, np.ndarray]:
    """A grid of cells x cells blocks per colour, and which pixels the bands protect."""
    rgb = np.array([c for c, _ in COLOURS], dtype=np.uint8)
    idx = np.arange(len(COLOURS)).repeat(cells)[None, :].repeat(cells, 0)
    keep = np.array([k for _, k in COLOURS])[idx]
    return Image.fromarray(rgb[idx]), keep


def test_swatch_expectations_agree_with_colorsys():
    for (r, g, b), protected in COLOURS:
        h, s, v = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
        deg = h * 360
        in_band = (deg >= 335 or deg <= 70) and s >= 0.55 and v >= 0.45
        assert in_band == protected, (r, g, b)


def test_protected_mask_selects_exactly_the_band_pixels():
    img, keep = _swatches()
    hue, sat, val = rgb_to_hsv(np.asarray(img).reshape(-1, 3))
    assert np.array_equal(protected_mask(hue, sat, val, BANDS), keep.reshape(-1))


@pytest.mark.parametrize("hue_deg,sat,val", [(20.0, 1.2, 1.1), (-9.0, 0.8, 0.9), (0.0, 1.0, 1.1)])
def test_hsv_jitter_leaves_band_pixels_bit_identical_and_changes_all_others(hue_deg, sat, val):
    img, keep = _swatches()
    before = np.asarray(img)
    after = np.asarray(hsv_jitter(img, hue_deg, sat, val, BANDS))
    assert np.array_equal(after[keep], before[keep])
    changed = np.any(after != before, axis=-1)
    # every colour's value is <= 230, so v x 1.1 or 0.9 moves its largest channel: all change
    assert int(changed.sum()) == int((~keep).sum()) == 8 * 36
    assert not changed[keep].any()


def test_hsv_jitter_without_bands_changes_the_warning_colours_too():
    img, keep = _swatches()
    after = np.asarray(hsv_jitter(img, 20.0, 1.2, 1.1))
    assert np.all(np.any(after != np.asarray(img), axis=-1))


def test_hsv_jitter_shifts_hue_and_scales_saturation_and_value():
    blue = Image.new("RGB", (4, 4), (30, 60, 200))  # hue 229.4, s 0.85, v 200
    out = np.asarray(hsv_jitter(blue, 20.0, 0.5, 1.1, BANDS))[0, 0]
    h, s, v = colorsys.rgb_to_hsv(*(out / 255.0))
    h0, s0, _ = colorsys.rgb_to_hsv(30 / 255, 60 / 255, 200 / 255)
    assert h * 360 == pytest.approx(h0 * 360 + 20.0, abs=0.5)
    assert s == pytest.approx(s0 * 0.5, abs=0.01) and v * 255 == pytest.approx(220, abs=0.5)


def test_hsv_jitter_on_grey_and_alpha_images():
    grey = Image.fromarray(np.arange(0, 240, dtype=np.uint8).reshape(12, 20), mode="L")
    out = np.asarray(hsv_jitter(grey, 30.0, 2.0, 1.1))
    assert np.array_equal(out.reshape(-1), np.minimum(255, np.round(np.arange(240) * 1.1)))
    rgba = Image.new("RGBA", (5, 5), (30, 60, 200, 77))
    jittered = hsv_jitter(rgba, 10.0, 1.0, 1.0)
    assert jittered.mode == "RGBA" and np.all(np.asarray(jittered)[..., 3] == 77)
