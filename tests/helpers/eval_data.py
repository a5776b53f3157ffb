"""A prepared split as the data job writes it (Parquet shards, sample schema), for eval tests."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from hazard.core.schema import SAMPLE_SCHEMA, content_hash
from hazard.core.tasks import get_task
from tests.helpers.augment import encode, scene


def sample_row(rid: str, answer: str | None, task: str = "corridor_risk", seed: int = 0) -> dict:
    """One sample-schema row with a synthetic scene (`seed` varies it); `answer` None is an
    unlabelled (submission) row."""
    images = [encode(scene(seed), "PNG")]
    row = {name: None for name in SAMPLE_SCHEMA.names}
    row.update(
        id=rid,
        images=images,
        task=task,
        prompt=get_task(task).prompt,
        answer=answer,
        split="test",
        source_uri=f"file:///data/{rid}.png",
        content_hash=content_hash(images),
        aug_ops=[],
    )
    return row


def write_split(data: Path, split: str, shards: list[list[dict]]) -> Path:
    """`data/<split>/<split>-<k>.parquet`, one shard per list of rows (shard order = source
    order, as the data job names them); returns `data`."""
    folder = data / split
    folder.mkdir(parents=True, exist_ok=True)
    for k, rows in enumerate(shards):
        rows = [dict(r, split=split) for r in rows]
        table = pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA)
        pq.write_table(table, folder / f"{split}-{k:09d}-0.parquet")
    return data
