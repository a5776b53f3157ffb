"""Geometry of the augmentation ops: one affine warp with padding, and the padding choice.

Coordinates are continuous, pixel (i, j) spanning [i, i+1] x [j, j+1], as PIL's affine
transform samples them. The geometric ops compose into one forward map (input -> output
coordinates) applied with one resample by `warp`; the output keeps the input size (so it stays
within the pixel budget).

Padding (`choose_padding`), from the image's border strips (width min(w, h) // 50, in [2, 16]):
  1. flat: max over channels of the strips' std <= flat_std -> constant, the strips' mean colour;
  2. textured: mean |difference| of neighbouring strip pixels >= texture_grad -> reflect (mirrored
     texture continues the texture; edge-replicate would smear it into streaks);
  3. otherwise (smooth but varying, e.g. a lit wall's gradient) -> edge-replicate.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from PIL import Image

RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
_SUPPORT = {"bilinear": 1, "bicubic": 2}  # pixels a sample reads beyond its cell


class Padding(NamedTuple):
    """How to fill what a rotation or scale-down uncovers."""

    mode: str  # edge | reflect | constant
    fill: tuple[int, ...]  # constant colour (one value per band)


def normalize_mode(img: Image.Image) -> Image.Image:
    """`img` in L, RGB or RGBA (alpha kept when the source has any)."""
    if img.mode in ("L", "RGB", "RGBA"):
        return img
    if img.mode in ("LA", "PA", "RGBa", "La") or "transparency" in img.info:
        return img.convert("RGBA")
    return img.convert("RGB")


def about_centre(linear: np.ndarray, w: int, h: int) -> np.ndarray:
    """`linear` (3x3) applied about the centre of a w x h canvas."""
    to_origin = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]], dtype=np.float64)
    back = np.array([[1, 0, w / 2], [0, 1, h / 2], [0, 0, 1]], dtype=np.float64)
    return back @ linear @ to_origin


def _transpose_for(m: np.ndarray, w: int, h: int) -> Image.Transpose | None:
    """The exact PIL transpose equal to forward map `m`, if it is a flip (or both)."""
    flips = {
        Image.Transpose.FLIP_LEFT_RIGHT: [[-1, 0, w], [0, 1, 0]],
        Image.Transpose.FLIP_TOP_BOTTOM: [[1, 0, 0], [0, -1, h]],
        Image.Transpose.ROTATE_180: [[-1, 0, w], [0, -1, h]],
    }
    for method, rows in flips.items():
        if np.allclose(m[:2], rows, atol=1e-9):
            return method
    return None


def pad_array(
    arr: np.ndarray, widths: tuple[tuple[int, int], tuple[int, int]], mode: str
) -> np.ndarray:
    """`arr` (h, w[, c]) padded by ((top, bottom), (left, right)) in np.pad's `edge` or `reflect`
    mode (reflect mirrors about the edge pixel without repeating it), in one allocation."""
    (top, bottom), (left, right) = widths
    h, w = arr.shape[:2]
    if mode == "reflect" and (max(top, bottom) >= h or max(left, right) >= w):
        return np.pad(arr, widths + ((0, 0),) * (arr.ndim - 2), mode="reflect")
    out = np.empty((h + top + bottom, w + left + right) + arr.shape[2:], dtype=arr.dtype)
    out[top : top + h, left : left + w] = arr
    rows = out[:, left : left + w]
    if mode == "edge":
        rows[:top] = arr[:1]
        rows[top + h :] = arr[h - 1 :]
        out[:, :left] = out[:, left : left + 1]
        out[:, left + w :] = out[:, left + w - 1 : left + w]
    elif mode == "reflect":
        rows[:top] = arr[1 : top + 1][::-1]
        rows[top + h :] = arr[h - 1 - bottom : h - 1][::-1]
        out[:, :left] = out[:, left + 1 : 2 * left + 1][:, ::-1]
        out[:, left + w :] = out[:, left + w - 1 - right : left + w - 1][:, ::-1]
    else:
        raise ValueError(f"unknown padding mode {mode!r}")
    return out


def warp(
    img: Image.Image, forward: np.ndarray, padding: Padding, resample: str = "bilinear"
) -> Image.Image:
    """`img` mapped by `forward` (input -> output coordinates) onto a canvas of the same size,
    with one resample; what lies outside the source is filled per `padding`."""
    img = normalize_mode(img)
    w, h = img.size
    if np.allclose(forward, np.eye(3), atol=1e-12):
        return img.copy()
    method = _transpose_for(forward, w, h)
    if method is not None:
        return img.transpose(method)
    inv = np.linalg.inv(forward)
    centres = np.array([[0.5, w - 0.5, 0.5, w - 0.5], [0.5, 0.5, h - 0.5, h - 0.5], [1, 1, 1, 1]])
    xs, ys, _ = inv @ centres  # where the output's corner pixels read from
    support = _SUPPORT[resample]

    def margin(overshoot: float) -> int:
        return math.ceil(overshoot) + support if overshoot > 1e-6 else 0

    widths = (margin(-ys.min()), margin(ys.max() - h)), (margin(-xs.min()), margin(xs.max() - w))
    src, top, left = img, 0, 0
    if padding.mode != "constant" and any(widths[0] + widths[1]):
        src = Image.fromarray(pad_array(np.asarray(img), widths, padding.mode))
        top, left = widths[0][0], widths[1][0]
    bands = len(img.getbands())
    fill = tuple(padding.fill[:bands]) + (0,) * (bands - len(padding.fill))
    data = (inv[0, 0], inv[0, 1], inv[0, 2] + left, inv[1, 0], inv[1, 1], inv[1, 2] + top)
    return src.transform(
        (w, h),
        Image.Transform.AFFINE,
        data,
        resample=RESAMPLE[resample],
        fillcolor=fill[0] if bands == 1 else fill,
    )


def choose_padding(
    arr: np.ndarray, mode: str = "auto", flat_std: float = 4.0, texture_grad: float = 8.0
) -> Padding:
    """The padding of an image (h, w[, c] uint8) from its border strips (module docstring)."""
    pix = arr if arr.ndim == 3 else arr[..., None]
    h, w = pix.shape[:2]
    bw = max(1, min(max(2, min(h, w) // 50), 16, min(h, w) // 2))
    strips = [pix[:bw], pix[h - bw :], pix[bw : h - bw, :bw], pix[bw : h - bw, w - bw :]]
    strips = [s for s in strips if s.size]
    flat = np.concatenate([s.reshape(-1, pix.shape[2]) for s in strips]).astype(np.float32)
    fill = tuple(int(v) for v in np.rint(flat.mean(axis=0)))
    if mode != "auto":
        return Padding(mode, fill)
    if float(flat.std(axis=0).max()) <= flat_std:
        return Padding("constant", fill)
    total, count = 0.0, 0
    for s in strips:
        s16 = s.astype(np.int16)
        for axis in (0, 1):
            if s16.shape[axis] > 1:
                d = np.abs(np.diff(s16, axis=axis))
                total, count = total + float(d.sum(dtype=np.int64)), count + d.size
    grad = total / count if count else 0.0
    return Padding("reflect" if grad >= texture_grad else "edge", fill)
