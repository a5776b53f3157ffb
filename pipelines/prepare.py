"""The data preparation pipeline: import -> probe -> dedup/split -> decode -> augment -> filter
-> write.

Rows stream through the stages; a stage that rejects a row marks it (`reject`) and later stages
pass it on untouched, so the write stage counts every row by the stage and reason that
rejected it. Dedup and split assignment need every row's content hash and answer, so the probe
(read, hash and check each image, keep no pixels) is materialized first: light rows only. Then
one streaming pass decodes, augments, filters and writes, each task writing the shards of its
own rows, and only the rows' light columns come back for the lineage: no stage holds the data
set's images at once, and Ray Data starts one heavy execution, not two. Needs a running Ray
(ray.init) in the caller.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from hazard.config.data import MIXED, DataConfig
from hazard.core.tasks import get_task
from hazard.infra.storage import absolute
from pipelines.augment import augment
from pipelines.common import tune_ray_data_executor
from pipelines.consistency import consistency_filter
from pipelines.decode import decode_stage, probe_stage
from pipelines.dedup_split import dedup_and_split
from pipelines.sources import read_source
from pipelines.write import clear_outputs, light_rows, write_outputs, write_shards

log = logging.getLogger(__name__)


def prepare(config: DataConfig) -> dict[str, Any]:
    """Run the pipeline on `config`; returns the lineage report (also in lineage.json).

    Raises SourceError (pipelines.sources) when the source as a whole is unusable and
    LineageError (pipelines.write) when the row accounting does not add up.
    """
    started_at = datetime.now(UTC)
    t0 = time.perf_counter()
    tune_ray_data_executor()
    # local paths are the caller's: make them absolute before tasks run in other directories
    source = config.source.model_copy(update={"uri": absolute(config.source.uri)})
    config = config.model_copy(update={"source": source, "output_dir": absolute(config.output_dir)})
    timings: dict[str, float] = {}
    task = None if config.task == MIXED else get_task(config.task)  # mixed: per row

    t = time.perf_counter()
    probed = probe_stage(read_source(config), config).materialize()
    timings["import_probe"] = time.perf_counter() - t
    log.info("import + probe: %d rows in %.1fs", probed.count(), timings["import_probe"])

    t = time.perf_counter()
    rows, decisions = dedup_and_split(probed, config.split, config.ray)
    timings["dedup_split"] = time.perf_counter() - t
    log.info(
        "dedup + split: %d duplicates, %d splits assigned, %d label conflicts",
        len(decisions.duplicates),
        len(decisions.splits),
        len(decisions.conflicts),
    )

    t = time.perf_counter()
    clear_outputs(config)
    decoded = decode_stage(rows, config)
    # recipe rows are rendered only when the consistency filter scores their pixels (the write
    # stage then stores them without); else they carry aug_ops only
    render = config.augment.store == "images" or config.consistency.enabled
    augmented = augment(decoded, config.augment, config.validation, config.ray, render)
    filtered = consistency_filter(augmented, config.consistency, task, config.ray)
    light = write_shards(filtered, config).materialize()
    timings["decode_augment_filter_write"] = time.perf_counter() - t
    log.info(
        "decode + augment + filter + write: %d rows in %.1fs",
        light.count(),
        timings["decode_augment_filter_write"],
    )

    t = time.perf_counter()
    final = light_rows(light.iter_batches(batch_format="pyarrow", batch_size=None))
    timings["lineage_read"] = time.perf_counter() - t
    report = write_outputs(final, decisions, config, started_at, t0, timings)
    log.info("wrote %d rows to %s", report["written"], config.output_dir)
    return report
