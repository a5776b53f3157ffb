"""Labelled synthetic corridor scenes for the five risk labels (imports numpy and PIL; seeded).

Rules the label follows, chosen to be visible to a tiny ViT at 8x8 patches and to survive flips,
small rotations, 85% crops, padding and mild HSV jitter:

- ``no_risk``: a one-point-perspective corridor (neutral walls, darker floor) with an empty floor;
- ``low_risk``: the same with one or two small items along the walls;
- ``medium_risk``: large brown boxes, black bags or furniture over a big part of the floor;
- ``high_risk``: a large, saturated red/orange/yellow cue (e-bike charging, battery packs, open
  flame, exit door blocked by a red/orange obstacle) covering at least ~8% of the pixels;
- ``non_corridor``: a street, a room or a flat UI screenshot, with plenty of blue/green.

Saturated red/orange/yellow is kept below 1% of the pixels outside ``high_risk``.

Long because: every drawing function shares the canvas, the perspective view and the colour
rules above, which are what make the labels learnable; split by what it draws, the rules would
be scattered over files that each depend on all the others. Sections: colour measures, helpers,
corridor, floor items, high-risk cues, non-corridor scenes, rendering, captions, folder dataset.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from hazard.core.labels import RISK_LABELS

RGB = tuple[int, int, int]
Box = tuple[float, float, float, float]

SUPERSAMPLE = 2
"""Scenes are drawn at this multiple of the output size, then downsampled (anti-aliasing)."""

HIGH_RISK_MIN_FRACTION = 0.09
"""High-risk scenes are redrawn larger until this share of pixels is hazard-coloured."""

WALL_COLOURS: dict[str, RGB] = {
    "grey": (160, 160, 158),
    "light grey": (196, 196, 192),
    "beige": (205, 192, 168),
    "cream": (226, 218, 198),
    "off-white": (232, 230, 224),
    "taupe": (170, 158, 142),
    "warm grey": (182, 174, 164),
}
FLOOR_COLOURS: dict[str, RGB] = {
    "dark grey": (94, 94, 96),
    "grey linoleum": (122, 123, 124),
    "slate": (106, 107, 112),
    "warm grey": (114, 110, 106),
}
DOOR_COLOURS: tuple[RGB, ...] = ((140, 140, 142), (214, 211, 204), (168, 170, 174), (112, 114, 118))
HAZARD_COLOURS: dict[str, RGB] = {
    "red": (214, 34, 28),
    "orange": (240, 118, 18),
    "red-orange": (226, 70, 24),
    "yellow": (250, 210, 30),
}
ROOM_WALLS: dict[str, RGB] = {
    "light blue": (150, 186, 214),
    "mint": (150, 198, 172),
    "sage": (156, 184, 150),
    "cream": (226, 218, 198),
    "pale grey": (200, 202, 204),
}
ROOM_FLOORS: dict[str, RGB] = {
    "wood": (150, 122, 96),
    "carpet": (120, 130, 140),
    "grey tile": (170, 170, 168),
}
UI_ACCENTS: tuple[RGB, ...] = ((33, 110, 220), (20, 150, 136), (46, 160, 67), (63, 81, 181))


@dataclass
class SceneSpec:
    """What a synthetic scene shows: its label, the kind of scene, the visible objects."""

    label: str
    kind: str
    objects: list[str] = field(default_factory=list)
    wall_colour: str = ""
    floor_colour: str = ""
    lighting: str = "normal"
    size: int = 112
    details: dict[str, str] = field(default_factory=dict)
    """Short attributes used by captions (e.g. ``{"colour": "red"}``)."""
    boxes: list[tuple[str, Box]] = field(default_factory=list)
    """(object, (x0, y0, x1, y1)) with coordinates normalised to 0-1 of the image."""

    def object_area(self) -> float:
        """Sum of object box areas as a fraction of the image (overlaps counted twice)."""
        return float(sum((b[2] - b[0]) * (b[3] - b[1]) for _, b in self.boxes))


# --------------------------------------------------------------------------- colour measures


def _hsv(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees, saturation and value in 0-1 for an (H, W, 3) uint8 array."""
    x = arr.astype(np.float32) / 255.0
    mx, mn = x.max(axis=-1), x.min(axis=-1)
    delta = mx - mn
    sat = np.where(mx > 0, delta / np.maximum(mx, 1e-6), 0.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    d = np.maximum(delta, 1e-6)
    hue = np.where(
        mx == r, ((g - b) / d) % 6.0, np.where(mx == g, (b - r) / d + 2.0, (r - g) / d + 4.0)
    )
    hue = np.where(delta > 0, hue * 60.0, 0.0)
    return hue, sat, mx


def hazard_colour_mask(image: Image.Image | np.ndarray) -> np.ndarray:
    """Pixels that are saturated red, orange or yellow (the high-risk colour cue)."""
    hue, sat, val = _hsv(np.asarray(image)[..., :3])
    return ((hue <= 70.0) | (hue >= 335.0)) & (sat >= 0.55) & (val >= 0.45)


def hazard_colour_fraction(image: Image.Image | np.ndarray) -> float:
    """Share of pixels in :func:`hazard_colour_mask`."""
    return float(hazard_colour_mask(image).mean())


def blue_green_fraction(image: Image.Image | np.ndarray) -> float:
    """Share of pixels that are clearly green, cyan or blue (sky, plants, UI accents)."""
    hue, sat, val = _hsv(np.asarray(image)[..., :3])
    return float(((hue >= 75.0) & (hue <= 270.0) & (sat >= 0.2) & (val >= 0.15)).mean())


# --------------------------------------------------------------------------- small helpers


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def _clip(rgb: Sequence[float]) -> RGB:
    return tuple(int(min(255, max(0, round(c)))) for c in rgb)  # type: ignore[return-value]


def _shade(rgb: Sequence[float], k: float) -> RGB:
    return _clip([c * k for c in rgb])


def _jitter(rng: np.random.Generator, rgb: Sequence[float], common: float = 10, each: float = 4):
    off = rng.uniform(-common, common)
    return _clip([c + off + rng.uniform(-each, each) for c in rgb])


class _Canvas:
    """A supersampled drawing surface that records object boxes in normalised coordinates."""

    def __init__(self, size: int, background: RGB = (128, 128, 128)):
        self.size = size
        self.W = float(size * SUPERSAMPLE)
        self.img = Image.new("RGB", (size * SUPERSAMPLE, size * SUPERSAMPLE), background)
        self.d = ImageDraw.Draw(self.img)
        self.boxes: list[tuple[str, Box]] = []

    def add_box(self, name: str, pts: Sequence[tuple[float, float]]) -> None:
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        b = [min(xs) / self.W, min(ys) / self.W, max(xs) / self.W, max(ys) / self.W]
        b = [min(1.0, max(0.0, v)) for v in b]
        if b[2] > b[0] and b[3] > b[1]:
            self.boxes.append((name, (b[0], b[1], b[2], b[3])))

    def line_w(self, px: float) -> int:
        return max(1, int(round(px)))


@dataclass
class _View:
    """One-point perspective: u across (0 left wall, 1 right), v down (0 ceiling, 1 floor), z depth
    (0 the image frame, 1 the end wall, which is the frame scaled by ``f`` about the vanishing
    point)."""

    W: float
    vx: float
    vy: float
    f: float

    def s(self, z: float) -> float:
        return 1.0 / (1.0 + z * (1.0 / self.f - 1.0))

    def p(self, u: float, v: float, z: float) -> tuple[float, float]:
        s = self.s(z)
        return (self.vx + (u * self.W - self.vx) * s, self.vy + (v * self.W - self.vy) * s)


# --------------------------------------------------------------------------- corridor


def _corridor(c: _Canvas, rng: np.random.Generator, spec: SceneSpec, f: float) -> _View:
    """Draw the empty corridor; sets wall/floor colour names on ``spec``."""
    W = c.W
    view = _View(W, W * _u(rng, 0.4, 0.6), W * _u(rng, 0.36, 0.5), f)
    p, d = view.p, c.d
    spec.wall_colour = _pick(rng, list(WALL_COLOURS))
    spec.floor_colour = _pick(rng, list(FLOOR_COLOURS))
    wall = _jitter(rng, WALL_COLOURS[spec.wall_colour])
    floor = _jitter(rng, FLOOR_COLOURS[spec.floor_colour], 8, 3)
    k_left, k_right = _u(rng, 0.84, 1.0), _u(rng, 0.74, 0.92)
    if rng.random() < 0.5:
        k_left, k_right = k_right, k_left
    ceiling = _clip([0.5 * c_ + 0.5 * 235 for c_ in wall])

    def quad(pts, fill):
        d.polygon([p(*q) for q in pts], fill=fill)

    quad([(0, 0, 0), (1, 0, 0), (1, 0, 1), (0, 0, 1)], ceiling)
    quad([(0, 1, 0), (1, 1, 0), (1, 1, 1), (0, 1, 1)], floor)
    quad([(0, 0, 0), (0, 0, 1), (0, 1, 1), (0, 1, 0)], _shade(wall, k_left))
    quad([(1, 0, 0), (1, 0, 1), (1, 1, 1), (1, 1, 0)], _shade(wall, k_right))
    quad([(0, 0, 1), (1, 0, 1), (1, 1, 1), (0, 1, 1)], _shade(wall, 0.9))
    # floor tiles: lines across the floor at increasing depths
    if rng.random() < 0.6:
        z = _u(rng, 0.02, 0.15)
        while z < 1.0:
            d.line([p(0, 1, z), p(1, 1, z)], fill=_shade(floor, 0.88), width=c.line_w(W / 200))
            z += _u(rng, 0.12, 0.2)
    # skirting boards
    sk = _shade(floor, 0.8)
    quad([(0, 0.97, 0), (0, 0.97, 1), (0, 1, 1), (0, 1, 0)], sk)
    quad([(1, 0.97, 0), (1, 0.97, 1), (1, 1, 1), (1, 1, 0)], sk)
    # ceiling lights along the centre line
    light = _clip([248, 248, 240])
    z = _u(rng, 0.05, 0.2)
    while z < 0.95:
        quad([(0.43, 0, z), (0.57, 0, z), (0.57, 0, z + 0.05), (0.43, 0, z + 0.05)], light)
        z += _u(rng, 0.2, 0.3)
    # side doors
    for side in (0.0, 1.0):
        z = _u(rng, 0.05, 0.35)
        while z < 0.85:
            dz = _u(rng, 0.1, 0.16)
            col = _jitter(rng, _pick(rng, DOOR_COLOURS), 6, 2)
            col = _shade(col, k_left if side == 0 else k_right)
            quad([(side, 0.28, z), (side, 0.28, z + dz), (side, 1, z + dz), (side, 1, z)], col)
            hz = z + dz * (0.8 if side == 0 else 0.2)
            hx, hy = p(side, 0.62, hz)
            r = max(1.0, W / 150 * view.s(hz))
            d.ellipse([hx - r, hy - r, hx + r, hy + r], fill=(200, 200, 195))
            z += dz + _u(rng, 0.12, 0.3)
    # end wall: door or window, optional exit sign
    if rng.random() < 0.75:
        dw, dh = _u(rng, 0.28, 0.4), _u(rng, 0.62, 0.72)
        u0 = _u(rng, 0.15, 0.85 - dw)
        quad(
            [(u0, 1 - dh, 1), (u0 + dw, 1 - dh, 1), (u0 + dw, 1, 1), (u0, 1, 1)],
            _jitter(rng, _pick(rng, DOOR_COLOURS), 6, 2),
        )
        if rng.random() < 0.35:
            _exit_sign(c, view, u0 + dw / 2, 1 - dh - 0.05, 1.0)
    else:
        quad([(0.2, 0.25, 1), (0.8, 0.25, 1), (0.8, 0.65, 1), (0.2, 0.65, 1)], (238, 238, 232))
    if rng.random() < 0.25:  # a small fire extinguisher (a tiny red detail, well under 1%)
        side = float(rng.integers(2))
        z = _u(rng, 0.35, 0.7)
        u = 0.0 if side == 0 else 1.0
        top, bot = p(u, 0.8, z), p(u, 0.9, z)
        w = max(1.5, W * 0.012 * view.s(z))
        d.rectangle([top[0] - w, top[1], top[0] + w, bot[1]], fill=(200, 30, 30))
    return view


def _exit_sign(c: _Canvas, view: _View, u: float, v: float, z: float) -> None:
    x0, y0 = view.p(u - 0.08, v - 0.05, z)
    x1, y1 = view.p(u + 0.08, v, z)
    c.d.rectangle([x0, y0, x1, y1], fill=(24, 158, 78))
    m = (y1 - y0) * 0.3
    c.d.rectangle([x0 + m, y0 + m, x0 + (x1 - x0) * 0.45, y1 - m], fill=(235, 245, 235))
    c.add_box("exit sign", [(x0, y0), (x1, y1)])


def _box3d(
    c: _Canvas,
    view: _View,
    name: str,
    u0: float,
    u1: float,
    z0: float,
    z1: float,
    h: float,
    colour: RGB,
    v_floor: float = 1.0,
    record: bool = True,
) -> list[tuple[float, float]]:
    """A box standing on the floor; draws the visible side, top and front faces."""
    p, vt = view.p, v_floor - h
    pts_all = []
    if u1 * view.W < view.vx:
        side = [p(u1, vt, z0), p(u1, vt, z1), p(u1, v_floor, z1), p(u1, v_floor, z0)]
    elif u0 * view.W > view.vx:
        side = [p(u0, vt, z0), p(u0, vt, z1), p(u0, v_floor, z1), p(u0, v_floor, z0)]
    else:
        side = []
    if side:
        c.d.polygon(side, fill=_shade(colour, 0.78))
        pts_all += side
    if vt * view.W > view.vy:
        top = [p(u0, vt, z0), p(u1, vt, z0), p(u1, vt, z1), p(u0, vt, z1)]
        c.d.polygon(top, fill=_clip([ch * 1.12 + 8 for ch in colour]))
        pts_all += top
    front = [p(u0, vt, z0), p(u1, vt, z0), p(u1, v_floor, z0), p(u0, v_floor, z0)]
    c.d.polygon(front, fill=colour)
    pts_all += front
    if record:
        c.add_box(name, pts_all)
    return front


# --------------------------------------------------------------------------- floor items

_Item = tuple[float, Callable[[], None]]  # (depth, draw) — drawn far to near


def _cardboard(rng: np.random.Generator) -> RGB:
    return _jitter(rng, (168, 138, 104), 12, 4)


def _small_box(c, view, rng, u0, z, w):
    col = _cardboard(rng)
    front = _box3d(c, view, "small box", u0, u0 + w, z, z + w * 0.6, w * 0.55, col)
    (x0, y0), (x1, _) = front[0], front[1]
    c.d.line([((x0 + x1) / 2, y0), ((x0 + x1) / 2, y0 + (x1 - x0) * 0.25)], fill=(205, 190, 160))


def _shoes(c, view, rng, u0, z, w):
    col = _pick(rng, ((34, 33, 33), (228, 228, 224), (46, 48, 56), (205, 205, 200)))
    pts = []
    for k in range(2):
        zz = z + k * w * 0.45
        x0, yb = view.p(u0, 1, zz)
        x1, _ = view.p(u0 + w, 1, zz)
        hh = (x1 - x0) * 0.5
        c.d.rounded_rectangle([x0, yb - hh, x1, yb], radius=hh * 0.5, fill=_jitter(rng, col, 6))
        c.d.rectangle([x0, yb - hh * 0.25, x1, yb], fill=_shade(col, 0.55))
        pts += [(x0, yb - hh), (x1, yb)]
    c.add_box("pair of shoes", pts)


def _plant(c, view, rng, u0, z, w):
    pot = _pick(rng, ((200, 200, 196), (90, 90, 94), (150, 140, 130)))
    front = _box3d(c, view, "pot", u0, u0 + w * 0.6, z, z + w * 0.5, w * 0.6, pot, record=False)
    (x0, y0), (x1, _) = front[0], front[1]
    cx, r = (x0 + x1) / 2, (x1 - x0) * 0.75
    leaf = _jitter(rng, (58, 128, 60), 10, 6)
    c.d.ellipse([cx - r, y0 - 1.6 * r, cx + r, y0 + 0.2 * r], fill=leaf)
    c.d.ellipse([cx - r * 0.5, y0 - 1.4 * r, cx + r * 0.3, y0 - 0.6 * r], fill=_shade(leaf, 1.25))
    c.add_box("small plant", [(cx - r, y0 - 1.6 * r), (cx + r, front[2][1])])


def _bags(c, view, rng, u0, z, w):
    pts = []
    n = int(rng.integers(2, 4))
    for k in range(n):
        uc = u0 + w * (k + 0.5) / n + _u(rng, -0.03, 0.03)
        zz = z + _u(rng, 0.0, 0.08)
        cx, yb = view.p(uc, 1, zz)
        s = view.s(zz) * view.W
        bw, bh = w / n * 1.6 * s, _u(rng, 0.24, 0.32) * s
        col = _jitter(rng, (34, 34, 38), 6, 2)
        c.d.ellipse([cx - bw / 2, yb - bh, cx + bw / 2, yb + bh * 0.08], fill=col)
        c.d.polygon(
            [(cx - bw * 0.12, yb - bh * 0.95), (cx, yb - bh * 1.15), (cx + bw * 0.12, yb - bh)],
            fill=col,
        )
        c.d.ellipse(
            [cx - bw * 0.3, yb - bh * 0.8, cx - bw * 0.1, yb - bh * 0.45], fill=_shade(col, 2.0)
        )
        pts += [(cx - bw / 2, yb - bh * 1.15), (cx + bw / 2, yb)]
    c.add_box("rubbish bags", pts)


def _big_boxes(c, view, rng, u0, z, w):
    h = _u(rng, 0.24, 0.34)
    _box3d(c, view, "cardboard boxes", u0, u0 + w, z, z + _u(rng, 0.12, 0.2), h, _cardboard(rng))
    if rng.random() < 0.6:  # a second box stacked on top
        w2 = w * _u(rng, 0.55, 0.8)
        a = u0 + _u(rng, 0, w - w2)
        _box3d(
            c,
            view,
            "cardboard boxes",
            a,
            a + w2,
            z + 0.02,
            z + 0.12,
            _u(rng, 0.12, 0.2),
            _cardboard(rng),
            v_floor=1 - h,
        )


def _furniture(c, view, rng, u0, z, w):
    kind = _pick(rng, ("sofa", "cabinet", "wardrobe"))
    if kind == "sofa":
        col = _jitter(rng, _pick(rng, ((128, 98, 76), (104, 80, 62), (150, 122, 96))), 8, 3)
        _box3d(c, view, "old sofa", u0, u0 + w, z + 0.06, z + 0.16, 0.34, _shade(col, 0.9))
        _box3d(c, view, "old sofa", u0, u0 + w, z, z + 0.1, 0.18, col)
    elif kind == "cabinet":
        col = _jitter(rng, _pick(rng, ((140, 110, 82), (118, 92, 70), (160, 128, 96))), 8, 3)
        front = _box3d(c, view, "cabinet", u0, u0 + w * 0.8, z, z + 0.16, _u(rng, 0.3, 0.4), col)
        (x0, y0), (x1, _), (_, y2) = front[0], front[1], front[2]
        c.d.line([((x0 + x1) / 2, y0), ((x0 + x1) / 2, y2)], fill=_shade(col, 0.6), width=2)
    else:
        col = _jitter(rng, _pick(rng, ((132, 102, 76), (96, 74, 58))), 8, 3)
        front = _box3d(c, view, "wardrobe", u0, u0 + w, z, z + 0.18, _u(rng, 0.5, 0.62), col)
        (x0, y0), (x1, _), (_, y2) = front[0], front[1], front[2]
        c.d.line([((x0 + x1) / 2, y0), ((x0 + x1) / 2, y2)], fill=_shade(col, 0.6), width=2)


def _place_along_walls(rng, n, w_range, z_range):
    """(u0, width, z) for ``n`` items hugging alternating walls."""
    out, first = [], int(rng.integers(2))
    for k in range(n):
        w = _u(rng, *w_range)
        left = (k + first) % 2 == 0
        u0 = _u(rng, 0.01, 0.04) if left else 1 - w - _u(rng, 0.01, 0.04)
        out.append((u0, w, _u(rng, *z_range)))
    return out


# --------------------------------------------------------------------------- high-risk cues


def _socket(c: _Canvas, view: _View, side: float, z: float) -> tuple[float, float]:
    x, y = view.p(side, 0.84, z)
    r = max(2.0, view.W * 0.012 * view.s(z))
    c.d.rectangle([x - r, y - r, x + r, y + r], fill=(236, 236, 232))
    return x, y


def _cable(c: _Canvas, a, b, width: float, rng) -> None:
    mid = ((a[0] + b[0]) / 2, max(a[1], b[1]) + _u(rng, 2, 8) * SUPERSAMPLE)
    c.d.line([a, mid, b], fill=HAZARD_COLOURS["yellow"], width=c.line_w(width), joint="curve")


def _lightning(c: _Canvas, cx: float, cy: float, h: float, fill: RGB) -> None:
    w = h * 0.5
    c.d.polygon(
        [
            (cx + 0.1 * w, cy - h / 2),
            (cx - 0.45 * w, cy + 0.08 * h),
            (cx - 0.02 * w, cy + 0.08 * h),
            (cx - 0.15 * w, cy + h / 2),
            (cx + 0.45 * w, cy - 0.1 * h),
            (cx + 0.02 * w, cy - 0.1 * h),
        ],
        fill=fill,
    )


def _ebike(c: _Canvas, view: _View, rng, spec: SceneSpec, boost: float) -> None:
    colour_name = _pick(rng, ("red", "orange", "red-orange"))
    frame = _jitter(rng, HAZARD_COLOURS[colour_name], 8, 3)
    z = _u(rng, 0.08, 0.2)
    R = view.W * view.s(z) * _u(rng, 0.16, 0.19) * boost
    direction = 1 if rng.random() < 0.5 else -1
    span = 4.1 * R
    uc = _u(rng, 0.42, 0.58)
    cx, yb = view.p(uc, 1, z)
    x_rear = cx - direction * span / 2 + direction * R * 0.5
    cy = yb - R

    def P(dx: float, dy: float) -> tuple[float, float]:
        return (x_rear + direction * dx * R, cy + dy * R)

    d = c.d
    # delivery box on the rear rack (half of the bikes)
    has_box = rng.random() < 0.5
    if has_box:
        box_col = _jitter(rng, HAZARD_COLOURS[_pick(rng, ("yellow", "red", "orange"))], 6, 2)
        a, b = P(-1.05, -1.1), P(0.65, -2.5)
        d.rectangle([min(a[0], b[0]), b[1], max(a[0], b[0]), a[1]], fill=box_col)
    for wx in (0.0, 3.1):  # wheels
        x, y = P(wx, 0)
        d.ellipse([x - R, y - R, x + R, y + R], fill=(24, 24, 26))
        d.ellipse([x - 0.7 * R, y - 0.7 * R, x + 0.7 * R, y + 0.7 * R], fill=(96, 96, 100))
        d.ellipse([x - 0.15 * R, y - 0.15 * R, x + 0.15 * R, y + 0.15 * R], fill=(30, 30, 30))
        d.arc(
            [x - 1.12 * R, y - 1.12 * R, x + 1.12 * R, y + 1.12 * R],
            190,
            350,
            fill=frame,
            width=c.line_w(0.22 * R),
        )
    lw = c.line_w(0.32 * R)
    B, S, H, Hb = P(1.25, 0.1), P(0.9, -1.45), P(2.75, -1.55), P(2.9, -0.9)
    for a, b in ((P(0, 0), S), (P(0, 0), B), (B, S), (S, H), (Hb, P(3.1, 0)), (H, Hb)):
        d.line([a, b], fill=frame, width=lw, joint="curve")
    # battery on the down tube: a thick bar with a lightning mark
    batt = _jitter(rng, HAZARD_COLOURS[_pick(rng, ("yellow", "orange"))], 6, 2)
    d.line([B, Hb], fill=batt, width=c.line_w(0.62 * R))
    d.line([S, P(0.75, -1.75)], fill=(30, 30, 30), width=lw)
    seat = P(0.75, -1.78)
    d.rounded_rectangle(
        [seat[0] - 0.45 * R, seat[1] - 0.15 * R, seat[0] + 0.45 * R, seat[1] + 0.12 * R],
        radius=0.1 * R,
        fill=(28, 28, 30),
    )
    hb = P(2.6, -2.05)
    d.line([H, hb], fill=(30, 30, 30), width=lw)
    mid = ((B[0] + Hb[0]) / 2, (B[1] + Hb[1]) / 2)
    _lightning(c, mid[0], mid[1], 0.5 * R, (30, 30, 30))
    c.add_box("electric bike", [P(-1.1, -2.55), P(4.15, 1)])
    # charging: charger brick on the floor, yellow cable to a wall socket
    side = 0.0 if uc * view.W > view.vx else 1.0
    zs = _u(rng, 0.2, 0.4)
    sock = _socket(c, view, side, zs)
    chx, chy = view.p(0.1 if side == 0 else 0.9, 1, z + 0.05)
    cw = R * 0.45
    _cable(c, mid, (chx, chy - cw * 0.3), 0.12 * R, rng)
    _cable(c, (chx, chy - cw * 0.3), sock, 0.12 * R, rng)
    d.rectangle([chx - cw, chy - cw * 0.6, chx + cw, chy], fill=(26, 26, 28))
    c.add_box("charger", [(chx - cw, chy - cw * 0.6), (chx + cw, chy)])
    spec.objects += ["electric bike", "battery", "charging cable"]
    if has_box:
        spec.objects.append("delivery box")
    spec.details["colour"] = colour_name


def _batteries(c: _Canvas, view: _View, rng, spec: SceneSpec, boost: float) -> None:
    n = int(rng.integers(2, 4))
    side = float(rng.integers(2))
    zs = _u(rng, 0.15, 0.35)
    sock = _socket(c, view, side, zs)
    colour_name = _pick(rng, ("red", "orange", "yellow"))
    u_start = _u(rng, 0.2, 0.35)
    for k in range(n):
        z = _u(rng, 0.02, 0.1) + 0.05 * k
        w = _u(rng, 0.2, 0.26) * boost
        u0 = u_start + k * 0.2 + _u(rng, -0.03, 0.03)
        col = _jitter(rng, HAZARD_COLOURS[colour_name], 6, 2)
        front = _box3d(c, view, "battery pack", u0, u0 + w, z, z + w * 0.6, w * 0.65, col)
        (x0, y0), (x1, _), (_, y2) = front[0], front[1], front[2]
        _lightning(c, (x0 + x1) / 2, (y0 + y2) / 2, (y2 - y0) * 0.7, (28, 28, 28))
        _cable(c, ((x0 + x1) / 2, y0), sock, max(3.0, (x1 - x0) * 0.06), rng)
    spec.objects += ["battery packs", "charging cable"]
    spec.details["colour"] = colour_name


def _flame(c: _Canvas, view: _View, rng, spec: SceneSpec, boost: float) -> None:
    z = _u(rng, 0.05, 0.25)
    uc = _u(rng, 0.35, 0.65)
    cx, yb = view.p(uc, 1, z)
    s = view.W * view.s(z)
    fw, fh = _u(rng, 0.45, 0.6) * s * boost, _u(rng, 0.5, 0.65) * s * boost
    fuel = _pick(rng, ("rubbish", "cardboard", "a chair"))
    c.d.rectangle([cx - fw * 0.45, yb - fh * 0.12, cx + fw * 0.45, yb], fill=(40, 34, 30))
    layers = ((1.0, (232, 64, 22)), (0.72, (246, 140, 24)), (0.45, (252, 212, 40)))
    tongues = [(_u(rng, -0.3, 0.3), _u(rng, 0.55, 1.0), _u(rng, 0, 6.28)) for _ in range(5)]
    tongues[0] = (0.0, 1.0, tongues[0][2])
    for scale, col in layers:
        for ox, hk, ph in tongues:
            bw, h = fw * 0.55 * scale, fh * hk * scale
            x0 = cx + ox * fw * 0.6
            right, left = [], []
            for t in np.linspace(0.0, 1.0, 10):
                wt = bw / 2 * (1 - t) ** 0.8 * (1 + 0.15 * math.sin(7 * t + ph))
                y = yb - fh * 0.05 - t * h
                right.append((x0 + wt, y))
                left.append((x0 - wt, y))
            base = [
                (x0 + bw / 2 * math.cos(a), yb - fh * 0.05 + bw * 0.2 * math.sin(a))
                for a in np.linspace(0, math.pi, 7)
            ]
            c.d.polygon(right + left[::-1] + base[::-1], fill=_jitter(rng, col, 5, 2))
    c.add_box("open flame", [(cx - fw / 2, yb - fh), (cx + fw / 2, yb)])
    spec.objects += ["open flame", "smoke", fuel]
    spec.details["fuel"] = fuel


def _blocked_exit(c: _Canvas, view: _View, rng, spec: SceneSpec, boost: float) -> None:
    dw, dh = _u(rng, 0.34, 0.44), _u(rng, 0.62, 0.7)
    u0 = 0.5 - dw / 2 + _u(rng, -0.05, 0.05)
    c.d.polygon(
        [view.p(*q) for q in ((u0, 1 - dh, 1), (u0 + dw, 1 - dh, 1), (u0 + dw, 1, 1), (u0, 1, 1))],
        fill=_jitter(rng, (140, 140, 142), 6, 2),
    )
    _exit_sign(c, view, u0 + dw / 2, 1 - dh - 0.04, 1.0)
    colour_name = _pick(rng, ("red", "orange", "red-orange"))
    col = _jitter(rng, HAZARD_COLOURS[colour_name], 6, 2)
    obstacle = _pick(rng, ("crates", "cabinet", "sofa"))
    margin = _u(rng, 0.12, 0.2) * boost
    z0 = max(0.3, _u(rng, 0.72, 0.82) - 0.15 * (boost - 1))
    h = min(0.9, _u(rng, 0.5, 0.62) * boost)
    a, b = max(0.02, u0 - margin), min(0.98, u0 + dw + margin)
    front = _box3d(c, view, f"{colour_name} {obstacle}", a, b, z0, 0.97, h, col)
    (x0, y0), (x1, _), (_, y2) = front[0], front[1], front[2]
    dark = _shade(col, 0.7)
    if obstacle == "crates":
        for k in range(1, 3):
            y = y0 + (y2 - y0) * k / 3
            c.d.line([(x0, y), (x1, y)], fill=dark, width=c.line_w((y2 - y0) * 0.04))
        c.d.line(
            [((x0 + x1) / 2, y0), ((x0 + x1) / 2, y2)], fill=dark, width=c.line_w((y2 - y0) * 0.04)
        )
    else:
        c.d.line(
            [(x0, (y0 + y2) / 2), (x1, (y0 + y2) / 2)], fill=dark, width=c.line_w((y2 - y0) * 0.03)
        )
    spec.objects += ["exit sign", "exit door", f"{colour_name} {obstacle}"]
    spec.details["colour"] = colour_name
    spec.details["obstacle"] = obstacle


# --------------------------------------------------------------------------- non-corridor


def _street(c: _Canvas, rng, spec: SceneSpec) -> None:
    W, d = c.W, c.d
    horizon = W * _u(rng, 0.55, 0.68)
    top, bot = _jitter(rng, (80, 140, 220), 10, 6), _jitter(rng, (170, 205, 240), 8, 4)
    for y in range(int(horizon) + 1):
        t = y / max(horizon, 1)
        d.line(
            [(0, y), (W, y)], fill=_clip([a + (b - a) * t for a, b in zip(top, bot, strict=True)])
        )
    for _ in range(int(rng.integers(1, 4))):
        x, y, r = _u(rng, 0, W), _u(rng, 0.03, 0.2) * W, _u(rng, 0.05, 0.1) * W
        d.ellipse([x - 1.6 * r, y - r * 0.6, x + 1.6 * r, y + r * 0.6], fill=(244, 246, 250))
    x = -_u(rng, 0, 0.1) * W
    while x < W:
        bw = _u(rng, 0.14, 0.3) * W
        bt = horizon - _u(rng, 0.15, 0.45) * W
        col = _jitter(
            rng,
            _pick(rng, ((150, 150, 154), (196, 186, 170), (140, 112, 100), (210, 210, 206))),
            10,
            4,
        )
        d.rectangle([x, bt, x + bw, horizon], fill=col)
        win = _pick(rng, ((70, 90, 120), (200, 214, 230)))
        for wy in np.arange(bt + 0.03 * W, horizon - 0.05 * W, 0.07 * W):
            for wx in np.arange(x + 0.025 * W, x + bw - 0.04 * W, 0.06 * W):
                d.rectangle([wx, wy, wx + 0.03 * W, wy + 0.035 * W], fill=win)
        spec.boxes.append(("building", (max(0, x) / W, bt / W, min(W, x + bw) / W, horizon / W)))
        x += bw + _u(rng, 0.0, 0.04) * W
    walk = horizon + _u(rng, 0.06, 0.1) * W
    d.rectangle([0, horizon, W, walk], fill=_jitter(rng, (176, 176, 172), 6))
    grass = rng.random() < 0.6
    if grass:
        d.rectangle([0, walk, W, walk + 0.06 * W], fill=_jitter(rng, (76, 150, 64), 10, 5))
        walk += 0.06 * W
    d.rectangle([0, walk, W, W], fill=_jitter(rng, (92, 94, 98), 8, 2))
    ly = (walk + W) / 2
    for lx in np.arange(_u(rng, 0, 0.1) * W, W, 0.22 * W):
        d.rectangle([lx, ly - 0.006 * W, lx + 0.1 * W, ly + 0.006 * W], fill=(236, 236, 230))
    for _ in range(int(rng.integers(1, 4))):  # trees
        tx, r = _u(rng, 0.05, 0.95) * W, _u(rng, 0.06, 0.11) * W
        d.rectangle(
            [tx - 0.012 * W, horizon - r, tx + 0.012 * W, horizon + 0.04 * W], fill=(92, 78, 64)
        )
        d.ellipse(
            [tx - r, horizon - 2.6 * r, tx + r, horizon - 0.6 * r],
            fill=_jitter(rng, (60, 136, 58), 12, 6),
        )
        spec.boxes.append(
            (
                "tree",
                ((tx - r) / W, (horizon - 2.6 * r) / W, (tx + r) / W, (horizon + 0.04 * W) / W),
            )
        )
    if rng.random() < 0.6:  # a car
        cx, cw = _u(rng, 0.1, 0.6) * W, _u(rng, 0.25, 0.35) * W
        cy = walk + (W - walk) * 0.35
        col = _pick(rng, ((40, 90, 170), (230, 230, 228), (60, 62, 66), (150, 154, 160)))
        d.rounded_rectangle([cx, cy - cw * 0.28, cx + cw, cy], radius=cw * 0.08, fill=col)
        d.rectangle([cx + cw * 0.2, cy - cw * 0.45, cx + cw * 0.75, cy - cw * 0.26], fill=col)
        for wx in (0.22, 0.78):
            d.ellipse(
                [cx + cw * wx - cw * 0.1, cy - cw * 0.1, cx + cw * wx + cw * 0.1, cy + cw * 0.1],
                fill=(20, 20, 22),
            )
        spec.boxes.append(
            ("car", (cx / W, (cy - cw * 0.45) / W, (cx + cw) / W, (cy + cw * 0.1) / W))
        )
        spec.objects.append("car")
    spec.objects = (
        ["blue sky", "buildings", "road", "trees"]
        + (["grass"] if grass else [])
        + [o for o in spec.objects if o == "car"]
    )
    spec.wall_colour = ""


def _room(c: _Canvas, rng, spec: SceneSpec) -> None:
    W, d = c.W, c.d
    spec.wall_colour = _pick(rng, list(ROOM_WALLS))
    wall = _jitter(rng, ROOM_WALLS[spec.wall_colour], 8, 3)
    fy = W * _u(rng, 0.62, 0.74)
    d.rectangle([0, 0, W, fy], fill=wall)
    spec.floor_colour = _pick(rng, list(ROOM_FLOORS))
    d.rectangle([0, fy, W, W], fill=_jitter(rng, ROOM_FLOORS[spec.floor_colour], 8, 3))
    for y in np.arange(fy + 0.05 * W, W, 0.07 * W):
        d.line([(0, y), (W, y)], fill=_shade(ROOM_FLOORS[spec.floor_colour], 0.88), width=2)
    # window with sky and a tree
    wx0, ww = _u(rng, 0.05, 0.55) * W, _u(rng, 0.3, 0.4) * W
    wy0, wh = _u(rng, 0.06, 0.14) * W, _u(rng, 0.26, 0.34) * W
    d.rectangle([wx0 - 4, wy0 - 4, wx0 + ww + 4, wy0 + wh + 4], fill=(238, 238, 234))
    d.rectangle([wx0, wy0, wx0 + ww, wy0 + wh], fill=_jitter(rng, (110, 170, 230), 10, 6))
    d.ellipse(
        [wx0 + ww * 0.55, wy0 + wh * 0.4, wx0 + ww * 0.95, wy0 + wh * 1.1],
        fill=_jitter(rng, (70, 140, 64), 10, 5),
    )
    d.rectangle([wx0 + ww * 0.55, wy0 + wh, wx0 + ww, wy0 + wh + 12], fill=wall)
    d.rectangle([wx0 + ww, wy0, wx0 + ww + 6, wy0 + wh + 6], fill=(238, 238, 234))
    d.line([(wx0 + ww / 2, wy0), (wx0 + ww / 2, wy0 + wh)], fill=(238, 238, 234), width=4)
    spec.boxes.append(("window", (wx0 / W, wy0 / W, (wx0 + ww) / W, (wy0 + wh) / W)))
    # sofa or bed, blue/green/grey
    furn = _pick(rng, ("sofa", "bed"))
    col = _jitter(rng, _pick(rng, ((60, 100, 160), (50, 130, 120), (90, 140, 80), (70, 110, 140))))
    sx, sw = _u(rng, 0.02, 0.4) * W, _u(rng, 0.45, 0.58) * W
    sy = fy + _u(rng, 0.04, 0.12) * W
    if furn == "sofa":
        d.rounded_rectangle([sx, sy - 0.3 * W, sx + sw, sy - 0.12 * W], radius=8, fill=col)
        d.rectangle([sx, sy - 0.14 * W, sx + sw, sy], fill=_shade(col, 1.12))
        d.rectangle([sx - 0.03 * W, sy - 0.2 * W, sx + 0.03 * W, sy], fill=_shade(col, 0.85))
        d.rectangle(
            [sx + sw - 0.03 * W, sy - 0.2 * W, sx + sw + 0.03 * W, sy], fill=_shade(col, 0.85)
        )
        top = sy - 0.3 * W
    else:
        d.rectangle([sx, sy - 0.32 * W, sx + 0.05 * W, sy], fill=(120, 100, 84))
        d.rectangle([sx, sy - 0.14 * W, sx + sw, sy], fill=(236, 236, 232))
        d.rectangle([sx + 0.2 * sw, sy - 0.15 * W, sx + sw, sy - 0.02 * W], fill=col)
        top = sy - 0.32 * W
    spec.boxes.append((furn, (sx / W, top / W, (sx + sw) / W, sy / W)))
    if rng.random() < 0.7:  # plant
        px = _u(rng, 0.7, 0.9) * W
        d.rectangle(
            [px - 0.04 * W, fy - 0.02 * W, px + 0.04 * W, fy + 0.08 * W], fill=(200, 200, 196)
        )
        d.ellipse([px - 0.09 * W, fy - 0.22 * W, px + 0.09 * W, fy], fill=(58, 132, 62))
        spec.objects.append("plant")
    if rng.random() < 0.5:  # picture frame
        px = _u(rng, 0.62, 0.8) * W if wx0 + ww / 2 < W / 2 else _u(rng, 0.04, 0.12) * W
        py = _u(rng, 0.1, 0.2) * W
        d.rectangle([px, py, px + 0.14 * W, py + 0.1 * W], fill=(60, 60, 60))
        d.rectangle([px + 3, py + 3, px + 0.14 * W - 3, py + 0.1 * W - 3], fill=(120, 170, 200))
        spec.objects.append("picture")
    spec.objects = ["window", furn] + spec.objects


def _screenshot(c: _Canvas, rng, spec: SceneSpec) -> None:
    W, d = c.W, c.d
    dark = rng.random() < 0.3
    bg = (32, 33, 38) if dark else _jitter(rng, (246, 246, 248), 4, 1)
    text = (200, 200, 205) if dark else (150, 150, 156)
    accent = _jitter(rng, _pick(rng, UI_ACCENTS), 8, 4)
    d.rectangle([0, 0, W, W], fill=bg)
    bar = _u(rng, 0.1, 0.15) * W
    d.rectangle([0, 0, W, bar], fill=accent)
    d.rectangle([0.05 * W, bar * 0.4, 0.45 * W, bar * 0.6], fill=(240, 244, 250))
    layout = _pick(rng, ("list", "grid", "chat"))
    y = bar + 0.04 * W
    if layout == "list":
        while y < W * 0.85:
            d.ellipse([0.05 * W, y, 0.15 * W, y + 0.1 * W], fill=_shade(accent, 1.25))
            d.rectangle([0.2 * W, y + 0.01 * W, _u(rng, 0.5, 0.9) * W, y + 0.035 * W], fill=text)
            d.rectangle(
                [0.2 * W, y + 0.06 * W, _u(rng, 0.4, 0.8) * W, y + 0.08 * W],
                fill=_shade(text, 1.15),
            )
            y += 0.14 * W
    elif layout == "grid":
        for gy in np.arange(y, W * 0.8, 0.3 * W):
            for gx in np.arange(0.05 * W, W * 0.9, 0.31 * W):
                d.rectangle(
                    [gx, gy, gx + 0.27 * W, gy + 0.18 * W],
                    fill=_jitter(rng, (110, 170, 225), 12, 6),
                )
                d.rectangle(
                    [gx, gy + 0.12 * W, gx + 0.27 * W, gy + 0.18 * W],
                    fill=_jitter(rng, (70, 150, 80), 12, 6),
                )
                d.rectangle([gx, gy + 0.21 * W, gx + 0.2 * W, gy + 0.24 * W], fill=text)
    else:
        while y < W * 0.8:
            mine = rng.random() < 0.5
            bw = _u(rng, 0.35, 0.65) * W
            x0 = W * 0.95 - bw if mine else W * 0.05
            fill = _shade(accent, 1.1) if mine else ((60, 62, 70) if dark else (226, 228, 232))
            d.rounded_rectangle([x0, y, x0 + bw, y + 0.1 * W], radius=0.03 * W, fill=fill)
            y += 0.14 * W
    d.rectangle([0, W * 0.88, W, W], fill=_shade(bg, 0.95) if not dark else (44, 45, 52))
    for k in range(4):
        x = W * (0.125 + 0.25 * k)
        d.ellipse([x - 0.03 * W, W * 0.91, x + 0.03 * W, W * 0.97], fill=accent if k == 0 else text)
    d.rounded_rectangle([0.6 * W, W * 0.74, 0.92 * W, W * 0.84], radius=0.04 * W, fill=accent)
    spec.objects = [
        "app header",
        "buttons",
        "text",
        {"list": "list items", "grid": "thumbnails", "chat": "chat bubbles"}[layout],
    ]
    spec.details["layout"] = layout
    spec.details["theme"] = "dark" if dark else "light"
    spec.wall_colour = ""


# --------------------------------------------------------------------------- rendering

_KINDS: dict[str, tuple[str, ...]] = {
    "no_risk": ("clear",),
    "low_risk": ("shoes", "plant", "small_box", "small_items"),
    "medium_risk": ("boxes", "bags", "furniture", "clutter"),
    "high_risk": ("ebike_charging", "battery_charging", "flame", "blocked_exit"),
    "non_corridor": ("street", "room", "screenshot"),
}
_SMALL = {"shoes": _shoes, "plant": _plant, "small_box": _small_box}
_LARGE = {"boxes": _big_boxes, "bags": _bags, "furniture": _furniture}
_HIGH = {
    "ebike_charging": _ebike,
    "battery_charging": _batteries,
    "flame": _flame,
    "blocked_exit": _blocked_exit,
}


def _finish(
    c: _Canvas, rng: np.random.Generator, spec: SceneSpec, flat: bool, glow: Box | None = None
) -> Image.Image:
    """Downsample, then apply lighting, an optional flame glow and sensor noise."""
    size = c.size
    img = c.img.resize((size, size), Image.Resampling.BOX)
    arr = np.asarray(img).astype(np.float32)
    xx = np.arange(size, dtype=np.float32)[None, :] / size
    yy = np.arange(size, dtype=np.float32)[:, None] / size
    if flat:
        bright, vign, sigma = 1.0, 0.0, 0.8
    else:
        bright, vign, sigma = _u(rng, 0.8, 1.12), _u(rng, 0.0, 0.25), _u(rng, 1.5, 4.5)
        spec.lighting = "dim" if bright < 0.9 else "bright" if bright > 1.04 else "normal"
    cx, cy = _u(rng, 0.3, 0.7), _u(rng, 0.3, 0.6)
    light = bright * (1.0 - vign * ((xx - cx) ** 2 + (yy - cy) ** 2) / 0.5)
    arr *= light[..., None]
    if glow is not None:
        gx, gy = (glow[0] + glow[2]) / 2, (glow[1] + glow[3]) / 2
        r2 = max(glow[2] - glow[0], glow[3] - glow[1]) ** 2
        w = 0.35 * np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / r2)[..., None]
        arr = arr * (1 - w) + w * np.array([255.0, 150.0, 60.0], np.float32)
    arr += rng.standard_normal(arr.shape, dtype=np.float32) * np.float32(sigma) + np.float32(0.5)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _render_once(label: str, kind: str, rng: np.random.Generator, size: int, boost: float):
    spec = SceneSpec(label=label, kind=kind, size=size)
    c = _Canvas(size)
    if label == "non_corridor":
        {"street": _street, "room": _room, "screenshot": _screenshot}[kind](c, rng, spec)
        spec.boxes = spec.boxes + c.boxes
        return _finish(c, rng, spec, flat=kind == "screenshot"), spec
    f = _u(rng, 0.5, 0.6) if kind == "blocked_exit" else _u(rng, 0.2, 0.34)
    view = _corridor(c, rng, spec, f)
    c.boxes.clear()  # the empty corridor's exit sign is scenery, not an object
    glow = None
    if label == "low_risk":
        names = [kind] if kind != "small_items" else list(_SMALL)
        n = 1 if kind != "small_items" and rng.random() < 0.4 else 2
        chosen = [
            names[k % len(names)] if kind != "small_items" else _pick(rng, names) for k in range(n)
        ]
        if kind == "small_items" and chosen[0] == chosen[-1]:
            chosen = [chosen[0], _pick(rng, [x for x in names if x != chosen[0]])]
        for name, (u0, w, z) in sorted(
            zip(chosen, _place_along_walls(rng, n, (0.16, 0.21), (0.05, 0.3)), strict=True),
            key=lambda t: -t[1][2],
        ):
            _SMALL[name](c, view, rng, u0, z, w)
    elif label == "medium_risk":
        names = [kind] if kind != "clutter" else list(_LARGE)
        n = int(rng.integers(2, 4))
        chosen = [names[0] if kind != "clutter" else _pick(rng, names) for _ in range(n)]
        for name, (u0, w, z) in sorted(
            zip(chosen, _place_along_walls(rng, n, (0.36, 0.48), (0.0, 0.22)), strict=True),
            key=lambda t: -t[1][2],
        ):
            _LARGE[name](c, view, rng, u0, z, w)
    elif label == "high_risk":
        _HIGH[kind](c, view, rng, spec, boost)
        if kind == "flame":
            glow = next(b for n, b in c.boxes if n == "open flame")
    spec.boxes = list(c.boxes)
    if label in ("low_risk", "medium_risk"):
        spec.objects = list(dict.fromkeys(n for n, _ in spec.boxes))
    return _finish(c, rng, spec, flat=False, glow=glow), spec


