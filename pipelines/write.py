"""Write stage: Parquet shards per split, the quarantine table and the lineage report.

Needs: every SAMPLE_SCHEMA column (kept rows from the earlier stages), the quarantine records
and the StageStats of the earlier stages.
Adds: nothing to the rows; writes under `output_dir`:
- `{split}/{split}-NNNNN-0.parquet` for split in train/val/test, exactly SAMPLE_SCHEMA, at most
  `shards.rows_per_file` rows each, evenly filled (an empty split gets one empty shard);
- `quarantine.parquet`: QUARANTINE_SCHEMA, one row per rejected row (empty file if none);
- `lineage.json`: per stage {rows_in, rows_out, rows_added, rejected: {reason: count},
  seconds}, per split label counts and shards, augmentation counts, the config, timing, and the
  invariants checked. `LineageError` is raised (after lineage.json is written) if any stage
  has rows_in + rows_added != rows_out + rejected, or stages do not chain.
The write stage counts its rows_out by reading the shards' Parquet metadata back.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import ray
from ray.data import SaveMode
from ray.data.datasource import FilenameProvider
from ray.data.expressions import col

from hazard.config.data import DataConfig
from hazard.schema import SAMPLE_SCHEMA, SPLITS
from hazard.tasks import get_task
from pipelines.common import StageStats, count_reasons, quarantine_table

QUARANTINE_FILE = "quarantine.parquet"
LINEAGE_FILE = "lineage.json"


class LineageError(RuntimeError):
    """Rows were lost or invented: a stage's accounting does not balance."""


class _ShardNames(FilenameProvider):
    """`{split}-{task:05d}` (Ray appends `-{i}.parquet`)."""

    def __init__(self, split: str) -> None:
        super().__init__(file_format="parquet")
        self.split = split

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        return f"{self.split}-{task_index:05d}.parquet"


def _clear_shards(path: Path) -> None:
    """Remove the Parquet files a previous run left in `path` (and `path` if then empty)."""
    if not path.is_dir():
        return
    for f in path.glob("*.parquet"):
        f.unlink()
    if not any(path.iterdir()):
        path.rmdir()


def shard_listing(path: Path, root: Path) -> list[dict[str, Any]]:
    """[{file (relative to root), rows}] of a split folder; raises if a shard's schema is off."""
    shards = []
    for f in sorted(path.glob("*.parquet")):
        pf = pq.ParquetFile(f)
        if not pf.schema_arrow.equals(SAMPLE_SCHEMA):
            raise LineageError(f"{f}: schema differs from SAMPLE_SCHEMA:\n{pf.schema_arrow}")
        shards.append({"file": f.relative_to(root).as_posix(), "rows": pf.metadata.num_rows})
    return shards


def write_split(
    ds: ray.data.Dataset, split: str, out_dir: Path, rows_per_file: int
) -> list[dict[str, Any]]:
    """Write the rows of `split` as Parquet shards under out_dir/split; their listing."""
    path = out_dir / split
    _clear_shards(path)
    part = ds.filter(expr=col("split") == split).select_columns(SAMPLE_SCHEMA.names).materialize()
    n = part.count()
    if n == 0:
        path.mkdir(parents=True, exist_ok=True)
        pq.write_table(SAMPLE_SCHEMA.empty_table(), path / f"{split}-empty.parquet")
        return shard_listing(path, out_dir)
    part.repartition(math.ceil(n / rows_per_file)).write_parquet(  # even shards, one per block
        str(path),
        schema=SAMPLE_SCHEMA,
        max_rows_per_file=rows_per_file,
        filename_provider=_ShardNames(split),
        mode=SaveMode.OVERWRITE,  # names carry no write uuid; stale shards were removed above
    )
    return shard_listing(path, out_dir)


