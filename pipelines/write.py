"""Write stage: Parquet shards per split, the quarantine table and the lineage report.

Needs: the in-flight rows after the last stage, kept and rejected alike. Writes under
`output_dir` (a local folder or an s3:// prefix, through hazard.infra.storage):
- `{split}/{split}-<first source row of the batch>-<k>.parquet` for split in train/val/test,
  exactly SAMPLE_SCHEMA, at most `shards.rows_per_file` rows each: every map task writes the kept
  rows of its batch itself (`write_shards`), so the images never travel back to the driver and
  no extra pass over the data is needed; an empty split gets one empty shard; with
  `augment.store: recipes` the augmented rows are written without image bytes;
- `quarantine.parquet`: QUARANTINE_SCHEMA, one row per rejected row, in source order;
- `lineage.json`: the counts below, the config, timings and the invariants checked.

Counts. `listed` rows came from the source; each is `accepted` (written) or `rejected` (by
stage and reason), so listed = accepted + rejected. The augment stage adds rows: `augmented`
copies, of which `augment_failed` and `filtered` (consistency) are rejected; written = accepted
+ augmented - augment_failed - filtered. The same identities hold per split (rows rejected
before a split was known count under `unassigned`). `unlabelled` counts a split's accepted rows
without an answer (`source.unlabelled_splits`; never augmented). The written counts, unlabelled
ones included, are read back from the shards, a second path to the same numbers; `LineageError`
is raised (after lineage.json is written) when any identity fails. `tasks` counts the rows of
each task (`task_counts`; a `task: mixed` job's rows are of several).
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from hazard.config.data import MIXED, DataConfig
from hazard.core.schema import SAMPLE_SCHEMA, SPLITS
from hazard.core.tasks import get_task
from hazard.infra import storage
from pipelines.common import ORDER, REJECT_DETAIL, REJECT_REASON, REJECT_STAGE, quarantine_table
from pipelines.dedup_split import Decisions

QUARANTINE_FILE = "quarantine.parquet"
LINEAGE_FILE = "lineage.json"
STAGES = ("import", "decode", "dedup", "augment", "consistency")
UNASSIGNED = "unassigned"
LIGHT = [ORDER, "id", "task", "source_uri", "split", "answer", "parent_id", "aug_ops"]
LIGHT += [REJECT_STAGE, REJECT_REASON, REJECT_DETAIL]


class LineageError(RuntimeError):
    """Rows were lost or invented: the counts do not add up."""


def clear_outputs(config: DataConfig) -> None:
    """Remove the split folders a previous run left, so shards of two runs never mix."""
    for split in SPLITS:
        storage.delete_dir(storage.join_uri(config.output_dir, split), config.storage)


def strip_copy_images(table: pa.Table) -> pa.Table:
    """`table` with empty `images` on its augmented rows (`augment.store: recipes`)."""
    empty = pa.array([[]] * table.num_rows, type=table.schema.field("images").type)
    images = pc.if_else(pc.is_null(table["parent_id"]), table["images"], empty)
    return table.set_column(table.schema.get_field_index("images"), "images", images)


def write_batch(
    batch: pa.Table,
    output_dir: str,
    rows_per_file: int,
    filesystem: pafs.FileSystem,
    recipes: bool = False,
) -> pa.Table:
    """Write the batch's kept rows as shards (copies without images when `recipes`); return
    every row's light columns (the map function of `write_shards`, usable without Ray)."""
    kept = batch.filter(pc.is_null(batch[REJECT_REASON]))
    if recipes and kept.num_rows:
        kept = strip_copy_images(kept)
    if kept.num_rows:
        first = pc.min(batch[ORDER]).as_py()
        for split in SPLITS:
            part = kept.filter(pc.equal(kept["split"], split)).select(SAMPLE_SCHEMA.names)
            part = part.cast(SAMPLE_SCHEMA)
            for k, start in enumerate(range(0, part.num_rows, rows_per_file)):
                name = f"{split}/{split}-{first:09d}-{k}.parquet"
                uri = storage.join_uri(output_dir, name)
                with storage.open_output(uri, filesystem=filesystem) as f:
                    pq.write_table(part.slice(start, rows_per_file), f)
    return batch.select(LIGHT)


def write_shards(ds: ray.data.Dataset, config: DataConfig) -> ray.data.Dataset:
    """The rows' light columns (lazy) after each task wrote its kept rows as shards."""
    fs, _ = storage.filesystem_for(config.output_dir, config.storage)
    return ds.map_batches(
        write_batch,
        batch_format="pyarrow",
        batch_size=None,
        fn_kwargs={
            "output_dir": config.output_dir,
            "rows_per_file": config.shards.rows_per_file,
            "filesystem": fs,
            "recipes": config.augment.store == "recipes",
        },
        num_cpus=config.ray.num_cpus,
    )


def light_rows(batches) -> list[dict[str, Any]]:
    """Every row's bookkeeping columns (no images) from `batches` (pyarrow tables holding the
    LIGHT columns, e.g. what `write_batch` returns), in source order then id."""
    rows = [r for b in batches for r in b.select(LIGHT).to_pylist()]
    rows.sort(key=lambda r: (r[ORDER] if r[ORDER] is not None else -1, r["id"] or ""))
    return rows


