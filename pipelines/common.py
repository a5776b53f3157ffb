"""What the data stages share: the in-flight row schema, rejection columns and stage accounting.

Between stages, rows carry SAMPLE_SCHEMA plus internal columns:
- `_order` (int64): the row's position in the source listing, for deterministic tie-breaks;
- `_image_uris` (list<string>): where each of the row's images is read from (file:// or s3://);
- `_reject_reason` (string, null = kept), `_reject_detail` (string) and `_reject_stage`
  (string): set by the stage that rejects the row (`reject`). Rejected rows flow on with their
  images dropped; the write stage turns them into quarantine records and counts every row.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import ray

from hazard.config.data import RayConfig
from hazard.schema import QUARANTINE_SCHEMA, SAMPLE_SCHEMA

ORDER = "_order"
IMAGE_URIS = "_image_uris"
REJECT_REASON = "_reject_reason"
REJECT_DETAIL = "_reject_detail"
REJECT_STAGE = "_reject_stage"

STAGE_SCHEMA = pa.schema(
    [f.with_nullable(True) for f in SAMPLE_SCHEMA]
    + [
        pa.field(ORDER, pa.int64()),
        pa.field(IMAGE_URIS, pa.list_(pa.string())),
        pa.field(REJECT_REASON, pa.string()),
        pa.field(REJECT_DETAIL, pa.string()),
        pa.field(REJECT_STAGE, pa.string()),
    ]
)
"""SAMPLE_SCHEMA (all nullable while in flight) plus the internal columns."""


def stage_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (dicts with STAGE_SCHEMA keys; missing keys are null) as a STAGE_SCHEMA table."""
    return pa.Table.from_pylist(rows, schema=STAGE_SCHEMA)


def reject(row: dict[str, Any], reason: str, detail: str, stage: str = "") -> dict[str, Any]:
    """`row` marked as rejected by `stage` (a new dict; the first rejection wins).

    Rejected rows keep flowing with their images dropped, so that the end of the pipeline can
    count every row by the stage and reason that rejected it.
    """
    if row.get(REJECT_REASON):
        return row
    return {**row, "images": [], REJECT_REASON: reason, REJECT_DETAIL: detail, REJECT_STAGE: stage}


def quarantine_table(records: list[dict[str, Any]]) -> pa.Table:
    """Quarantine records as a QUARANTINE_SCHEMA table."""
    return pa.Table.from_pylist(records, schema=QUARANTINE_SCHEMA)


def map_rows(ds: ray.data.Dataset, fn, ray_cfg: RayConfig, **fn_kwargs) -> ray.data.Dataset:
    """Apply a stage's pyarrow batch function with the job's batch size and CPUs per task."""
    return ds.map_batches(
        fn,
        batch_format="pyarrow",
        batch_size=ray_cfg.batch_size,
        fn_kwargs=fn_kwargs,
        num_cpus=ray_cfg.num_cpus,
    )
