"""Checking and decoding untrusted image bytes: one set of rules for validation and serving.

Every rejection carries a short `reason` code (the data pipeline's quarantine reason) and a
human-readable message; serving maps `ImageTooLarge` to 413 and `InvalidImage` to 400.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Collection

from PIL import Image

ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})


class ImageRejected(ValueError):
    """The bytes break a rule; `reason` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class InvalidImage(ImageRejected):
    """Not a decodable image of an allowed format, or a side below the minimum."""


class ImageTooLarge(ImageRejected):
    """Over the byte, side or pixel limit (decompression bombs included)."""


def decode_limited(
    data: bytes,
    max_bytes: int,
    max_pixels: int | None = None,
    *,
    allowed_formats: Collection[str] = ALLOWED_FORMATS,
    min_side: int = 1,
    max_side: int | None = None,
) -> Image.Image:
    """Decode to RGB, checking bytes before opening and format/size before decoding.

    Reasons: too_many_bytes, undecodable, unsupported_format, too_small, too_large.
    """
    if len(data) > max_bytes:
        raise ImageTooLarge(
            "too_many_bytes", f"image is {len(data)} bytes; the limit is {max_bytes}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                _check_header(img, allowed_formats, min_side, max_side, max_pixels)
                img.verify()  # structural check (e.g. PNG chunk CRCs) before the full decode
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                return img.convert("RGB")
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge("too_large", f"decompression bomb: {exc}") from exc
    except Exception as exc:  # PIL raises many types for bad bytes
        raise InvalidImage(
            "undecodable", f"cannot decode image: {type(exc).__name__}: {exc}"
        ) from exc


def _check_header(img, allowed_formats, min_side, max_side, max_pixels) -> None:
    if img.format not in allowed_formats:
        raise InvalidImage(
            "unsupported_format",
            f"unsupported image format {img.format}; allowed: {sorted(allowed_formats)}",
        )
    w, h = img.size
    if min(w, h) < min_side:
        raise InvalidImage(
            "too_small", f"image is {w}x{h}; the smallest side allowed is {min_side}"
        )
    if max_side is not None and max(w, h) > max_side:
        raise ImageTooLarge(
            "too_large", f"image is {w}x{h}; the largest side allowed is {max_side}"
        )
    if max_pixels is not None and w * h > max_pixels:
        raise ImageTooLarge(
            "too_large", f"image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}"
        )