def read_back(split_uri: str, config: DataConfig) -> tuple[list[dict[str, Any]], pa.Table]:
    """([{file (relative to output_dir), rows}] from each shard's Parquet metadata, the light
    columns of the split)."""
    shards, tables = [], [SAMPLE_SCHEMA.empty_table().select(["answer", "parent_id", "aug_ops"])]
    if not storage.exists(split_uri, config.storage):
        return shards, tables[0]
    for entry in storage.list_files(split_uri, config.storage):
        if not entry.relpath.endswith(".parquet"):
            continue
        with storage.open_input(entry.uri, config.storage) as f:
            pf = pq.ParquetFile(f)
            if not pf.schema_arrow.equals(SAMPLE_SCHEMA):
                raise LineageError(f"{entry.uri}: schema differs from SAMPLE_SCHEMA")
            name = f"{split_uri.rstrip('/').rsplit('/', 1)[-1]}/{entry.relpath}"
            shards.append({"file": name, "rows": pf.metadata.num_rows})
            tables.append(pf.read(columns=["answer", "parent_id", "aug_ops"]))
    return shards, pa.concat_tables(tables)


def _split_of(row: dict[str, Any]) -> str:
    """The row's split; rows rejected before they had a valid one count as `unassigned`."""
    return row["split"] if row["split"] in SPLITS else UNASSIGNED


def count(rows: list[dict[str, Any]], labels: tuple[str, ...] | None) -> dict[str, Any]:
    """Stage and split counts of the final rows (before anything is written)."""
    originals = [r for r in rows if r["parent_id"] is None]
    copies = [r for r in rows if r["parent_id"] is not None]
    stages, rows_in = [], len(originals)
    for name in STAGES:
        rejected = Counter(r[REJECT_REASON] for r in rows if r[REJECT_STAGE] == name)
        added = len(copies) if name == "augment" else 0
        out = rows_in + added - sum(rejected.values())
        stages.append(
            {
                "name": name,
                "rows_in": rows_in,
                "rows_added": added,
                "rows_out": out,
                "rejected": dict(sorted(rejected.items())),
            }
        )
        rows_in = out
    splits: dict[str, dict[str, Any]] = {}
    for split in (*SPLITS, UNASSIGNED):
        mine = [r for r in originals if _split_of(r) == split]
        kids = [r for r in copies if r["split"] == split]
        rejected = Counter(r[REJECT_REASON] for r in mine if r[REJECT_REASON])
        kid_rejected = Counter(r[REJECT_REASON] for r in kids if r[REJECT_REASON])
        splits[split] = {
            "listed": len(mine),
            "accepted": len(mine) - sum(rejected.values()),
            "unlabelled": sum(r[REJECT_REASON] is None and r["answer"] is None for r in mine),
            "rejected": dict(sorted(rejected.items())),
            "augmented": len(kids),
            "augment_failed": kid_rejected.get("augment_failed", 0),
            "filtered": kid_rejected.get("inconsistent", 0),
            "to_write": sum(r[REJECT_REASON] is None for r in mine + kids),
        }
    return {"stages": stages, "splits": splits}