def render_scene(
    label: str, rng: np.random.Generator, size: int = 112
) -> tuple[Image.Image, SceneSpec]:
    """Render one RGB scene of ``label`` (see the module docstring for the rules)."""
    if label not in RISK_LABELS:
        raise ValueError(f"unknown risk label {label!r}; expected one of {list(RISK_LABELS)}")
    kind = _pick(rng, _KINDS[label])
    if label != "high_risk":
        return _render_once(label, kind, rng, size, 1.0)
    boost = 1.0
    for _ in range(6):  # redraw larger until the colour cue is big enough
        img, spec = _render_once(label, kind, rng, size, boost)
        if hazard_colour_fraction(img) >= HIGH_RISK_MIN_FRACTION:
            break
        boost *= 1.15
    return img, spec


# --------------------------------------------------------------------------- captions

_PHRASES: dict[str, tuple[str, ...]] = {
    "clear": ("an empty floor", "a clear passage", "nothing on the floor"),
    "shoes": ("a pair of shoes by the wall", "shoes along the wall"),
    "plant": ("a small plant by the wall", "a potted plant near the wall"),
    "small_box": ("a small box by the wall", "a small parcel against the wall"),
    "boxes": ("large cardboard boxes narrowing the passage", "piles of cardboard boxes"),
    "bags": ("black rubbish bags on the floor", "rubbish bags narrowing the passage"),
    "furniture": ("old furniture blocking part of the floor", "furniture narrowing the passage"),
    "small_items": ("{objects} along the walls", "{objects} by the wall, passage clear"),
    "clutter": ("{objects} narrowing the passage", "clutter on the floor: {objects}"),
    "ebike_charging": ("a {colour} electric bike charging", "a {colour} e-bike plugged in"),
    "battery_charging": ("{colour} battery packs charging", "e-bike batteries on charge"),
    "flame": ("open flame from burning {fuel}", "a fire on the floor"),
    "blocked_exit": (
        "the exit door blocked by {obstacle}",
        "a blocked fire exit behind {obstacle}",
    ),
}
_NON_CORRIDOR = {
    "street": ("an outdoor street with blue sky and buildings", "a city street with trees"),
    "room": ("a {wall} room with a window and a {furn}", "the inside of a room with a {furn}"),
    "screenshot": ("a screenshot of a phone app", "a {theme} app screen with {layout} layout"),
}
_CORRIDOR_TEMPLATES = (
    "a {wall} corridor with {what}. risk: {label}",
    "photo of a hallway with {wall} walls: {what}. risk level {label}",
    "{what} in a {wall} corridor. label: {label}",
    "corridor inspection, {light} light, {what}. {label}",
)
_OTHER_TEMPLATES = (
    "{what}. risk: {label}",
    "not a corridor: {what}. label: {label}",
    "{what}, no corridor here. {label}",
)


