"""Augment stage: VL-ADAS copies of train samples (lazy; the ops are `hazard.augment`'s registry).

Needs: `id`, `images` (encoded, already within the pixel budget), `answer`, `split`,
`parent_id`, `_reject_reason`.
Adds: after each kept (`_reject_reason` null) original (`parent_id` null) train row, its copies:
id `<parent>#aug<k>`, `parent_id`, `aug_ops` (e.g. ["scale:0.93:reflect", "rotate:+6.2:reflect",
"crop:0.91", "hflip", "hsv:h+8.0,s0.92,v1.05"]), images re-encoded per
`validation.encode_format` ('auto': JPEG for JPEG sources, PNG otherwise) and `jpeg_quality`,
a fresh `content_hash`, and the answer its ops map the parent's to (the built-in ops keep it);
every other column is the parent's. How many copies and which ops follow the row's label
(`answer`) through `augment.labels`. Every input row, rejected ones included, passes through
unchanged; val/test and unlabelled rows (answer None) gain nothing, nor do rows of a boxes
task (`grounding`, `instance_detection`: no op maps boxes). A copy that fails comes out
rejected (`augment_failed`, stage `augment`).

Each copy is drawn from (seed, sample id, copy index) only, so results do not depend on block
layout or worker. Per row, each image is decoded once and its padding chosen once; per copy,
the ops run and each image is encoded once. Multi-image rows apply the same plan to each image.

Recipes (`augment.store: recipes`). The copy rows are the same, but the write stage stores them
without image bytes (empty `images`, the parent's `content_hash`); the stage renders them only
when a later stage needs the pixels (the consistency filter), else it only decodes the parent
to choose the padding that `aug_ops` records. The training ingest rebuilds them with
`apply_recipes`: it re-plans each copy from (augment config in lineage.json, parent id, copy
index, the label's ops), checks the plan's labels equal the row's `aug_ops` (`RecipeError`
otherwise) and renders it with `render_copy`, the function that makes the stored copies, so
the bytes are identical to what `store: images` writes.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from PIL import Image

from hazard.augment.geometry import Padding, choose_padding, normalize_mode
from hazard.config.data import AugmentConfig, RayConfig, ValidationConfig
from hazard.core.schema import content_hash
from hazard.core.tasks import get_task
from hazard.infra.images import encode_image, storage_format
from pipelines.augment_plan import apply_plan, plan_answer, plan_copy, step_labels
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
    """A kept, original, labelled train row (unlabelled rows, answer None, never are) whose
    task's answer is not boxes: the geometric ops move what a box points at and no op maps
    boxes (rows of a `task: mixed` job are judged by their own task)."""
    return (
        row.get(REJECT_REASON) is None
        and row.get("split") == "train"
        and row.get("parent_id") is None
        and row.get("answer") is not None
        and get_task(row["task"]).answer.kind != "boxes"
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


class RecipeError(ValueError):
    """A recipe row cannot be rebuilt as recorded (wrong parent, or a re-planned copy whose ops
    differ from its `aug_ops`: the augment config is not the one that planned it)."""


def _copy(row: dict[str, Any], k: int, steps: list, pad_modes: list[str]) -> dict[str, Any]:
    return {
        **row,
        "id": f"{row['id']}#aug{k}",
        "parent_id": row["id"],
        "answer": plan_answer(steps, row.get("answer")),
        "aug_ops": step_labels(steps, pad_modes),
        REJECT_REASON: None,
        REJECT_DETAIL: None,
        REJECT_STAGE: None,
    }


def copy_index(copy_id: str, parent_id: str) -> int:
    """k of a copy id `<parent_id>#aug<k>` (RecipeError when it is not one)."""
    prefix = f"{parent_id}#aug"
    tail = copy_id[len(prefix) :] if copy_id.startswith(prefix) else ""
    if not tail.isdigit():
        raise RecipeError(f"{copy_id!r} is not a copy id of parent {parent_id!r}")
    return int(tail)


def render_copy(
    sources: list[tuple[Image.Image, str, Padding]],
    steps: list,
    cfg: AugmentConfig,
    validation: ValidationConfig,
) -> list[bytes]:
    """The encoded images of one copy: `steps` applied to each decoded source image."""
    return [
        _encode(apply_plan(img, steps, padding, cfg.protected_hues, cfg.resample), fmt, validation)
        for img, fmt, padding in sources
    ]


def augment_row(
    row: dict[str, Any],
    cfg: AugmentConfig,
    validation: ValidationConfig,
    render: bool | None = None,
) -> list[dict[str, Any]]:
    """The augmented copies of one original train row (a failed copy is rejected). `render`
    (default: `cfg.store == "images"`) False: recipe rows, `aug_ops` and no images."""
    render = cfg.store == "images" if render is None else render
    copies, ops = cfg.rule_for(row.get("answer"))
    plans = [plan_copy(cfg, row["id"], k, ops) for k in range(copies)]
    try:
        sources = [_decode(data, cfg) for data in row["images"]]
    except Exception as exc:  # every copy of an undecodable row fails the same way
        detail = f"cannot decode the parent's images: {type(exc).__name__}: {exc}"
        return [
            reject(_copy(row, k, steps, []), "augment_failed", detail, stage=STAGE)
            for k, steps in enumerate(plans)
        ]
    pad_modes = [padding.mode for _, _, padding in sources]
    recipes = cfg.store == "recipes"
    out = []
    for k, steps in enumerate(plans):
        new = _copy(row, k, steps, pad_modes)
        if not render:
            new["images"] = []
            out.append(new)
            continue
        try:
            images = render_copy(sources, steps, cfg, validation)
        except Exception as exc:  # a failed copy is a rejected row, never a failed job
            detail = f"{type(exc).__name__}: {exc}"
            out.append(reject(new, "augment_failed", detail, stage=STAGE))
            continue
        new["images"] = images
        if not recipes:  # a recipe row keeps its parent's hash: its images are not stored
            new["content_hash"] = content_hash(images)
        out.append(new)
    return out


def apply_recipes(
    parent: dict[str, Any],
    copies: list[tuple[str, list[str]]],
    cfg: AugmentConfig,
    validation: ValidationConfig,
) -> list[list[bytes]]:
    """The images of recipe rows `copies` ([(copy id, aug_ops)]) of `parent` (a row with `id`,
    `answer` and its stored `images`), each re-planned and checked against its `aug_ops`."""
    _, ops = cfg.rule_for(parent.get("answer"))
    sources = [_decode(bytes(data), cfg) for data in parent["images"]]
    pad_modes = [padding.mode for _, _, padding in sources]
    out = []
    for copy_id, aug_ops in copies:
        steps = plan_copy(cfg, parent["id"], copy_index(copy_id, parent["id"]), ops)
        planned = step_labels(steps, pad_modes)
        if planned != list(aug_ops):
            raise RecipeError(
                f"copy {copy_id!r}: the augment config re-plans {planned}, the row records "
                f"{list(aug_ops)}"
            )
        out.append(render_copy(sources, steps, cfg, validation))
    return out


def augment_rows(
    rows: list[dict[str, Any]],
    cfg: AugmentConfig,
    validation: ValidationConfig,
    render: bool | None = None,
) -> list[dict[str, Any]]:
    """Every input row, each kept original train row followed by its copies (no Ray)."""
    out: list[dict[str, Any]] = []
    for row in rows:
        out.append(row)
        if is_augmentable(row):
            out.extend(augment_row(row, cfg, validation, render))
    return out


def _augment_batch(
    batch: pa.Table, cfg: AugmentConfig, validation: ValidationConfig, render: bool | None
) -> pa.Table:
    """map_batches fn: `augment_rows` on a pyarrow batch (as is when it has no train row)."""
    if batch.schema.equals(STAGE_SCHEMA) and not pc.any(pc.equal(batch["split"], "train")).as_py():
        return batch
    return stage_table(augment_rows(batch.to_pylist(), cfg, validation, render))


def augment(
    ds: ray.data.Dataset,
    cfg: AugmentConfig,
    validation: ValidationConfig,
    ray_cfg: RayConfig,
    render: bool | None = None,
) -> ray.data.Dataset:
    """Every row of `ds` plus the copies of its kept original train rows (lazy); `render` as
    in `augment_row` (True with recipes when a later stage needs the copies' pixels)."""
    if not cfg.enabled:
        return ds
    return map_rows(ds, _augment_batch, ray_cfg, cfg=cfg, validation=validation, render=render)


def _rebuild_batch(
    batch: pa.Table, recipes: dict, cfg: AugmentConfig, validation: ValidationConfig
) -> pa.Table:
    """map_batches fn of `rebuild_copies`: the batch's originals, each followed by its copies
    (its recipe rows with their images applied); the batch's own recipe rows are dropped."""
    out: list[dict[str, Any]] = []
    for row in batch.to_pylist():
        if row["parent_id"] is not None:
            continue
        out.append(row)
        mine = recipes.get(row["id"], [])
        if mine:
            pairs = [(r["id"], r["aug_ops"]) for r in mine]
            for rec, images in zip(mine, apply_recipes(row, pairs, cfg, validation), strict=True):
                out.append({**rec, "images": images})
    return pa.Table.from_pylist(out, schema=batch.schema)


def rebuild_copies(
    ds: ray.data.Dataset, cfg: AugmentConfig, validation: ValidationConfig
) -> ray.data.Dataset:
    """A split written with `augment.store: recipes` (`ds`: its shards), with every recipe row
    rebuilt from its parent's bytes (lazy): the same rows, the copies' images applied.

    The recipe rows' columns other than `images` (small) are collected on the driver,
    {parent id: [recipe rows]}; one map over the originals emits each followed by its copies,
    so no shuffle or join of the image bytes is needed and rows out = rows in. `cfg` and
    `validation` are the data job's (lineage.json's config). RecipeError when a recipe row's
    parent is not in `ds` or its re-planned ops differ from its `aug_ops`."""
    light = [n for n in ds.schema().names if n != "images"]
    recipes: dict[str, list[dict[str, Any]]] = {}
    originals: set[str] = set()
    for batch in ds.select_columns(light).iter_batches(batch_format="pyarrow", batch_size=None):
        for row in batch.to_pylist():
            if row["parent_id"] is None:
                originals.add(row["id"])
            else:
                recipes.setdefault(row["parent_id"], []).append(row)
    orphans = sorted(set(recipes) - originals)
    if orphans:
        raise RecipeError(
            f"{len(orphans)} parent(s) of recipe rows are not in the split, e.g. {orphans[:3]}"
        )
    for rows in recipes.values():
        rows.sort(key=lambda r: copy_index(r["id"], r["parent_id"]))
    return ds.map_batches(
        _rebuild_batch,
        batch_format="pyarrow",
        batch_size=None,
        fn_kwargs={"recipes": recipes, "cfg": cfg, "validation": validation},
    )
