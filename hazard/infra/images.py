"""Decoding untrusted image bytes: one function for the data job and for serving.

`decode_image` checks, in this order, without decoding more than it must:
1. the byte count (`too_many_bytes`), before the bytes are opened;
2. the header: format (`unsupported_format`), then the stored width x height against
   `min_side` (`too_small`), `max_side` and `max_pixels` (`too_large`; decompression bombs are
   refused here, before any pixel is decoded), then the aspect ratio of the size the image
   will have after downscaling (`aspect_ratio`: the models' processor refuses 200:1 or more,
   and downscaling rounds the short side down, so a 199:1 source can come out past it);
3. PIL's `verify()` (structure, e.g. PNG chunk CRCs), then the full decode (`undecodable` for
   anything that fails: not an image, truncated, corrupt).
`probe_image` is steps 1-3 up to `verify()`: the same rejections without decoding a pixel.
Size rules are judged on the stored size. EXIF orientation only swaps width and height, so they
give the same answer before and after it; `min_side` is about the source, not the downscaled
result. The decoded image is then turned upright (EXIF orientation, `ImageOps.exif_transpose`),
converted to RGB (alpha composited on white; 16-bit grey scaled to 8 bits, not clipped; CMYK
converted naively, ICC profiles ignored) and downscaled to the pixel budget (`fit_pixels`).

`bytes_to_store` keeps the original bytes when decoding changed nothing (`Decoded.unchanged`)
and otherwise re-encodes with `encode_image` (deterministic, no metadata).

Every rejection carries a short `reason` code (the data pipeline's quarantine reason) and a
human-readable message; serving maps `ImageTooLarge` to 413 and `InvalidImage` to 400.
"""

from __future__ import annotations

import io
import math
from collections.abc import Collection
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps

ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})
PLAIN_MODES = frozenset({"RGB", "L"})  # source modes whose pixels a plain convert("RGB") keeps
ENCODE_FORMATS = ("JPEG", "PNG", "WEBP")
_SWAPS_SIDES = frozenset({5, 6, 7, 8})  # EXIF orientations that exchange width and height


# Qwen2.5-VL's processor defaults: the pixel range a picture is resized into (one image token
# per 28x28 pixels), the serving pixel budget when a bundle names none.
MAX_ASPECT_RATIO = 200
"""Qwen2.5-VL's image processor (transformers' smart_resize) refuses images whose long side is
this many times the short side or more (`check_aspect_ratio`)."""
QWEN_MIN_PIXELS = 56 * 56
QWEN_MAX_PIXELS = 12_845_056


