"""What the data stages share: the in-flight row schema, rejection columns and stage accounting.

Between stages, rows carry SAMPLE_SCHEMA plus internal columns:
- `_order` (int64): the row's position in the source listing, for deterministic tie-breaks;
- `_image_uris` (list<string>): where each of the row's images is read from (file:// or s3://);
- `_box_units` (string): `"pixels"` when the row's box answer is in pixels of its first image
  (FLARE's detection answers), set by import and cleared by decode, which rewrites the answer in
  0-1000 (pipelines/box_units.py); null: the answer is in the stored 0-1000 space already;
- `_reject_reason` (string, null = kept), `_reject_detail` (string) and `_reject_stage`
  (string): set by the stage that rejects the row (`reject`). Rejected rows flow on with their
  images dropped; the write stage turns them into quarantine records and counts every row.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import ray

from hazard.config.data import RayConfig
from hazard.core.schema import QUARANTINE_SCHEMA, SAMPLE_SCHEMA

ORDER = "_order"
IMAGE_URIS = "_image_uris"
BOX_UNITS = "_box_units"
PIXELS = "pixels"
REJECT_REASON = "_reject_reason"
REJECT_DETAIL = "_reject_detail"
REJECT_STAGE = "_reject_stage"

STAGE_SCHEMA = pa.schema(
    [f.with_nullable(True) for f in SAMPLE_SCHEMA]
    + [
        pa.field(ORDER, pa.int64()),
        pa.field(IMAGE_URIS, pa.list_(pa.string())),
        pa.field(BOX_UNITS, pa.string()),
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


RESOURCE_REFRESH_S = 0.1
"""How often Ray Data's executor re-reads the cluster's resources (Ray 2.60: every 1 s)."""
COMPLETION_POLL_S = 0.02
"""How long Ray Data's executor waits for task completions per loop (Ray 2.60: 0.1 s)."""


def tune_ray_data_executor() -> None:
    """Two timings of Ray Data's streaming executor, for executions started in this process.

    Measured on 2 CPUs (bench/bench_ray_data_dispatch.py: 10 tasks of 1 s, 6.6 s -> 5.4 s;
    docs/benchmarks.md), both in Ray 2.60's `ray.data._internal` (private, so each is set only
    if it exists; tests/unit/test_stage_common.py checks both exist on the pinned Ray):
    - each execution (each `materialize`) starts with a resource limit of zero, because the
      executor asks the autoscaling coordinator actor for its share asynchronously and reads
      the answer at its next refresh, `ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S` later;
      until then its liveness rule runs one task at a time, leaving the other cores idle for
      the first 1-1.7 s of every stage. Refreshing every 0.1 s costs one small actor call per
      refresh, at most one in flight.
    - its loop waits `WAIT_FOR_TASK_COMPLETION_TIMEOUT_S` for completions before it hands a
      freed core the next task: 0.1 s left each core idle ~0.13 s per task; 0.02 s cuts that to
      ~0.05 s for ~0.03 of a core more in the driver.
    """
    from ray.data._internal.execution import streaming_executor_state
    from ray.data._internal.execution.resource_manager import ResourceManager

    if hasattr(ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S"):
        ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S = RESOURCE_REFRESH_S
    if hasattr(streaming_executor_state, "WAIT_FOR_TASK_COMPLETION_TIMEOUT_S"):
        streaming_executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S = COMPLETION_POLL_S


def map_rows(ds: ray.data.Dataset, fn, ray_cfg: RayConfig, **fn_kwargs) -> ray.data.Dataset:
    """Apply a stage's pyarrow batch function with the job's batch size and CPUs per task."""
    return ds.map_batches(
        fn,
        batch_format="pyarrow",
        batch_size=ray_cfg.batch_size,
        fn_kwargs=fn_kwargs,
        num_cpus=ray_cfg.num_cpus,
    )


def map_with_actors(ds: ray.data.Dataset, actor: type, kwargs: dict[str, Any], pool: Any):
    """`ds` mapped by a fixed pool of `pool.num_actors` instances of `actor` (built with
    `kwargs`; each holds a model), `pool.batch_size` rows per call in pyarrow format, each actor
    reserving `pool.cpus_per_actor` and `pool.gpus_per_actor` (a job config that has those
    four fields): how batch scoring and evaluation score rows."""
    return ds.map_batches(
        actor,
        fn_constructor_kwargs=kwargs,
        batch_size=pool.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=pool.num_actors),
        num_cpus=pool.cpus_per_actor,
        num_gpus=pool.gpus_per_actor or None,
    )