def split_summary(path: Path, labels: tuple[str, ...] | None) -> dict[str, Any]:
    """Row, label and augmentation counts of one written split, read back from its shards."""
    table = pq.read_table(
        sorted(path.glob("*.parquet")), columns=["answer", "parent_id", "aug_ops"]
    )
    answers = table["answer"].to_pylist()
    parents = table["parent_id"].to_pylist()
    by_label = Counter(answers)
    aug_by_label = Counter(a for a, p in zip(answers, parents, strict=True) if p is not None)
    ops = Counter(op.split(":", 1)[0] for ops in table["aug_ops"].to_pylist() if ops for op in ops)
    order = list(labels) if labels else sorted(by_label)
    order += sorted(set(by_label) - set(order))
    return {
        "rows": table.num_rows,
        "original": sum(p is None for p in parents),
        "augmented": sum(p is not None for p in parents),
        "labels": {label: by_label.get(label, 0) for label in order},
        "augmented_labels": {label: aug_by_label[label] for label in order if aug_by_label[label]},
        "aug_ops": dict(sorted(ops.items())),
    }


def check_invariants(stages: list[StageStats]) -> list[str]:
    """Accounting violations: per stage balance and stage-to-stage chaining."""
    problems = []
    for s in stages:
        if not s.balanced:
            problems.append(
                f"{s.name}: rows_in {s.rows_in} + rows_added {s.rows_added} != rows_out "
                f"{s.rows_out} + rejected {sum(s.rejected.values())}"
            )
    for a, b in itertools.pairwise(stages):
        if a.rows_out != b.rows_in:
            problems.append(f"{a.name} rows_out {a.rows_out} != {b.name} rows_in {b.rows_in}")
    return problems


def write_outputs(
    ds: ray.data.Dataset,
    records: list[dict[str, Any]],
    stages: list[StageStats],
    config: DataConfig,
    started_at: datetime,
    t0: float,
) -> dict[str, Any]:
    """Run the write stage, check the accounting and write lineage.json; the lineage report."""
    t = time.perf_counter()
    out_dir = Path(config.output_dir).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows_in = ds.count()
    shards = {
        split: write_split(ds, split, out_dir, config.shards.rows_per_file) for split in SPLITS
    }
    written = sum(s["rows"] for files in shards.values() for s in files)
    write_stats = StageStats("write", rows_in=rows_in, rows_out=written)
    quarantine = quarantine_table(records)
    pq.write_table(quarantine, out_dir / QUARANTINE_FILE)
    write_stats.seconds = time.perf_counter() - t
    stages = [*stages, write_stats]

    labels = get_task(config.task).labels
    splits = {
        split: {**split_summary(out_dir / split, labels), "shards": shards[split]}
        for split in SPLITS
    }
    added = sum(s.rows_added for s in stages)
    problems = check_invariants(stages)
    source_rows = stages[0].rows_in
    if source_rows + added != written + quarantine.num_rows:
        problems.append(
            f"overall: source rows {source_rows} + added {added} != written {written} "
            f"+ quarantined {quarantine.num_rows}"
        )
    by_stage: dict[str, dict[str, int]] = {}
    for s in stages:
        if s.rejected:
            by_stage[s.name] = dict(s.rejected)
    train = splits["train"]
    report: dict[str, Any] = {
        "stages": [s.as_dict() for s in stages],
        "splits": splits,
        "augmentation": {
            "copies_per_sample": config.augment.copies,
            "source_rows": train["original"],
            "rows_added": train["augmented"],
            "by_label": train["augmented_labels"],
            "ops": train["aug_ops"],
        },
        "quarantine": {
            "path": str(out_dir / QUARANTINE_FILE),
            "rows": quarantine.num_rows,
            "by_reason": count_reasons(records),
            "by_stage": by_stage,
        },
        "output_dir": str(out_dir),
        "source": str(Path(config.source.uri).expanduser().resolve()),
        "config": config.model_dump(mode="json"),
        "timing": {
            "started_at": started_at.isoformat(timespec="seconds"),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "total_seconds": round(time.perf_counter() - t0, 3),
            "stages": {s.name: round(s.seconds, 3) for s in stages},
        },
        "invariants": {"ok": not problems, "violations": problems},
    }
    (out_dir / LINEAGE_FILE).write_text(json.dumps(report, indent=2) + "\n")
    if problems:
        raise LineageError("row accounting violated:\n" + "\n".join(problems))
    return report
