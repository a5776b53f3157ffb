"""The data preparation pipeline: import -> validate -> augment -> write.

Each stage's output is split into kept rows (the next stage's input) and rejected rows
(quarantine records); `prepare` counts both so that every stage satisfies
rows_in + rows_added == rows_out + rejected, and `write_outputs` checks it.
Needs a running Ray (ray.init) in the caller.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import ray
from ray.data.expressions import col

from hazard.config.data import DataConfig
from pipelines.augment import augment
from pipelines.common import StageStats, count_reasons, split_rejected
from pipelines.import_folder import import_folder, load_listing
from pipelines.validate import validate
from pipelines.write import write_outputs

log = logging.getLogger(__name__)


def _finish(
    name: str,
    output: ray.data.Dataset,
    rows_in: int,
    t: float,
    records: list[dict[str, Any]],
    stages: list[StageStats],
    rows_added: int = 0,
) -> ray.data.Dataset:
    """Split a stage's output, record its stats and log one line; the kept rows."""
    kept, rejected = split_rejected(output, name)
    stats = StageStats(
        name,
        rows_in=rows_in,
        rows_out=kept.count(),
        rows_added=rows_added,
        rejected=count_reasons(rejected),
        seconds=time.perf_counter() - t,
    )
    records.extend(rejected)
    stages.append(stats)
    reasons = ", ".join(f"{k}={v}" for k, v in stats.rejected.items()) or "-"
    added = f", +{rows_added} added" if rows_added else ""
    log.info(
        "stage %-8s in=%d out=%d%s rejected=%d (%s) %.1fs",
        name,
        rows_in,
        stats.rows_out,
        added,
        len(rejected),
        reasons,
        stats.seconds,
    )
    return kept


def prepare(config: DataConfig) -> dict[str, Any]:
    """Run the pipeline on `config`; returns the lineage report (also in lineage.json)."""
    started_at = datetime.now(UTC)
    t0 = time.perf_counter()
    records: list[dict[str, Any]] = []
    stages: list[StageStats] = []

    t = time.perf_counter()
    listing = load_listing(config)
    imported = import_folder(listing, config).materialize()
    kept = _finish("import", imported, listing.num_rows, t, records, stages)

    t = time.perf_counter()
    validated = validate(kept, config.validation, config.ray)
    kept = _finish("validate", validated, stages[-1].rows_out, t, records, stages)

    t = time.perf_counter()
    augmented = augment(kept, config.augment, config.ray)
    added = augmented.filter(expr=col("parent_id").is_not_null()).count()
    kept = _finish("augment", augmented, stages[-1].rows_out, t, records, stages, added)

    report = write_outputs(kept, records, stages, config, started_at, t0)
    write = report["stages"][-1]
    log.info(
        "stage %-8s in=%d out=%d -> %s %.1fs",
        "write",
        write["rows_in"],
        write["rows_out"],
        report["output_dir"],
        write["seconds"],
    )
    return report
