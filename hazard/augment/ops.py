"""The built-in augmentation ops, one object each, registered on import.

Plan order and provenance strings (`aug_ops`):
  scale:0.93[:<pad>]      zoom about the centre (< 1 uncovers a border, filled by <pad>)
  rotate:+6.2[:<pad>]     degrees, counter-clockwise positive (uncovered corners: <pad>)
  crop:0.91               area fraction of the window (aspect kept) resized back to full size
  hflip, vflip            mirror left-right / top-bottom, with probability `flip_prob`
  hsv:h+8.0,s0.92,v1.05   hue shift (degrees), saturation and value factors
<pad> is the padding mode (edge, reflect, constant); for multi-image rows whose images pad
differently, one mode per image joined by "/". None of them changes the label.

Each op draws from fixed uniforms of the copy (registration order: scale 1, rotate 1, crop 3,
hflip 1, vflip 1, hsv 3), so enabling or disabling one op leaves the others' parameters alone.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from pydantic import Field, field_validator

from hazard.augment.colour import HueBand, hsv_jitter
from hazard.augment.geometry import Padding, about_centre, warp
from hazard.augment.registry import AugmentOp, register
from hazard.core.strict import StrictModel


def ordered_range(bounds: tuple[float, float], floor: float, ceil: float) -> tuple[float, float]:
    """`bounds` when floor <= lo <= hi <= ceil and lo > 0 (ValueError otherwise)."""
    lo, hi = bounds
    if not (floor <= lo <= hi <= ceil and lo > 0.0):
        raise ValueError(f"need {floor} <= lo <= hi <= {ceil} and lo > 0, got [{lo}, {hi}]")
    return bounds


def _uniform(u: float, lo: float, hi: float, digits: int) -> float:
    return round(lo + u * (hi - lo), digits)


# --- parameter models (flat keys of `augment`) -------------------------------------------------


class ScaleParams(StrictModel):
    """scale: the zoom range."""

    scale_range: tuple[float, float] = Field(
        (0.9, 1.1),
        description="Zoom factor about the centre, drawn uniformly in [lo, hi] within [0.5, "
        "1.5]; below 1 the uncovered border is padded, above 1 the edges are cut.",
    )

    @field_validator("scale_range")
    @classmethod
    def _range(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        return ordered_range(bounds, 0.5, 1.5)


class RotateParams(StrictModel):
    """rotate: the largest angle."""

    rotate_max_deg: float = Field(
        10.0,
        ge=0.0,
        le=30.0,
        description="Rotation angle (counter-clockwise positive) drawn uniformly in ±this.",
    )


class CropParams(StrictModel):
    """crop: the smallest area kept."""

    crop_min_area: float = Field(
        0.85,
        ge=0.5,
        le=1.0,
        description="Crop keeps an area fraction drawn in [this, 1] (aspect kept, random "
        "position), resized back to the full size. After a scale-up s > 1 the crop's lower "
        "bound is min(1, this * s^2): together they keep at least min(this, 1 / s^2).",
    )


class FlipParams(StrictModel):
    """hflip and vflip: how often."""

    flip_prob: float = Field(0.5, ge=0.0, le=1.0, description="Probability of hflip / vflip.")


class HsvParams(StrictModel):
    """hsv: the jitter ranges and the colours it never touches."""

    hue_shift_deg: float = Field(
        10.0, ge=0.0, le=90.0, description="hsv: hue shift drawn uniformly in ±this (degrees)."
    )
    saturation_range: tuple[float, float] = Field(
        (0.8, 1.2), description="hsv: saturation factor drawn uniformly in [lo, hi] (0 < lo)."
    )
    value_range: tuple[float, float] = Field(
        (0.85, 1.15), description="hsv: value (brightness) factor drawn uniformly in [lo, hi]."
    )
    protected_hues: list[HueBand] = Field(
        default_factory=lambda: [
            HueBand(name="red", hue=(335.0, 15.0)),
            HueBand(name="orange", hue=(15.0, 45.0)),
            HueBand(name="yellow", hue=(45.0, 70.0)),
        ],
        description="hsv: colour bands left bit-identical (signs, tape, charging batteries).",
    )

    @field_validator("saturation_range")
    @classmethod
    def _saturation(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        return ordered_range(bounds, 0.0, 3.0)

    @field_validator("value_range")
    @classmethod
    def _value(cls, bounds: tuple[float, float]) -> tuple[float, float]:
        return ordered_range(bounds, 0.0, 2.0)


# --- ops ---------------------------------------------------------------------------------------


class Scale(AugmentOp):
    """Zoom about the centre by a factor drawn in `scale_range`."""

    name, order, draws, params, geometric = "scale", 10, 1, ScaleParams, True

    def draw(self, u, p, ctx):
        return (_uniform(u[0], *p.scale_range, 2),)

    def describe(self, params, pad):
        return f"scale:{params[0]:.2f}" + (pad if params[0] < 1 else "")

    def matrix(self, params, size):
        return about_centre(np.diag([params[0], params[0], 1.0]), *size)


class Rotate(AugmentOp):
    """Rotate about the centre, counter-clockwise on screen, by ±`rotate_max_deg` at most."""

    name, order, draws, params, geometric = "rotate", 20, 1, RotateParams, True

    def draw(self, u, p, ctx):
        return (round((2.0 * u[0] - 1.0) * p.rotate_max_deg, 1),)

    def describe(self, params, pad):
        return f"rotate:{params[0]:+.1f}" + (pad if params[0] != 0 else "")

    def matrix(self, params, size):
        t = math.radians(params[0])
        c, s = round(math.cos(t), 12), round(math.sin(t), 12)  # exact at multiples of 90
        # counter-clockwise on screen (y grows downwards)
        return about_centre(np.array([[c, s, 0], [-s, c, 0], [0, 0, 1.0]]), *size)


class Crop(AugmentOp):
    """A window of random area and position (aspect kept) resized back to the full size; it
    only takes what a planned scale-up left: together they keep min(crop_min_area, 1/s^2)."""

    name, order, draws, params, geometric = "crop", 30, 3, CropParams, True

    def draw(self, u, p, ctx):
        factor = ctx.planned["scale"][0] if "scale" in ctx.planned else 1.0
        lo = min(1.0, p.crop_min_area * max(factor, 1.0) ** 2)
        area = min(1.0, max(_uniform(u[0], lo, 1.0, 2), math.ceil(lo * 100 - 1e-9) / 100))
        return (area, float(u[1]), float(u[2]))

    def describe(self, params, pad):
        return f"crop:{params[0]:.2f}"

    def matrix(self, params, size):
        area, fx, fy = params
        w, h = size
        k = math.sqrt(area)
        x0, y0 = fx * w * (1 - k), fy * h * (1 - k)
        return np.array([[1 / k, 0, -x0 / k], [0, 1 / k, -y0 / k], [0, 0, 1.0]])


class HFlip(AugmentOp):
    """Mirror left-right, with probability `flip_prob`."""

    name, order, draws, params, geometric, chance = "hflip", 40, 1, FlipParams, True, True

    def draw(self, u, p, ctx):
        return () if u[0] < p.flip_prob or ctx.forced else None

    def matrix(self, params, size):
        return np.array([[-1.0, 0, size[0]], [0, 1, 0], [0, 0, 1]])


class VFlip(AugmentOp):
    """Mirror top-bottom, with probability `flip_prob` (off by default: corridors have a
    floor)."""

    name, order, draws, params, geometric, chance = "vflip", 50, 1, FlipParams, True, True

    def draw(self, u, p, ctx):
        return () if u[0] < p.flip_prob or ctx.forced else None

    def matrix(self, params, size):
        return np.array([[1.0, 0, 0], [0, -1, size[1]], [0, 0, 1]])


class Hsv(AugmentOp):
    """Hue shift, saturation and value factors; pixels in `protected_hues` stay bit-identical."""

    name, order, draws, params = "hsv", 60, 3, HsvParams

    def draw(self, u, p, ctx):
        hue = round((2.0 * u[0] - 1.0) * p.hue_shift_deg, 1)
        return (hue, _uniform(u[1], *p.saturation_range, 2), _uniform(u[2], *p.value_range, 2))

    def describe(self, params, pad):
        return f"hsv:h{params[0]:+.1f},s{params[1]:.2f},v{params[2]:.2f}"

    def apply(self, img, params, render):
        return hsv_jitter(img, *params, render.bands)


SCALE, ROTATE, CROP = register(Scale()), register(Rotate()), register(Crop())
HFLIP, VFLIP, HSV = register(HFlip()), register(VFlip()), register(Hsv())


# --- one op on one image -----------------------------------------------------------------------

_EDGE = Padding("edge", ())


def hflip(img: Image.Image) -> Image.Image:
    """Mirror left-right."""
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def vflip(img: Image.Image) -> Image.Image:
    """Mirror top-bottom."""
    return img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)


def rotate(
    img: Image.Image, angle: float, padding: Padding = _EDGE, resample: str = "bilinear"
) -> Image.Image:
    """Rotate by `angle` degrees counter-clockwise about the centre, same size."""
    return warp(img, ROTATE.matrix((angle,), img.size), padding, resample)


def scale(
    img: Image.Image, factor: float, padding: Padding = _EDGE, resample: str = "bilinear"
) -> Image.Image:
    """Zoom by `factor` about the centre, same size (< 1 pads a border, > 1 cuts the edges)."""
    return warp(img, SCALE.matrix((factor,), img.size), padding, resample)


def crop(
    img: Image.Image, area: float, fx: float, fy: float, resample: str = "bilinear"
) -> Image.Image:
    """The window of `area` x the image area (aspect kept) at relative position (fx, fy) in
    [0, 1]^2, resized back to the full size."""
    return warp(img, CROP.matrix((area, fx, fy), img.size), _EDGE, resample)
