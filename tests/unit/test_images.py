"""Decoding untrusted image bytes: guards, orientation, downscaling, modes, bytes to store."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from hazard.infra.images import (
    ImageRejected,
    ImageTooLarge,
    InvalidImage,
    bytes_to_store,
    check_aspect_ratio,
    decode_image,
    encode_image,
    fit_pixels,
    probe_image,
)
from tests.helpers.images import (
    BLUE,
    RED,
    SAMPLES,
    cmyk_jpeg,
    corner_marked,
    encode,
    exif_jpeg,
    grey16_png,
    noise,
    palette_png_transparent,
    png_with_header_size,
    rgba_png,
    solid,
    truncated,
)

DEFAULTS = dict(max_bytes=20 * 2**20, max_pixels=64_000_000, max_side=16384, min_side=32)


def decode(data: bytes, **kwargs):
    return decode_image(data, **{**DEFAULTS, **kwargs})


def close(pixel, expected, tol) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected, strict=True))


# --- guards and reasons ----------------------------------------------------------------------


def test_decodes_allowed_formats_to_rgb():
    for fmt in ("PNG", "JPEG", "WEBP"):
        out = decode(solid((40, 32), fmt=fmt))
        assert out.image.mode == "RGB" and out.image.size == (40, 32) and out.format == fmt


@pytest.mark.parametrize("name", [n for n, (_, reason) in SAMPLES.items() if reason])
def test_bad_samples_are_rejected_with_their_reason(name):
    build, reason = SAMPLES[name]
    with pytest.raises(ImageRejected) as exc:
        decode(build())
    assert exc.value.reason == reason
    expected_class = ImageTooLarge if reason in ("too_large", "too_many_bytes") else InvalidImage
    assert isinstance(exc.value, expected_class)


@pytest.mark.parametrize("name", [n for n, (_, reason) in SAMPLES.items() if reason is None])
def test_good_samples_decode(name):
    assert decode(SAMPLES[name][0]()).image.mode == "RGB"


def test_aspect_ratio_limit_is_the_models_200_to_1_either_way_round():
    for size in [(199, 1), (1, 199), (3980, 20), (64, 64)]:
        assert check_aspect_ratio(size) is None
    for size in [(200, 1), (1, 200), (4000, 20), (20, 4001)]:
        with pytest.raises(InvalidImage) as exc:
            check_aspect_ratio(size)
        assert exc.value.reason == "aspect_ratio" and f"{size[0]}x{size[1]}" in str(exc.value)


def test_aspect_ratio_is_judged_after_downscaling():
    # 6360x32 is 198.75:1; within a 50,000-pixel budget it becomes 3152x15 = 210:1 (the short
    # side rounds down), which the models refuse: probe and decode refuse it up front
    data = solid((6360, 32), fmt="PNG")
    assert fit_pixels((6360, 32), 50_000) == (3152, 15)
    assert decode(data).image.size == (6360, 32)
    assert probe_image(data, **DEFAULTS) is None
    for check in (decode, lambda d, **kw: probe_image(d, **DEFAULTS, **kw)):
        with pytest.raises(InvalidImage) as exc:
            check(data, pixel_budget=50_000)
        assert exc.value.reason == "aspect_ratio" and "3152x15" in str(exc.value)
    # the same source under a budget it already fits is kept at its size
    assert decode(data, pixel_budget=6360 * 32).image.size == (6360, 32)


FULL_DECODE_ONLY = {"truncated.jpg"}  # header and structure pass; pixel data ends early


@pytest.mark.parametrize("name", list(SAMPLES))
def test_probe_gives_the_decode_rejection_without_decoding(name):
    build, reason = SAMPLES[name]
    data = build()
    if reason is None or name in FULL_DECODE_ONLY:
        assert probe_image(data, **DEFAULTS) is None
        return
    with pytest.raises(ImageRejected) as exc:
        probe_image(data, **DEFAULTS)
    assert exc.value.reason == reason
    assert type(exc.value) is type(pytest.raises(ImageRejected, decode, data).value)


def test_probe_applies_the_validation_rules_and_byte_limit():
    data = solid((40, 24), fmt="PNG")
    for kwargs, reason in [
        ({"min_side": 25}, "too_small"),
        ({"max_side": 39}, "too_large"),
        ({"max_pixels": 40 * 24 - 1}, "too_large"),
        ({"allowed_formats": {"JPEG"}}, "unsupported_format"),
        ({"max_bytes": len(data) - 1}, "too_many_bytes"),
    ]:
        with pytest.raises(ImageRejected) as exc:
            probe_image(data, **{**DEFAULTS, "min_side": 1, **kwargs})
        assert exc.value.reason == reason, kwargs
    assert probe_image(data, **{**DEFAULTS, "min_side": 24, "max_pixels": 40 * 24}) is None


def test_too_many_bytes_is_checked_before_opening():
    data = b"x" * 101  # not an image at all: the byte rule must answer first
    with pytest.raises(ImageTooLarge) as exc:
        decode(data, max_bytes=100)
    assert exc.value.reason == "too_many_bytes" and "101 bytes" in str(exc.value)


def test_truncated_png_is_undecodable():
    with pytest.raises(InvalidImage) as exc:
        decode(truncated(noise((64, 64)), 0.6))
    assert exc.value.reason == "undecodable"


def test_undecodable_detail_is_deterministic():
    details = set()
    for _ in range(2):
        with pytest.raises(InvalidImage) as exc:
            decode(b"not an image")
        details.add(str(exc.value))
    assert len(details) == 1 and "0x" not in details.pop()


def test_pixel_guard_is_checked_before_decoding():
    # The header claims 2000x1000, but the pixel data is that of an 8x8 image: decoding it
    # fails. Refused as too_large (not undecodable), the guard ran before any decode.
    bomb = png_with_header_size(2000, 1000)
    with pytest.raises(ImageTooLarge) as exc:
        decode(bomb, max_pixels=2000 * 1000 - 1)
    assert exc.value.reason == "too_large" and "2000000 pixels" in str(exc.value)
    with pytest.raises(InvalidImage) as exc:  # within the guard, the same bytes are undecodable
        decode(bomb, max_pixels=2000 * 1000)
    assert exc.value.reason == "undecodable"


def test_pil_bomb_limit_applies_without_a_pixel_guard():
    with pytest.raises(ImageTooLarge) as exc:
        decode(png_with_header_size(20_000, 20_000), max_pixels=None)
    assert exc.value.reason == "too_large"


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"min_side": 25}, "too_small"),
        ({"max_side": 39}, "too_large"),
        ({"max_pixels": 40 * 24 - 1}, "too_large"),
        ({"allowed_formats": {"JPEG"}}, "unsupported_format"),
    ],
)
def test_validation_rules_give_quarantine_reasons(kwargs, reason):
    data = solid((40, 24), fmt="PNG")
    with pytest.raises(ImageRejected) as exc:
        decode(data, **{"min_side": 1, **kwargs})
    assert exc.value.reason == reason


def test_side_rules_hold_either_way_round_for_rotated_photos():
    # stored 64x32, shown 32x64: the sides are the same set, so the rules give the same answer
    with pytest.raises(ImageTooLarge):
        decode(exif_jpeg(6), max_side=63)
    with pytest.raises(InvalidImage):
        decode(exif_jpeg(6), min_side=33)
    assert decode(exif_jpeg(6), max_side=64, min_side=32).image.size == (32, 64)


# --- EXIF orientation ------------------------------------------------------------------------


def test_orientation_6_turns_the_photo_upright():
    # Orientation 6: the viewer rotates 90 degrees clockwise; stored top-left -> top-right.
    out = decode(exif_jpeg(6, (64, 32)))
    assert out.image.size == (32, 64) and out.oriented and out.orientation == 6
    assert close(out.image.getpixel((32 - 4, 4)), RED, 12)
    assert close(out.image.getpixel((4, 4)), BLUE, 12)
    assert close(out.image.getpixel((32 - 4, 64 - 4)), BLUE, 12)


def test_orientation_8_turns_the_photo_upright():
    # Orientation 8: rotate 90 degrees counter-clockwise; stored top-left -> bottom-left.
    out = decode(exif_jpeg(8, (64, 32)))
    assert out.image.size == (32, 64)
    assert close(out.image.getpixel((4, 64 - 4)), RED, 12)
    assert close(out.image.getpixel((4, 4)), BLUE, 12)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pil_exif_transpose(orientation):
    data = exif_jpeg(orientation, (64, 32))
    with Image.open(io.BytesIO(data)) as img:
        expected = ImageOps.exif_transpose(img).convert("RGB")
    out = decode(data)
    assert out.image.size == expected.size
    assert np.array_equal(np.asarray(out.image), np.asarray(expected))
    assert out.oriented == (orientation != 1)


def test_rotated_source_is_stored_upright_without_exif():
    data = exif_jpeg(6, (64, 32))
    stored = bytes_to_store(data, decode(data))
    with Image.open(io.BytesIO(stored)) as img:
        assert img.format == "JPEG" and img.size == (32, 64)
        assert not img.getexif() and "exif" not in img.info
        assert close(img.convert("RGB").getpixel((32 - 4, 4)), RED, 16)


# --- downscaling -----------------------------------------------------------------------------


def test_fit_pixels_by_hand():
    # 1280x720, budget 50_000: 50_000*1280//720 = 88_888, isqrt = 298 (298^2 = 88_804);
    # 50_000*720//1280 = 28_125, isqrt = 167 (167^2 = 27_889); 298*167 = 49_766 <= 50_000.
    assert fit_pixels((1280, 720), 50_000) == (298, 167)
    assert fit_pixels((720, 1280), 50_000) == (167, 298)
    assert fit_pixels((1280, 720), 230_400) == (640, 360)  # exactly a quarter: half each side
    assert fit_pixels((1280, 720), None) == (1280, 720)
    assert fit_pixels((1280, 720), 1280 * 720) == (1280, 720)  # at the budget: untouched
    assert fit_pixels((100, 50), 10**6) == (100, 50)  # never upscaled
    assert fit_pixels((10_000, 2), 100) == (100, 1)  # a side clamps at 1, the budget holds


def test_fit_pixels_stays_within_budget_and_keeps_aspect():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        w, h = (int(v) for v in rng.integers(1, 20_000, 2))
        budget = int(rng.integers(1, 5_000_000))
        nw, nh = fit_pixels((w, h), budget)
        assert 1 <= nw <= w and 1 <= nh <= h
        if w * h <= budget:
            assert (nw, nh) == (w, h)
            continue
        assert nw * nh <= budget
        scale = (budget / (w * h)) ** 0.5
        if w * scale >= 1 and h * scale >= 1:  # no clamping: each side is the scaled side
            assert abs(nw - w * scale) < 1.0001 and abs(nh - h * scale) < 1.0001


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])  # JPEG goes through draft mode
def test_downscales_to_the_budget(fmt):
    data = noise((1280, 720), fmt)
    out = decode(data, pixel_budget=50_000)
    assert out.image.size == (298, 167) and out.downscaled and out.original_size == (1280, 720)


def test_jpeg_draft_downscale_looks_like_a_full_decode_resize():
    x = np.linspace(0, 255, 1280)
    y = np.linspace(0, 255, 720)[:, None]
    arr = np.stack([np.broadcast_to(x, (720, 1280)), np.broadcast_to(y, (720, 1280)),
                    np.full((720, 1280), 90.0)], axis=-1).astype(np.uint8)  # fmt: skip
    data = encode(Image.fromarray(arr), "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as img:  # second path: no draft, plain resize
        ref = img.convert("RGB").resize((298, 167), Image.Resampling.LANCZOS)
    with Image.open(io.BytesIO(data)) as img:  # the draft path: decoded at 1/4 (320x180)
        img.draft("RGB", (298, 167))
        assert img.size == (320, 180)
        drafted = img.convert("RGB").resize((298, 167), Image.Resampling.LANCZOS)
    out = decode(data, pixel_budget=50_000)
    assert np.array_equal(np.asarray(out.image), np.asarray(drafted))  # draft mode was used
    diff = np.abs(np.asarray(out.image, float) - np.asarray(ref, float))
    assert diff.mean() < 2.0 and diff.max() < 20


def test_rotated_and_downscaled_together():
    big = corner_marked((1280, 720))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = decode(encode(big, "JPEG", quality=95, exif=exif.tobytes()), pixel_budget=50_000)
    assert out.image.size == (167, 298)
    assert close(out.image.getpixel((167 - 2, 2)), RED, 16)  # stored top-left -> top-right


def test_no_upscaling_and_original_kept():
    data = solid((100, 50), fmt="JPEG")
    out = decode(data, min_side=1, pixel_budget=10**6)
    assert out.image.size == (100, 50) and not out.downscaled and out.unchanged
    assert bytes_to_store(data, out) == data


# --- modes -----------------------------------------------------------------------------------


def test_cmyk_jpeg_becomes_rgb():
    out = decode(cmyk_jpeg(cmyk=(255, 0, 0, 0)))  # pure cyan
    assert out.original_mode == "CMYK" and out.converted and not out.unchanged
    assert close(out.image.getpixel((10, 10)), (0, 255, 255), 4)
    stored = bytes_to_store(cmyk_jpeg(), out)
    with Image.open(io.BytesIO(stored)) as img:
        assert img.format == "JPEG" and img.mode == "RGB"


def test_16_bit_grey_png_is_scaled_not_clipped():
    values = np.array([[0, 255, 256, 40_000, 65_535]], dtype=np.uint16)
    data = grey16_png(values)
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == "I;16"
    out = decode(data, min_side=1)
    # v >> 8 by hand: 0, 0, 1, 156 (40000 / 256 = 156.25), 255; PIL's convert would clip to 255
    assert [out.image.getpixel((i, 0)) for i in range(5)] == [
        (0, 0, 0),
        (0, 0, 0),
        (1, 1, 1),
        (156, 156, 156),
        (255, 255, 255),
    ]
    assert out.original_mode == "I;16" and not out.unchanged


def test_palette_png_with_transparency_goes_on_white():
    out = decode(palette_png_transparent((64, 48)))
    assert out.original_mode == "P" and out.transparency
    assert out.image.getpixel((5, 5)) == (255, 255, 255)  # transparent red -> white
    assert out.image.getpixel((60, 5)) == BLUE


def test_rgba_is_composited_on_white_not_black():
    out = decode(rgba_png((64, 48), left=(200, 0, 0, 128), right=(0, 0, 0, 0)))
    # by hand: 200*128/255 + 255*127/255 = 227.4; 0*128/255 + 255*127/255 = 127
    assert close(out.image.getpixel((5, 5)), (227, 127, 127), 1)
    assert out.image.getpixel((60, 5)) == (255, 255, 255)
    stored = bytes_to_store(b"", out)
    with Image.open(io.BytesIO(stored)) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        assert img.getpixel((60, 5)) == (255, 255, 255)


def test_grey_png_with_transparent_value_goes_on_white():
    img = Image.new("L", (40, 40), 0)
    img.paste(200, (20, 0, 40, 40))
    out = decode(encode(img, "PNG", transparency=0))
    assert out.transparency and not out.unchanged
    assert out.image.getpixel((5, 5)) == (255, 255, 255)
    assert out.image.getpixel((30, 5)) == (200, 200, 200)


# --- bytes to store --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        solid(fmt="JPEG"),
        solid(mode="L", color=90, fmt="PNG"),
        solid(fmt="WEBP"),
        solid(fmt="PNG"),
        exif_jpeg(1),  # an explicit "normal" orientation changes nothing
    ],
)
def test_original_bytes_kept_when_nothing_changes(data):
    out = decode(data)
    assert out.unchanged
    assert bytes_to_store(data, out, "PNG") is data  # even when another format is configured


@pytest.mark.parametrize(
    "data, encode_format, expected",
    [
        (exif_jpeg(6), "auto", "JPEG"),
        (rgba_png(), "auto", "PNG"),
        (palette_png_transparent(), "auto", "PNG"),
        (cmyk_jpeg(), "auto", "JPEG"),
        (exif_jpeg(3), "PNG", "PNG"),
        (rgba_png(), "WEBP", "WEBP"),
        (rgba_png(), "JPEG", "JPEG"),
    ],
)
def test_changed_images_are_re_encoded(data, encode_format, expected):
    stored = bytes_to_store(data, decode(data), encode_format, 85)
    assert stored != data
    with Image.open(io.BytesIO(stored)) as img:
        assert img.format == expected and img.mode == "RGB"


def test_re_encoding_is_deterministic():
    for data in (exif_jpeg(6), rgba_png(), cmyk_jpeg(), noise((300, 200), "JPEG")):
        first = bytes_to_store(data, decode(data, pixel_budget=20_000), "auto", 90)
        second = bytes_to_store(data, decode(data, pixel_budget=20_000), "auto", 90)
        assert first == second and first != data
    img = Image.open(io.BytesIO(noise((50, 40)))).convert("RGB")
    for fmt in ("JPEG", "PNG", "WEBP"):
        assert encode_image(img, fmt, 80) == encode_image(img, fmt, 80)


def test_encode_writes_no_metadata():
    img = Image.open(io.BytesIO(noise((50, 40)))).convert("RGB")
    img.info["icc_profile"] = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img.info["comment"] = b"secret"
    exif = Image.Exif()
    exif[0x0112] = 6
    img.info["exif"] = exif.tobytes()
    for fmt in ("JPEG", "PNG", "WEBP"):
        with Image.open(io.BytesIO(encode_image(img, fmt, 90))) as back:
            assert not {"icc_profile", "comment", "exif"} & set(back.info), fmt
            assert not back.getexif()
    assert "icc_profile" in img.info  # the caller's image is left alone


def test_decoded_image_carries_no_metadata():
    data = exif_jpeg(1)
    assert decode(data).image.info == {}


def test_encode_refuses_unknown_formats():
    with pytest.raises(ValueError, match="GIF"):
        encode_image(Image.new("RGB", (4, 4)), "GIF")
