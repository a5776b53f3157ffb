"""Augment stage: geometric copies of train samples.

Needs: `id`, `images`, `split`, `parent_id` (validated rows; rejected ones removed).
Adds: for each original train row, `copies` new rows with id `<parent>#aug<k>`, parent_id, aug_ops
(e.g. ["hflip", "rotate:+6.2", "crop:0.91"]), PNG-encoded images and a fresh content_hash; every
other column is the parent's. Originals (all splits) pass through unchanged; val/test gain
nothing. A copy whose images fail to augment comes out rejected (`augment_failed`).

Each copy is drawn from (seed, sample id, copy index) only, so results do not depend on block
layout or worker. Ops apply in the configured order: hflip (probability 0.5, or always when it
is the only op), rotate (angle uniform in ±rotate_max_deg, counter-clockwise positive, corners
filled by reflecting the image's edges) and crop (area fraction uniform in [crop_min_area, 1],
aspect kept, random position, resized back to the original size). The pure PIL functions below
are usable without Ray.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from PIL import Image

from hazard.config.data import AugmentConfig, RayConfig
from hazard.schema import content_hash
from pipelines.common import REJECT_DETAIL, REJECT_REASON, map_rows, reject, stage_table

Step = tuple[str, tuple[float, ...]]
"""One planned op: (name, parameters), e.g. ("rotate", (6.2,)) or ("crop", (0.91, fx, fy))."""


def copy_rng(seed: int, sample_id: str, copy: int) -> np.random.Generator:
    """The random generator of one augmented copy, from (seed, id, copy index) only."""
    digest = hashlib.sha256(f"{seed}\x1f{sample_id}\x1f{copy}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def plan_copy(cfg: AugmentConfig, sample_id: str, copy: int) -> list[Step]:
    """The ops of copy `copy` of `sample_id`, with their parameters, in application order."""
    u_flip, u_angle, u_area, fx, fy = copy_rng(cfg.seed, sample_id, copy).random(5)
    min_area = cfg.crop_min_area
    steps: list[Step] = []
    for op in cfg.ops:
        if op == "hflip" and (u_flip < 0.5 or len(cfg.ops) == 1):
            steps.append(("hflip", ()))
        elif op == "rotate":
            angle = round((2.0 * u_angle - 1.0) * cfg.rotate_max_deg, 1)
            steps.append(("rotate", (angle,)))
        elif op == "crop":
            area = round(min_area + u_area * (1.0 - min_area), 2)
            area = min(1.0, max(area, math.ceil(min_area * 100 - 1e-9) / 100))
            steps.append(("crop", (area, float(fx), float(fy))))
    return steps


def step_labels(steps: Sequence[Step]) -> list[str]:
    """Provenance strings of a plan: ["hflip", "rotate:+6.2", "crop:0.91"]."""
    labels = []
    for name, params in steps:
        if name == "rotate":
            labels.append(f"rotate:{params[0]:+.1f}")
        elif name == "crop":
            labels.append(f"crop:{params[0]:.2f}")
        else:
            labels.append(name)
    return labels


def normalize_mode(img: Image.Image) -> Image.Image:
    """`img` in L, RGB or RGBA (alpha kept when the source has any)."""
    if img.mode in ("L", "RGB", "RGBA"):
        return img
    if img.mode in ("LA", "PA", "RGBa", "La") or "transparency" in img.info:
        return img.convert("RGBA")
    return img.convert("RGB")


def hflip(img: Image.Image) -> Image.Image:
    """Mirror left-right."""
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def rotate(img: Image.Image, angle: float) -> Image.Image:
    """Rotate by `angle` degrees (counter-clockwise) about the centre, same size.

    The corners the rotation uncovers are filled from the image itself: the image is padded by
    reflecting its edges, rotated, and the centre cut back out, so no flat colour appears.
    """
    img = normalize_mode(img)
    if angle == 0:
        return img.copy()
    w, h = img.size
    pad = math.ceil(max(w, h) / 2 * abs(math.sin(math.radians(angle)))) + 2
    arr = np.asarray(img)
    widths = ((pad, pad), (pad, pad)) + ((0, 0),) * (arr.ndim - 2)
    padded = Image.fromarray(np.pad(arr, widths, mode="reflect"))
    turned = padded.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False)
    return turned.crop((pad, pad, pad + w, pad + h))


def crop_resize(img: Image.Image, area: float, fx: float, fy: float) -> Image.Image:
    """Cut a window of `area` × the image area (same aspect) at relative position (fx, fy) in
    [0, 1]², and resize it back to the original size."""
    img = normalize_mode(img)
    w, h = img.size
    scale = math.sqrt(area)
    cw, ch = max(1, round(w * scale)), max(1, round(h * scale))
    x0, y0 = round(fx * (w - cw)), round(fy * (h - ch))
    window = img.crop((x0, y0, x0 + cw, y0 + ch))
    return window.resize((w, h), resample=Image.Resampling.BICUBIC)


def apply_steps(img: Image.Image, steps: Sequence[Step]) -> Image.Image:
    """Apply a plan to a decoded image."""
    img = normalize_mode(img)
    for name, params in steps:
        if name == "hflip":
            img = hflip(img)
        elif name == "rotate":
            img = rotate(img, params[0])
        elif name == "crop":
            img = crop_resize(img, *params)
        else:
            raise ValueError(f"unknown augmentation op {name!r}")
    return img


def encode_png(img: Image.Image) -> bytes:
    """PNG bytes of `img` (deterministic: no metadata)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def augment_bytes(data: bytes, steps: Sequence[Step]) -> bytes:
    """Decode an encoded image, apply a plan, and return PNG bytes."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return encode_png(apply_steps(img, steps))


def augment_row(row: dict[str, Any], cfg: AugmentConfig) -> list[dict[str, Any]]:
    """The augmented copies of one original train row (possibly rejected `augment_failed`)."""
    copies = []
    for k in range(cfg.copies):
        steps = plan_copy(cfg, row["id"], k)
        new = {
            **row,
            "id": f"{row['id']}#aug{k}",
            "parent_id": row["id"],
            "aug_ops": step_labels(steps),
            REJECT_REASON: None,
            REJECT_DETAIL: None,
        }
        try:
            images = [augment_bytes(data, steps) for data in row["images"]]
        except Exception as exc:  # a failed copy is a rejected row
            new = reject({**new, "images": []}, "augment_failed", f"{type(exc).__name__}: {exc}")
        else:
            new["images"] = images
            new["content_hash"] = content_hash(images)
        copies.append(new)
    return copies


def _augment_batch(batch: pa.Table, cfg: AugmentConfig) -> pa.Table:
    """map_batches fn: every input row, each followed by its copies when it is train."""
    out = []
    for row in batch.to_pylist():
        out.append(row)
        if row["split"] == "train" and row["parent_id"] is None and row[REJECT_REASON] is None:
            out.extend(augment_row(row, cfg))
    return stage_table(out)


def augment(ds: ray.data.Dataset, cfg: AugmentConfig, ray_cfg: RayConfig) -> ray.data.Dataset:
    """Originals plus augmented train copies (materialized); a no-op when copies == 0."""
    if cfg.copies == 0:
        return ds
    return map_rows(ds, _augment_batch, ray_cfg, cfg=cfg).materialize()