class ImageRejected(ValueError):
    """The bytes break a rule; `reason` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class InvalidImage(ImageRejected):
    """Not a decodable image of an allowed format, or a side below the minimum."""


class ImageTooLarge(ImageRejected):
    """Over the byte, side or pixel limit (decompression bombs included)."""


@dataclass(frozen=True)
class Decoded:
    """An upright RGB image (no metadata in `image.info`) and what decoding did to the source."""

    image: Image.Image
    format: str  # the source's format as PIL names it: JPEG, PNG, WEBP
    original_size: tuple[int, int]  # (width, height) as stored, before orientation/downscale
    original_mode: str  # PIL mode of the source: RGB, L, RGBA, P, CMYK, I;16, ...
    orientation: int  # the EXIF orientation tag (1 when absent or invalid)
    downscaled: bool  # shrunk to the pixel budget
    transparency: bool  # the source had an alpha channel or a transparent colour

    @property
    def oriented(self) -> bool:
        """EXIF orientation was applied (rotated and/or mirrored)."""
        return self.orientation in range(2, 9)

    @property
    def converted(self) -> bool:
        """Pixels differ from what a plain `convert("RGB")` of the source would give."""
        return self.original_mode not in PLAIN_MODES or self.transparency

    @property
    def unchanged(self) -> bool:
        """Decoding the source bytes the plain way gives exactly `image` (store them as is)."""
        return not (self.oriented or self.downscaled or self.converted)


def check_byte_count(n: int, max_bytes: int) -> None:
    """Raise `too_many_bytes` if an encoded image of `n` bytes is over the limit."""
    if n > max_bytes:
        raise ImageTooLarge("too_many_bytes", f"image is {n} bytes; the limit is {max_bytes}")


def check_aspect_ratio(size: tuple[int, int]) -> None:
    """Raise `aspect_ratio` (InvalidImage) for a (width, height) the models' processor refuses,
    so that such input is refused up front, not raised inside a model call."""
    w, h = size
    if max(w, h) >= MAX_ASPECT_RATIO * min(w, h):
        raise InvalidImage(
            "aspect_ratio", f"image is {w}x{h}; the aspect ratio must be under {MAX_ASPECT_RATIO}:1"
        )


def fit_pixels(size: tuple[int, int], pixel_budget: int | None) -> tuple[int, int]:
    """The size to downscale `size` to: unchanged within the budget (never upscaled), else

    ``(isqrt(budget * w // h), isqrt(budget * h // w))``, i.e. each side times
    sqrt(budget / (w * h)) rounded down, so the product never exceeds the budget and the aspect
    ratio is kept to within a pixel per side. Sides are at least 1 (a side clamped to 1 shrinks
    the other one so the budget still holds). E.g. 1280x720, budget 50_000 -> 298x167.
    """
    w, h = size
    if pixel_budget is None or w * h <= pixel_budget:
        return size
    new_w = max(1, math.isqrt(pixel_budget * w // h))
    new_h = max(1, math.isqrt(pixel_budget * h // w))
    if new_h == 1:  # extreme aspect ratios: the other side takes the whole budget at most
        new_w = min(new_w, pixel_budget)
    elif new_w == 1:
        new_h = min(new_h, pixel_budget)
    return new_w, new_h


@contextmanager
def _as_rejections():
    """PIL's errors on bad bytes as `ImageRejected` (rejections raised inside pass as they are)."""
    try:
        yield
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge("too_large", f"decompression bomb: {exc}") from exc
    except Image.UnidentifiedImageError as exc:  # its message names a memory address
        raise InvalidImage("undecodable", "cannot decode image: not an image format") from exc
    except Exception as exc:  # PIL raises many types for bad bytes
        raise InvalidImage(
            "undecodable", f"cannot decode image: {type(exc).__name__}: {exc}"
        ) from exc


def probe_image(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int | None = None,
    max_side: int | None = None,
    min_side: int = 1,
    allowed_formats: Collection[str] = ALLOWED_FORMATS,
    pixel_budget: int | None = None,
) -> None:
    """Steps 1-2 of `decode_image` and PIL's `verify()`, without decoding a pixel: raises the
    rejection `decode_image` would give for these reasons. A file that passes may still fail
    the full decode (`undecodable`, e.g. a JPEG truncated mid-scan)."""
    check_byte_count(len(data), max_bytes)
    guard = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    with _as_rejections(), Image.open(io.BytesIO(data)) as img:
        _check_header(img, allowed_formats, min_side, max_side, guard)
        check_aspect_ratio(fit_pixels(img.size, pixel_budget))
        img.verify()  # structural check (e.g. PNG chunk CRCs)


def decode_image(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int | None = None,
    max_side: int | None = None,
    min_side: int = 1,
    allowed_formats: Collection[str] = ALLOWED_FORMATS,
    pixel_budget: int | None = None,
) -> Decoded:
    """Decode untrusted bytes to an upright RGB image within the pixel budget (see the module).

    `max_pixels` is the decode guard (None: PIL's `Image.MAX_IMAGE_PIXELS`); `pixel_budget` the
    downscale target (None: full size). Reasons: too_many_bytes, unsupported_format, too_small,
    too_large, aspect_ratio, undecodable.
    """
    probe_image(
        data,
        max_bytes=max_bytes,
        max_pixels=max_pixels,
        max_side=max_side,
        min_side=min_side,
        allowed_formats=allowed_formats,
        pixel_budget=pixel_budget,
    )
    with _as_rejections():
        with Image.open(io.BytesIO(data)) as img:
            fmt, size, mode = img.format, img.size, img.mode
            target = fit_pixels(size, pixel_budget)
            if target != size and fmt == "JPEG":
                img.draft("RGB", target)  # decode at 1/2, 1/4 or 1/8 scale, still >= target
            img.load()
            orientation = _orientation(img)
            if orientation in range(2, 9):
                ImageOps.exif_transpose(img, in_place=True)
            transparency = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
                "transparency" in img.info
            )
            rgb = _to_rgb(img)
        if target != size:
            out = target[::-1] if orientation in _SWAPS_SIDES else target
            if rgb.size != out:
                rgb = rgb.resize(out, Image.Resampling.LANCZOS, reducing_gap=3.0)
    rgb.info = {}  # the caller's image carries no EXIF, ICC profile or comments
    return Decoded(
        image=rgb,
        format=fmt,
        original_size=size,
        original_mode=mode,
        orientation=orientation,
        downscaled=target != size,
        transparency=transparency,
    )


def encode_image(img: Image.Image, fmt: str, quality: int = 90) -> bytes:
    """`img` (RGB or L) encoded deterministically with fixed settings and no metadata.

    JPEG: baseline, 4:2:0, `quality`, no Huffman optimisation; PNG: zlib level 6; WEBP: lossy,
    `quality`, method 4. No EXIF, ICC profile, comment or text chunks are written.
    """
    fmt = fmt.upper()
    if fmt not in ENCODE_FORMATS:
        raise ValueError(f"cannot encode {fmt!r}; use one of {list(ENCODE_FORMATS)}")
    if img.mode not in PLAIN_MODES:
        img = img.convert("RGB")
    if img.info:  # savers copy some of it (PNG: icc_profile; JPEG: comment)
        img = img.copy()
        img.info = {}
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=quality, subsampling="4:2:0", optimize=False)
    elif fmt == "PNG":
        img.save(buf, "PNG", compress_level=3, optimize=False)  # 6 costs ~1 s per noisy 1 MP image
    else:
        img.save(buf, "WEBP", quality=quality, method=4, lossless=False)
    return buf.getvalue()


