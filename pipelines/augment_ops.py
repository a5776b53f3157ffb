"""Image ops of the augment stage: pure PIL + numpy, no Ray.

Plans. A copy's plan is a list of steps `(name, params)` drawn from (seed, sample id, copy index)
only, in the fixed order scale, rotate, crop, hflip, vflip, hsv (`plan_copy`); `step_labels`
turns it into the `aug_ops` provenance strings:
  scale:0.93[:<pad>]      zoom about the centre (< 1 uncovers a border, filled by <pad>)
  rotate:+6.2[:<pad>]     degrees, counter-clockwise positive (uncovered corners: <pad>)
  crop:0.91               area fraction of the window (aspect kept) resized back to full size
  hflip, vflip            mirror left-right / top-bottom
  hsv:h+8.0,s0.92,v1.05   hue shift (degrees), saturation and value factors
<pad> is the padding mode (edge, reflect, constant); for multi-image rows whose images pad
differently, one mode per image joined by "/".

Geometry. The geometric steps compose into one affine map applied with one resample, and the
output keeps the input size (so it stays within the pixel budget). Coordinates are continuous,
pixel (i, j) spanning [i, i+1] x [j, j+1], as PIL's affine transform samples them.

Padding (`choose_padding`), from the image's border strips (width min(w, h) // 50, in [2, 16]):
  1. flat: max over channels of the strips' std <= flat_std -> constant, the strips' mean colour;
  2. textured: mean |difference| of neighbouring strip pixels >= texture_grad -> reflect (mirrored
     texture continues the texture; edge-replicate would smear it into streaks);
  3. otherwise (smooth but varying, e.g. a lit wall's gradient) -> edge-replicate.

Colour (`hsv_jitter`). Hue shift, saturation and value factors in HSV, vectorised in float32
over cache-sized chunks of pixels; pixels whose original colour lies in a protected hue band
(with the band's saturation and value floors) are copied back bit for bit.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image

from hazard.config.data import AugmentConfig

Step = tuple[str, tuple[float, ...]]
"""One planned op: (name, parameters), e.g. ("rotate", (6.2,)) or ("crop", (0.91, fx, fy))."""

OP_ORDER: tuple[str, ...] = ("scale", "rotate", "crop", "hflip", "vflip", "hsv")
GEOMETRIC = frozenset({"scale", "rotate", "crop", "hflip", "vflip"})
FLIPS = frozenset({"hflip", "vflip"})
RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
_SUPPORT = {"bilinear": 1, "bicubic": 2}  # pixels a sample reads beyond its cell


class Padding(NamedTuple):
    """How to fill what a rotation or scale-down uncovers."""

    mode: str  # edge | reflect | constant
    fill: tuple[int, ...]  # constant colour (one value per band)


# --- plans -------------------------------------------------------------------------------------


def copy_rng(seed: int, sample_id: str, copy: int) -> np.random.Generator:
    """The random generator of one augmented copy, from (seed, id, copy index) only."""
    digest = hashlib.sha256(f"{seed}\x1f{sample_id}\x1f{copy}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _uniform(u: float, lo: float, hi: float, digits: int) -> float:
    return round(lo + u * (hi - lo), digits)


def plan_copy(
    cfg: AugmentConfig, sample_id: str, copy: int, ops: Sequence[str] | None = None
) -> list[Step]:
    """The steps of copy `copy` of `sample_id` using `ops` (default cfg.ops), in OP_ORDER.

    Every copy draws the same ten uniforms in the same order whatever the ops, so enabling or
    disabling one op (e.g. per label) leaves the other ops' parameters unchanged.
    """
    enabled = set(cfg.ops if ops is None else ops)
    u = copy_rng(cfg.seed, sample_id, copy).random(10)
    steps: list[Step] = []
    factor = 1.0
    if "scale" in enabled:
        factor = _uniform(u[0], *cfg.scale_range, 2)
        steps.append(("scale", (factor,)))
    if "rotate" in enabled:
        steps.append(("rotate", (round((2.0 * u[1] - 1.0) * cfg.rotate_max_deg, 1),)))
    if "crop" in enabled:
        # the crop only takes what a scale-up left: together they keep min(crop_min_area, 1/s^2)
        lo = min(1.0, cfg.crop_min_area * max(factor, 1.0) ** 2)
        area = min(1.0, max(_uniform(u[2], lo, 1.0, 2), math.ceil(lo * 100 - 1e-9) / 100))
        steps.append(("crop", (area, float(u[3]), float(u[4]))))
    only_flips = enabled <= FLIPS
    for i, flip in ((5, "hflip"), (6, "vflip")):
        if flip in enabled and (u[i] < cfg.flip_prob or only_flips):
            steps.append((flip, ()))
    if "hsv" in enabled:
        hue = round((2.0 * u[7] - 1.0) * cfg.hue_shift_deg, 1)
        sat = _uniform(u[8], *cfg.saturation_range, 2)
        val = _uniform(u[9], *cfg.value_range, 2)
        steps.append(("hsv", (hue, sat, val)))
    return steps


def step_labels(steps: Sequence[Step], pad_modes: Sequence[str] = ()) -> list[str]:
    """Provenance strings of a plan, e.g. ["scale:0.93:reflect", "rotate:+6.2:reflect",
    "crop:0.91", "hflip", "hsv:h+8.0,s0.92,v1.05"]; `pad_modes`: one per image."""
    pad = pad_modes[0] if len(set(pad_modes)) == 1 else "/".join(pad_modes)
    suffix = f":{pad}" if pad else ""
    labels = []
    for name, params in steps:
        if name == "scale":
            labels.append(f"scale:{params[0]:.2f}" + (suffix if params[0] < 1 else ""))
        elif name == "rotate":
            labels.append(f"rotate:{params[0]:+.1f}" + (suffix if params[0] != 0 else ""))
        elif name == "crop":
            labels.append(f"crop:{params[0]:.2f}")
        elif name == "hsv":
            labels.append(f"hsv:h{params[0]:+.1f},s{params[1]:.2f},v{params[2]:.2f}")
        else:
            labels.append(name)
    return labels


# --- geometry ----------------------------------------------------------------------------------


def normalize_mode(img: Image.Image) -> Image.Image:
    """`img` in L, RGB or RGBA (alpha kept when the source has any)."""
    if img.mode in ("L", "RGB", "RGBA"):
        return img
    if img.mode in ("LA", "PA", "RGBa", "La") or "transparency" in img.info:
        return img.convert("RGBA")
    return img.convert("RGB")


def _about_centre(linear: np.ndarray, w: int, h: int) -> np.ndarray:
    to_origin = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]], dtype=np.float64)
    back = np.array([[1, 0, w / 2], [0, 1, h / 2], [0, 0, 1]], dtype=np.float64)
    return back @ linear @ to_origin


def step_matrix(step: Step, size: tuple[int, int]) -> np.ndarray:
    """Forward map (3x3: input -> output coordinates) of one geometric step on a w x h canvas."""
    name, params = step
    w, h = size
    if name == "scale":
        return _about_centre(np.diag([params[0], params[0], 1.0]), w, h)
    if name == "rotate":
        t = math.radians(params[0])
        c, s = round(math.cos(t), 12), round(math.sin(t), 12)  # exact at multiples of 90
        # counter-clockwise on screen (y grows downwards)
        return _about_centre(np.array([[c, s, 0], [-s, c, 0], [0, 0, 1.0]]), w, h)
    if name == "crop":
        area, fx, fy = params
        k = math.sqrt(area)
        x0, y0 = fx * w * (1 - k), fy * h * (1 - k)
        return np.array([[1 / k, 0, -x0 / k], [0, 1 / k, -y0 / k], [0, 0, 1.0]])
    if name == "hflip":
        return np.array([[-1.0, 0, w], [0, 1, 0], [0, 0, 1]])
    if name == "vflip":
        return np.array([[1.0, 0, 0], [0, -1, h], [0, 0, 1]])
    raise ValueError(f"unknown geometric op {name!r}")


def plan_matrix(steps: Sequence[Step], size: tuple[int, int]) -> np.ndarray:
    """Forward map of the plan's geometric steps, composed in order."""
    m = np.eye(3)
    for step in steps:
        if step[0] in GEOMETRIC:
            m = step_matrix(step, size) @ m
    return m


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
    return warp(img, step_matrix(("rotate", (angle,)), img.size), padding, resample)


