"""Decoding untrusted image bytes with limits."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from hazard.images import ImageRejected, ImageTooLarge, InvalidImage, decode_limited


def _png(w: int = 32, h: int = 24, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 20, 30)).save(buf, format=fmt)
    return buf.getvalue()


def test_decodes_allowed_formats_to_rgb():
    for fmt in ("PNG", "JPEG", "WEBP"):
        img = decode_limited(_png(fmt=fmt), 10**6, 10**6)
        assert img.mode == "RGB" and img.size == (32, 24)


@pytest.mark.parametrize(
    "data, error, match",
    [
        (b"not an image", InvalidImage, "cannot decode"),
        (b"", InvalidImage, "cannot decode"),
        (_png()[:60], InvalidImage, "cannot decode"),
        (_png(fmt="GIF"), InvalidImage, "unsupported image format GIF"),
        (_png(), ImageTooLarge, "bytes"),
    ],
)
def test_rejects_bad_input_with_a_reason(data, error, match):
    max_bytes = 50 if error is ImageTooLarge else 10**6
    with pytest.raises(error, match=match):
        decode_limited(data, max_bytes, 10**6)


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(ImageTooLarge, match="pixels"):
        decode_limited(_png(100, 100), 10**6, 100 * 99)


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"min_side": 30}, "too_small"),
        ({"max_side": 31}, "too_large"),
        ({"allowed_formats": {"JPEG"}}, "unsupported_format"),
    ],
)
def test_validation_rules_give_quarantine_reasons(kwargs, reason):
    with pytest.raises(ImageRejected) as exc:
        decode_limited(_png(32, 24), 10**6, **kwargs)
    assert exc.value.reason == reason
