"""Colour of the augmentation ops: protected-hue HSV jitter, pure numpy.

Hue shift, saturation and value factors in HSV, vectorised in float32 over cache-sized chunks
of pixels; pixels whose original colour lies in a protected hue band (with the band's
saturation and value floors) are copied back bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image
from pydantic import Field, field_validator

from hazard.augment.geometry import normalize_mode
from hazard.core.strict import StrictModel


class HueBand(StrictModel):
    """Colours the hsv jitter leaves bit-identical: a hue interval with saturation and
    value floors (so greys and near-blacks are never a warning colour)."""

    name: str = Field(description="What the band protects, for readers (e.g. 'red').")
    hue: tuple[float, float] = Field(
        description="[from, to] in degrees on the 0-360 hue circle, inclusive; wraps past "
        "360 when from > to (e.g. [335, 15] for red)."
    )
    min_saturation: float = Field(
        0.55,
        ge=0.0,
        le=1.0,
        description="HSV saturation (0-1) a pixel needs to be in the band (the defaults are "
        "hazard.demo.synthetic's hazard colour floors).",
    )
    min_value: float = Field(
        0.45, ge=0.0, le=1.0, description="HSV value (0-1) a pixel needs to be in the band."
    )

    @field_validator("hue")
    @classmethod
    def _degrees(cls, hue: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= h <= 360.0 for h in hue):
            raise ValueError(f"hue bounds must be degrees in [0, 360], got {list(hue)}")
        return hue


def rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hue in turns [0, 1], saturation [0, 1], value [0, 255]) float32 planes of (N, 3) uint8."""
    planes = np.array(rgb.T, dtype=np.float32, order="C")
    r, g, b = planes
    v = planes.max(axis=0)
    c = v - planes.min(axis=0)
    s = np.divide(c, v, out=np.zeros_like(v), where=v > 0)
    inv = np.divide(np.float32(1.0 / 6.0), c, out=np.zeros_like(c), where=c > 0)
    hue = r - g  # blue is the largest: 4/6 + (r - g) / 6c
    hue *= inv
    hue += np.float32(4.0 / 6.0)
    tmp = b - r  # green: 2/6 + (b - r) / 6c
    tmp *= inv
    tmp += np.float32(2.0 / 6.0)
    np.copyto(hue, tmp, where=v == g)
    np.subtract(g, b, out=tmp)  # red: (g - b) / 6c, negative below 0 degrees
    tmp *= inv
    np.copyto(hue, tmp, where=v == r)
    hue -= np.floor(hue)
    return hue, s, v


def protected_mask(
    hue: np.ndarray, sat: np.ndarray, val: np.ndarray, bands: Sequence[HueBand]
) -> np.ndarray:
    """Pixels (planes from rgb_to_hsv) whose colour lies in any of `bands`."""
    deg = hue * np.float32(360.0)
    mask = np.zeros(hue.shape, dtype=bool)
    by_floor: dict[tuple[float, float], np.ndarray] = {}
    for band in bands:
        lo, hi = band.hue
        inside = (deg >= lo) & (deg <= hi) if lo <= hi else (deg >= lo) | (deg <= hi)
        key = (band.min_saturation, band.min_value)
        by_floor[key] = by_floor[key] | inside if key in by_floor else inside
    for (min_s, min_v), inside in by_floor.items():
        mask |= inside & (sat >= np.float32(min_s)) & (val >= np.float32(min_v * 255.0))
    return mask


def hsv_to_rgb(hue: np.ndarray, sat: np.ndarray, val: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 from float32 planes (hue in turns, any real; sat [0, 1]; value [0, 255]).

    Channel n is value - chroma * clip(2 - d_n, 0, 1), d_n the circular distance (in sixths of
    a turn) from the hue to 3 (R), 5 (G) or 1 (B).
    """
    sector = hue * np.float32(6.0)
    sector -= np.float32(6.0) * np.floor(sector / np.float32(6.0))
    chroma = val * sat
    out = np.empty((hue.size, 3), dtype=np.uint8)
    d = np.empty_like(sector)
    t = np.empty_like(sector)
    for channel, centre in enumerate((3.0, 5.0, 1.0)):
        np.subtract(sector, np.float32(centre), out=d)
        np.abs(d, out=d)
        np.subtract(np.float32(6.0), d, out=t)
        np.minimum(d, t, out=d)
        np.subtract(np.float32(2.0), d, out=t)
        np.clip(t, 0.0, 1.0, out=t)
        t *= chroma
        np.subtract(val, t, out=t)
        np.rint(t, out=t)
        out[:, channel] = t
    return out


_CHUNK = 1 << 16  # pixels per hsv_jitter chunk


def _jitter_pixels(
    flat: np.ndarray, hue_deg: float, sat: float, val: float, bands: Sequence
) -> np.ndarray:
    hue, s, v = rgb_to_hsv(flat)
    keep = protected_mask(hue, s, v, bands) if bands else None
    hue += np.float32(hue_deg / 360.0)
    s *= np.float32(sat)
    np.minimum(s, 1.0, out=s)
    v *= np.float32(val)
    np.minimum(v, 255.0, out=v)
    out = hsv_to_rgb(hue, s, v)
    if keep is not None:  # flat per-byte copy: faster than broadcasting the mask over channels
        np.copyto(out.reshape(-1), flat.reshape(-1), where=np.repeat(keep, 3))
    return out


def hsv_jitter(
    img: Image.Image,
    hue_deg: float,
    sat: float,
    val: float,
    bands: Sequence[HueBand] = (),
) -> Image.Image:
    """Shift hue by `hue_deg`, scale saturation by `sat` and value by `val` (clipped), leaving
    the pixels in `bands` bit-identical. L images get the value factor only; alpha is kept."""
    img = normalize_mode(img)
    if img.mode == "L":
        return img.point([min(255, round(i * val)) for i in range(256)])
    alpha = img.getchannel("A") if img.mode == "RGBA" else None
    rgb = np.asarray(img.convert("RGB") if alpha is not None else img)
    flat = rgb.reshape(-1, 3)
    out = np.empty_like(flat)
    for start in range(0, len(flat), _CHUNK):  # cache-sized chunks: temporaries are reused
        part = flat[start : start + _CHUNK]
        out[start : start + _CHUNK] = _jitter_pixels(part, hue_deg, sat, val, bands)
    result = Image.fromarray(out.reshape(rgb.shape))
    if alpha is not None:
        result.putalpha(alpha)
    return result