def scale(
    img: Image.Image, factor: float, padding: Padding = _EDGE, resample: str = "bilinear"
) -> Image.Image:
    """Zoom by `factor` about the centre, same size (< 1 pads a border, > 1 cuts the edges)."""
    return warp(img, step_matrix(("scale", (factor,)), img.size), padding, resample)


def crop(
    img: Image.Image, area: float, fx: float, fy: float, resample: str = "bilinear"
) -> Image.Image:
    """The window of `area` x the image area (aspect kept) at relative position (fx, fy) in
    [0, 1]^2, resized back to the full size."""
    return warp(img, step_matrix(("crop", (area, fx, fy)), img.size), _EDGE, resample)


# --- padding choice ----------------------------------------------------------------------------


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


# --- colour ------------------------------------------------------------------------------------


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
    hue: np.ndarray, sat: np.ndarray, val: np.ndarray, bands: Sequence[AugmentConfig.HueBand]
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
    bands: Sequence[AugmentConfig.HueBand] = (),
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


# --- plans on images ---------------------------------------------------------------------------


def apply_plan(
    img: Image.Image,
    steps: Sequence[Step],
    padding: Padding,
    bands: Sequence[AugmentConfig.HueBand] = (),
    resample: str = "bilinear",
) -> Image.Image:
    """Apply a plan to a decoded image: its geometric steps as one resample, then hsv."""
    unknown = [name for name, _ in steps if name not in OP_ORDER]
    if unknown:
        raise ValueError(f"unknown augmentation op(s) {unknown}; known: {list(OP_ORDER)}")
    img = normalize_mode(img)
    if any(name in GEOMETRIC for name, _ in steps):
        img = warp(img, plan_matrix(steps, img.size), padding, resample)
    for name, params in steps:
        if name == "hsv":
            img = hsv_jitter(img, *params, bands)
    return img