_ARTICLE = {
    "small box": "a small box",
    "pair of shoes": "a pair of shoes",
    "small plant": "a small plant",
    "old sofa": "an old sofa",
    "cabinet": "a cabinet",
    "wardrobe": "a wardrobe",
}


def _and(words: Sequence[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def _obstacle_phrase(colour: str, obstacle: str | None) -> str:
    if obstacle in (None, "crates"):
        return f"{colour} crates"
    return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {obstacle}"


def caption(spec: SceneSpec, rng: np.random.Generator) -> str:
    """A short, varied English caption of the scene ending with its label word."""
    if spec.label == "non_corridor":
        furn = next((o for o in spec.objects if o in ("sofa", "bed")), "sofa")
        what = _pick(rng, _NON_CORRIDOR[spec.kind]).format(
            wall=spec.wall_colour or "plain",
            furn=furn,
            theme=spec.details.get("theme", "light"),
            layout=spec.details.get("layout", "list"),
        )
        return _pick(rng, _OTHER_TEMPLATES).format(what=what, label=spec.label)
    what = _pick(rng, _PHRASES[spec.kind]).format(
        colour=spec.details.get("colour", "red"),
        fuel=spec.details.get("fuel", "rubbish"),
        obstacle=_obstacle_phrase(spec.details.get("colour", "red"), spec.details.get("obstacle")),
        objects=_and([_ARTICLE.get(o, o) for o in spec.objects]) or "a few things",
    )
    return _pick(rng, _CORRIDOR_TEMPLATES).format(
        wall=spec.wall_colour, what=what, label=spec.label, light=spec.lighting
    )


# --------------------------------------------------------------------------- folder dataset

SPLITS = ("train", "val", "test")
CORRUPT_KINDS = ("truncated", "not_an_image", "unknown_label", "missing_file")


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Largest-remainder allocation of ``n`` items to the splits."""
    total = float(sum(fractions))
    raw = [n * f / total for f in fractions]
    counts = [int(math.floor(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    for i, f in enumerate(fractions):  # every non-empty split gets at least one item if possible
        if f > 0 and counts[i] == 0 and max(counts) > 1:
            counts[counts.index(max(counts))] -= 1
            counts[i] += 1
    return counts


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=1)
    elif fmt in ("jpg", "jpeg"):
        img.save(buf, format="JPEG", quality=92)
    elif fmt == "webp":
        img.save(buf, format="WEBP", quality=92)
    else:
        raise ValueError(f"unsupported image_format {fmt!r}; expected png, jpg, jpeg or webp")
    return buf.getvalue()


def write_folder_dataset(
    out_dir: str | Path,
    n_per_label: int,
    seed: int = 0,
    size: int = 112,
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    image_format: str = "png",
    corrupt: int = 0,
) -> dict:
    """Write ``images/<label>_<i>.<ext>`` and ``labels.csv`` (image,label,split) under ``out_dir``.

    Images depend only on (seed, label, i); splits are stratified per label. ``corrupt`` extra
    rows cycle through truncated bytes, a non-image ``.png``, an unknown label and a missing file.
    Returns ``{"counts": {label: {split: n}}, "rows": n, "corrupt": n, "corrupt_kinds": [...]}``.
    """
    if len(split_fractions) != 3 or min(split_fractions) < 0 or sum(split_fractions) <= 0:
        raise ValueError(f"split_fractions must be 3 non-negative numbers, got {split_fractions}")
    fmt = image_format.lower().lstrip(".")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, str]] = []
    counts = {label: dict.fromkeys(SPLITS, 0) for label in RISK_LABELS}
    for li, label in enumerate(RISK_LABELS):
        per_split = _split_counts(n_per_label, split_fractions)
        order = np.random.default_rng([seed, li, 1_000_003]).permutation(n_per_label)
        split_of = np.empty(n_per_label, dtype=object)
        start = 0
        for split, k in zip(SPLITS, per_split, strict=True):
            split_of[order[start : start + k]] = split
            start += k
        for i in range(n_per_label):
            img, _ = render_scene(label, np.random.default_rng([seed, li, i]), size)
            name = f"images/{label}_{i}.{fmt}"
            (out / name).write_bytes(_encode(img, fmt))
            rows.append((name, label, str(split_of[i])))
            counts[label][str(split_of[i])] += 1
    kinds = []
    for k in range(corrupt):
        kind = CORRUPT_KINDS[k % len(CORRUPT_KINDS)]
        kinds.append(kind)
        label = RISK_LABELS[k % len(RISK_LABELS)]
        if kind == "truncated":
            img, _ = render_scene(label, np.random.default_rng([seed, 99, k]), size)
            data = _encode(img, fmt)
            name = f"images/corrupt_{k}_truncated.{fmt}"
            (out / name).write_bytes(data[: max(16, len(data) // 3)])
        elif kind == "not_an_image":
            name = f"images/corrupt_{k}_not_an_image.png"
            (out / name).write_text("this is not an image\n")
        elif kind == "unknown_label":
            img, _ = render_scene(label, np.random.default_rng([seed, 99, k]), size)
            name = f"images/corrupt_{k}_unknown_label.{fmt}"
            (out / name).write_bytes(_encode(img, fmt))
            label = "very_high_risk"
        else:
            name = f"images/corrupt_{k}_missing.{fmt}"
        rows.append((name, label, "train"))
    with open(out / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(("image", "label", "split"))
        writer.writerows(rows)
    return {"counts": counts, "rows": len(rows), "corrupt": corrupt, "corrupt_kinds": kinds}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m hazard.demo.synthetic OUT_DIR --n-per-label 40 --seed 0 [--corrupt 4]``."""
    ap = argparse.ArgumentParser(
        prog="python -m hazard.demo.synthetic", description=__doc__.split("\n")[0]
    )
    ap.add_argument("out_dir")
    ap.add_argument("--n-per-label", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--image-format", default="png")
    ap.add_argument("--corrupt", type=int, default=0)
    a = ap.parse_args(argv)
    result = write_folder_dataset(
        a.out_dir, a.n_per_label, a.seed, a.size, image_format=a.image_format, corrupt=a.corrupt
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