def task_counts(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per task (the rows' own `task`; rows rejected before a mixed job knew it have none and
    are not counted here): original rows `accepted`, `rejected` by reason, rows `written`
    (augmented copies included)."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["task"] is None:
            continue
        c = out.setdefault(r["task"], {"accepted": 0, "rejected": Counter(), "written": 0})
        if r[REJECT_REASON]:
            c["rejected"][r[REJECT_REASON]] += 1
            continue
        c["written"] += 1
        c["accepted"] += r["parent_id"] is None
    return {
        t: {**c, "rejected": dict(sorted(c["rejected"].items()))} for t, c in sorted(out.items())
    }


def _labels(table: pa.Table, labels: tuple[str, ...] | None) -> dict[str, Any]:
    answers, parents = table["answer"].to_pylist(), table["parent_id"].to_pylist()
    by_label = Counter(a for a in answers if a is not None)
    aug = Counter(a for a, p in zip(answers, parents, strict=True) if p is not None)
    ops = Counter(op.split(":", 1)[0] for o in table["aug_ops"].to_pylist() if o for op in o)
    order = [*(labels or ()), *sorted(set(by_label) - set(labels or ()))]
    return {
        "written_unlabelled": answers.count(None),
        "labels": {label: by_label[label] for label in order if by_label[label]},
        "augmented_labels": {label: aug[label] for label in order if aug[label]},
        "aug_ops": dict(sorted(ops.items())),
    }


def check(
    counts: dict[str, Any],
    written: dict[str, int],
    quarantined: int,
    unlabelled: dict[str, int] | None = None,
) -> list[str]:
    """Every identity of the module docstring that fails, as a message (`unlabelled`: the
    unlabelled rows the shards of each split hold)."""
    problems = []
    for split, n in (unlabelled or {}).items():
        if n != counts["splits"][split]["unlabelled"]:
            expected = counts["splits"][split]["unlabelled"]
            problems.append(f"{split}: shards hold {n} unlabelled rows, expected {expected}")
    for s in counts["stages"]:
        if s["rows_out"] < 0:
            problems.append(f"stage {s['name']}: more rows rejected than came in")
    listed = added = to_write = 0
    for split, c in counts["splits"].items():
        n_rej = sum(c["rejected"].values())
        if c["listed"] != c["accepted"] + n_rej:
            problems.append(f"{split}: listed {c['listed']} != accepted + rejected {n_rej}")
        expect = c["accepted"] + c["augmented"] - c["augment_failed"] - c["filtered"]
        if expect != c["to_write"]:
            problems.append(f"{split}: accepted + augmented - dropped {expect} != {c['to_write']}")
        if split in written and written[split] != c["to_write"]:
            problems.append(f"{split}: shards hold {written[split]} rows, expected {c['to_write']}")
        listed, added, to_write = listed + c["listed"], added + c["augmented"], to_write + expect
    if listed + added != sum(written.values()) + quarantined:
        problems.append(
            f"overall: listed {listed} + augmented {added} != written {sum(written.values())} "
            f"+ quarantined {quarantined}"
        )
    if counts["stages"][-1]["rows_out"] != sum(written.values()):
        problems.append("the last stage's rows_out differs from the rows written")
    return problems


def write_outputs(
    rows: list[dict[str, Any]],
    decisions: Decisions,
    config: DataConfig,
    started_at: datetime,
    t0: float,
    timings: dict[str, float],
) -> dict[str, Any]:
    """Quarantine, empty shards for empty splits and lineage.json, from every row's light
    columns (`light_rows`) after the shards were written; the lineage report."""
    t = time.perf_counter()
    labels = None if config.task == MIXED else get_task(config.task).labels
    counts = count(rows, labels)
    for split in SPLITS:
        if counts["splits"][split]["to_write"] == 0:
            empty = storage.join_uri(config.output_dir, split, f"{split}-empty.parquet")
            storage.write_parquet(empty, SAMPLE_SCHEMA.empty_table(), config.storage)
    records = [
        {
            "id": r["id"],
            "source_uri": r["source_uri"],
            "stage": r[REJECT_STAGE],
            "reason": r[REJECT_REASON],
            "detail": r[REJECT_DETAIL],
        }
        for r in rows
        if r[REJECT_REASON]
    ]
    quarantine_uri = storage.join_uri(config.output_dir, QUARANTINE_FILE)
    storage.write_parquet(quarantine_uri, quarantine_table(records), config.storage)

    splits: dict[str, Any] = {}
    written: dict[str, int] = {}
    for split in SPLITS:
        shards, table = read_back(storage.join_uri(config.output_dir, split), config)
        written[split] = sum(s["rows"] for s in shards)
        splits[split] = {
            **counts["splits"][split],
            "written": written[split],
            **_labels(table, labels),
            "shards": shards,
        }
    splits[UNASSIGNED] = counts["splits"][UNASSIGNED]
    timings = {**timings, "lineage": time.perf_counter() - t}
    unlabelled = {split: splits[split].pop("written_unlabelled") for split in SPLITS}
    problems = check(counts, written, len(records), unlabelled)
    totals = defaultdict(int)
    for c in splits.values():
        for key in ("listed", "accepted", "unlabelled", "augmented", "augment_failed", "filtered"):
            totals[key] += c[key]
    by_reason = Counter(r["reason"] for r in records)
    report: dict[str, Any] = {
        "listed": totals["listed"],
        "accepted": totals["accepted"],
        "unlabelled": totals["unlabelled"],
        "rejected": sum(sum(c["rejected"].values()) for c in counts["splits"].values()),
        "augmented": totals["augmented"],
        "augment_failed": totals["augment_failed"],
        "filtered": totals["filtered"],
        "written": sum(written.values()),
        "stages": counts["stages"],
        "tasks": task_counts(rows),
        "splits": splits,
        "quarantine": {
            "uri": quarantine_uri,
            "rows": len(records),
            "by_reason": dict(sorted(by_reason.items())),
            "by_stage": {s["name"]: s["rejected"] for s in counts["stages"] if s["rejected"]},
        },
        "label_conflicts": decisions.conflicts,
        "output_dir": config.output_dir,
        "source": {"format": config.source.format, "uri": config.source.uri},
        "config": config.model_dump(mode="json"),
        "timing": {
            "started_at": started_at.isoformat(timespec="seconds"),
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "total_seconds": round(time.perf_counter() - t0, 3),
            "phases": {k: round(v, 3) for k, v in timings.items()},
        },
        "invariants": {"ok": not problems, "violations": problems},
    }
    lineage_uri = storage.join_uri(config.output_dir, LINEAGE_FILE)
    storage.write_bytes(lineage_uri, (json.dumps(report, indent=2) + "\n").encode(), config.storage)
    if problems:
        raise LineageError("row accounting violated:\n" + "\n".join(problems))
    return report