def storage_format(encode_format: str, source_format: str) -> str:
    """The format to re-encode in: `encode_format`, where 'auto' means JPEG for JPEG sources
    and PNG otherwise."""
    if encode_format != "auto":
        return encode_format
    return "JPEG" if source_format == "JPEG" else "PNG"


def bytes_to_store(
    data: bytes, decoded: Decoded, encode_format: str = "auto", jpeg_quality: int = 90
) -> bytes:
    """The bytes to store for source `data` that decoded to `decoded`.

    The original bytes, untouched, when `decoded.unchanged` (allowed format, no EXIF rotation,
    no downscale, RGB or L source without transparency); else `decoded.image` re-encoded as
    `encode_format` ('auto': JPEG for JPEG sources, PNG otherwise) at `jpeg_quality`.
    """
    if decoded.unchanged:
        return data
    fmt = storage_format(encode_format, decoded.format)
    return encode_image(decoded.image, fmt, jpeg_quality)


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


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag, 1 when absent, invalid or the EXIF block is unreadable."""
    try:
        value = int(img.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # a broken EXIF block must not reject an otherwise good photo
        return 1
    return value if value in range(1, 9) else 1


def _to_rgb(img: Image.Image) -> Image.Image:
    """`img` as RGB: 16-bit grey scaled to 8 bits, alpha/transparency composited on white."""
    if img.mode == "I" or img.mode.startswith("I;16"):
        img = _grey16_to_8(img)
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _grey16_to_8(img: Image.Image) -> Image.Image:
    """16-bit grey (I;16*, or I holding 0..65535) as L (value >> 8, as PIL reads 16-bit RGB), or
    LA when a transparent grey value is set. PIL's own convert would clip at 255 instead."""
    arr = np.asarray(img)
    grey = Image.fromarray((np.clip(arr, 0, 65535).astype(np.uint16) >> 8).astype(np.uint8))
    trns = img.info.get("transparency")
    if isinstance(trns, int):
        alpha = Image.fromarray(np.where(arr == trns, 0, 255).astype(np.uint8))
        return Image.merge("LA", (grey, alpha))
    return grey
