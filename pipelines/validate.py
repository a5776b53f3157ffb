"""Validate stage: decode every image and drop the ones training must not see.

Needs: `images`, `content_hash`, `split`, `_order` (rows from import, rejected ones removed).
Adds: `_reject_reason`/`_reject_detail` on rejected rows; kept rows pass through byte for byte
(nothing is re-encoded).

Per image, inside map_batches (PIL: identify, verify, then a full load):
`too_many_bytes` (encoded size over max_bytes), `undecodable` (not an image, truncated, corrupt),
`unsupported_format` (decodes but is not an allowed format), `too_small` / `too_large` (a side
outside [min_side, max_side], or a decompression bomb). Then, over the whole dataset,
`duplicate`: rows whose content_hash was already seen; the row with the lowest `_order` (first
in the source listing) is kept, whatever its split, so a copy in another split (a leak) is
rejected.
"""

from __future__ import annotations

import pyarrow as pa
import ray
from ray.data.expressions import col

from hazard.config.data import RayConfig, ValidationConfig
from hazard.images import ImageRejected, decode_limited
from pipelines.common import ORDER, REJECT_REASON, map_rows, reject, stage_table


def check_image(data: bytes, rules: ValidationConfig) -> tuple[str, str] | None:
    """(reason, detail) if the encoded image breaks a rule, None if it is acceptable."""
    try:
        decode_limited(
            data,
            rules.max_bytes,
            allowed_formats=rules.allowed_formats,
            min_side=rules.min_side,
            max_side=rules.max_side,
        )
    except ImageRejected as exc:
        return exc.reason, str(exc)
    return None


def _check_batch(batch: pa.Table, rules: ValidationConfig) -> pa.Table:
    """map_batches fn: mark rows whose images break a rule."""
    out = []
    for row in batch.to_pylist():
        if not row["images"]:
            row = reject(row, "undecodable", "row has no image")
        for i, data in enumerate(row["images"]):
            problem = check_image(data, rules)
            if problem is not None:
                reason, detail = problem
                prefix = f"image {i}: " if len(row["images"]) > 1 else ""
                row = reject(row, reason, prefix + detail)
                break
        out.append(row)
    return stage_table(out)


def _mark_duplicates(batch: pa.Table, keep: dict[str, tuple[int, str, str]]) -> pa.Table:
    """map_batches fn: reject rows whose hash is kept on an earlier (lower `_order`) row."""
    out = []
    for row in batch.to_pylist():
        first = keep.get(row["content_hash"])
        if row[REJECT_REASON] is None and first is not None and first[0] != row[ORDER]:
            row = reject(row, "duplicate", f"same content as {first[1]} ({first[2]})")
        out.append(row)
    return stage_table(out)


def first_of_each_hash(ds: ray.data.Dataset) -> dict[str, tuple[int, str, str]]:
    """{content_hash: (_order, id, split) of the first row} for hashes seen more than once."""
    first: dict[str, tuple[int, str, str]] = {}
    dup: set[str] = set()
    kept = ds.filter(expr=col(REJECT_REASON).is_null()).select_columns(
        ["content_hash", ORDER, "id", "split"]
    )
    for batch in kept.iter_batches(batch_format="pyarrow", batch_size=None):
        for h, order, id_, split in zip(
            *(batch[c].to_pylist() for c in ("content_hash", ORDER, "id", "split")), strict=True
        ):
            if h in first:
                dup.add(h)
                if order < first[h][0]:
                    first[h] = (order, id_, split)
            else:
                first[h] = (order, id_, split)
    return {h: first[h] for h in sorted(dup)}


def validate(ds: ray.data.Dataset, rules: ValidationConfig, ray_cfg: RayConfig) -> ray.data.Dataset:
    """Decode and check every image in parallel, then reject duplicates (materialized)."""
    checked = map_rows(ds, _check_batch, ray_cfg, rules=rules).materialize()
    keep = first_of_each_hash(checked)
    if not keep:
        return checked
    return map_rows(checked, _mark_duplicates, ray_cfg, keep=keep).materialize()
