"""Decoding untrusted image bytes with size limits (serving and validation share it)."""

from __future__ import annotations

import io
import warnings

from PIL import Image

ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})


class InvalidImage(ValueError):
    """The bytes are not a decodable image of an allowed format."""


class ImageTooLarge(ValueError):
    """The image exceeds the byte or pixel limit."""


def decode_limited(data: bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    """Decode to RGB, checking bytes before reading and pixels before decoding."""
    if len(data) > max_bytes:
        raise ImageTooLarge(f"image is {len(data)} bytes; the limit is {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in ALLOWED_FORMATS:
                raise InvalidImage(
                    f"unsupported image format {img.format}; allowed: {sorted(ALLOWED_FORMATS)}"
                )
            w, h = img.size
            if w * h > max_pixels:
                raise ImageTooLarge(f"image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
            img.load()
            return img.convert("RGB")
    except (ImageTooLarge, InvalidImage):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(str(exc)) from exc
    except Exception as exc:  # PIL raises many types for bad bytes
        raise InvalidImage(f"cannot decode image: {exc}") from exc
