"""Augment stage: VL-ADAS copies of train samples (lazy; the image ops are in augment_ops).

Needs: `id`, `images` (encoded, already within the pixel budget), `answer`, `split`,
`parent_id`, `_reject_reason`.
Adds: after each kept (`_reject_reason` null) original (`parent_id` null) train row, its copies:
id `<parent>#aug<k>`, `parent_id`, `aug_ops` (e.g. ["scale:0.93:reflect", "rotate:+6.2:reflect",
"crop:0.91", "hflip", "hsv:h+8.0,s0.92,v1.05"]), images re-encoded per
`validation.encode_format` ('auto': JPEG for JPEG sources, PNG otherwise) and `jpeg_quality`,
and a fresh `content_hash`; every other column is the parent's. How many copies and which ops
follow the row's label (`answer`) through `augment.labels`. Every input row, rejected ones
included, passes through unchanged; val/test gain nothing. A copy that fails comes out rejected
(`augment_failed`, stage `augment`).

Each copy is drawn from (seed, sample id, copy index) only, so results do not depend on block
layout or worker. Per row, each image is decoded once and its padding chosen once; per copy,
the ops run and each image is encoded once. Multi-image rows apply the same plan to each image.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from PIL import Image

from hazard.config.data import AugmentConfig, RayConfig, ValidationConfig
from hazard.images import encode_image, storage_format
from hazard.schema import content_hash
from pipelines.augment_ops import (
    Padding,
    apply_plan,
    choose_padding,
    normalize_mode,
    plan_copy,
    step_labels,
)
from pipelines.common import (
    REJECT_DETAIL,
    REJECT_REASON,
    REJECT_STAGE,
    STAGE_SCHEMA,
    map_rows,
    reject,
    stage_table,
)

STAGE = "augment"


def is_augmentable(row: dict[str, Any]) -> bool:
    """A kept, original train row."""
    return (
        row.get(REJECT_REASON) is None
        and row.get("split") == "train"
        and row.get("parent_id") is None
    )


def _decode(data: bytes, cfg: AugmentConfig) -> tuple[Image.Image, str, Padding]:
    """(image in L/RGB/RGBA, its source format, its padding)."""
    with Image.open(io.BytesIO(data)) as img:
        fmt = img.format or ""
        img.load()
        img = normalize_mode(img)
    padding = choose_padding(np.asarray(img), cfg.padding, cfg.pad_flat_std, cfg.pad_texture_grad)
    return img, fmt, padding


def _encode(img: Image.Image, source_format: str, validation: ValidationConfig) -> bytes:
    fmt = storage_format(validation.encode_format, source_format)
    return encode_image(img, fmt, validation.jpeg_quality)


def _copy(row: dict[str, Any], k: int, aug_ops: list[str]) -> dict[str, Any]:
    return {
        **row,
        "id": f"{row['id']}#aug{k}",
        "parent_id": row["id"],
        "aug_ops": aug_ops,
        REJECT_REASON: None,
        REJECT_DETAIL: None,
        REJECT_STAGE: None,
    }


def augment_row(
    row: dict[str, Any], cfg: AugmentConfig, validation: ValidationConfig
) -> list[dict[str, Any]]:
    """The augmented copies of one original train row (a failed copy is rejected)."""
    copies, ops = cfg.rule_for(row.get("answer"))
    plans = [plan_copy(cfg, row["id"], k, ops) for k in range(copies)]
    try:
        sources = [_decode(data, cfg) for data in row["images"]]
    except Exception as exc:  # every copy of an undecodable row fails the same way
        detail = f"cannot decode the parent's images: {type(exc).__name__}: {exc}"
        return [
            reject(_copy(row, k, step_labels(steps)), "augment_failed", detail, stage=STAGE)
            for k, steps in enumerate(plans)
        ]
    pad_modes = [padding.mode for _, _, padding in sources]
    out = []
    for k, steps in enumerate(plans):
        new = _copy(row, k, step_labels(steps, pad_modes))
        try:
            images = [
                _encode(
                    apply_plan(img, steps, padding, cfg.protected_hues, cfg.resample),
                    fmt,
                    validation,
                )
                for img, fmt, padding in sources
            ]
        except Exception as exc:  # a failed copy is a rejected row, never a failed job
            detail = f"{type(exc).__name__}: {exc}"
            out.append(reject(new, "augment_failed", detail, stage=STAGE))
            continue
        new["images"] = images
        new["content_hash"] = content_hash(images)
        out.append(new)
    return out


def augment_rows(
    rows: list[dict[str, Any]], cfg: AugmentConfig, validation: ValidationConfig
) -> list[dict[str, Any]]:
    """Every input row, each kept original train row followed by its copies (no Ray)."""
    out: list[dict[str, Any]] = []
    for row in rows:
        out.append(row)
        if is_augmentable(row):
            out.extend(augment_row(row, cfg, validation))
    return out


def _augment_batch(batch: pa.Table, cfg: AugmentConfig, validation: ValidationConfig) -> pa.Table:
    """map_batches fn: `augment_rows` on a pyarrow batch (as is when it has no train row)."""
    if batch.schema.equals(STAGE_SCHEMA) and not pc.any(pc.equal(batch["split"], "train")).as_py():
        return batch
    return stage_table(augment_rows(batch.to_pylist(), cfg, validation))


def augment(
    ds: ray.data.Dataset,
    cfg: AugmentConfig,
    validation: ValidationConfig,
    ray_cfg: RayConfig,
) -> ray.data.Dataset:
    """Every row of `ds` plus the copies of its kept original train rows (lazy)."""
    if not cfg.enabled:
        return ds
    return map_rows(ds, _augment_batch, ray_cfg, cfg=cfg, validation=validation)
