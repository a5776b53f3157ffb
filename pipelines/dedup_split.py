"""Dedup and split stage: reject duplicate images, give rows without a split one.

Needs: probed rows (`content_hash` of the original file bytes, `answer`, `split` or None,
`_order`); rejected rows pass through untouched.
Adds: `duplicate` rejections (stage "dedup") and `split` on kept rows that had none.

Both decisions need the whole dataset, so they are made on the driver from four light columns
(`_order`, `id`, `prompt`, `answer`, `split`, `content_hash`: never the images), then
applied to the rows by a map.
- Duplicates: among kept rows with the same images (`content_hash`) asked the same question
  (`prompt`: for the fixed-prompt tasks, every row of an image; in chat data, the same image
  asked something else is another sample), the first in the source (lowest `_order`) is kept,
  whatever its split, so a copy in another split (a leak) is rejected; each other row is
  rejected `duplicate` naming the kept id. A group whose rows disagree on the answer is reported
  as a label conflict (the kept row's answer stands); an unlabelled row (answer None) conflicts
  with nothing.
- Splits: a split the source gives (folder CSV, llamafactory `source.splits`) is kept; rows
  without one are assigned by a seeded rule stratified by answer: within each
  answer, rows are ordered by sha256(seed, id) and cut at the cumulative fractions, so a row's
  split depends only on the seed, its id and the other ids with its answer.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import pyarrow as pa
import ray

from hazard.config.data import RayConfig, SplitConfig
from pipelines.common import ORDER, REJECT_REASON, map_rows, reject, stage_table

SPLIT_ORDER = ("train", "val", "test")
LIGHT_COLUMNS = [ORDER, "id", "prompt", "answer", "split", "content_hash", REJECT_REASON]


@dataclass
class Decisions:
    """What the map applies: rejections and new splits by `_order`, plus the label conflicts."""

    duplicates: dict[int, str] = field(default_factory=dict)  # _order -> detail
    splits: dict[int, str] = field(default_factory=dict)  # _order -> assigned split
    conflicts: list[dict[str, Any]] = field(default_factory=list)


def split_key(seed: int, row_id: str) -> str:
    """The sort key of a row inside its answer group."""
    return hashlib.sha256(f"{seed}\x1f{row_id}".encode()).hexdigest()


def stratified_splits(rows: list[tuple[int, str, str]], cfg: SplitConfig) -> dict[int, str]:
    """{_order: split} for (order, id, answer) rows, cut per answer at the cumulative fractions.

    With n rows of one answer and fractions f, split k gets the rows between b(k-1) and b(k),
    b(k) = floor(n·F(k) + 1/2) (halves round up), F the cumulative sum in train, val, test
    order, computed exactly (decimal fractions, no float drift).
    """
    by_answer: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for order, row_id, answer in rows:
        by_answer[answer].append((split_key(cfg.seed, row_id), order))
    names = [s for s in SPLIT_ORDER if cfg.fractions.get(s, 0) > 0]
    out: dict[int, str] = {}
    for group in by_answer.values():
        group.sort()
        n, start, cum = len(group), 0, Fraction(0)
        for i, name in enumerate(names):
            cum += Fraction(str(cfg.fractions[name]))
            end = n if i == len(names) - 1 else math.floor(n * cum + Fraction(1, 2))
            for _, order in group[start:end]:
                out[order] = name
            start = end
    return out


def decide(light: pa.Table, cfg: SplitConfig) -> Decisions:
    """Duplicates and split assignments from the light columns of every row."""
    kept = [r for r in light.to_pylist() if r[REJECT_REASON] is None]
    kept.sort(key=lambda r: r[ORDER])
    decisions = Decisions()
    first: dict[tuple[str, str], dict[str, Any]] = {}
    conflicts: dict[tuple[str, str], dict[str, Any]] = {}
    survivors = []
    for r in kept:
        h = (r["content_hash"], r["prompt"])
        if h not in first:
            first[h] = r
            survivors.append(r)
            continue
        keep = first[h]
        detail = f"same content as {keep['id']} (split {keep['split'] or 'unassigned'})"
        if r["answer"] != keep["answer"] and None not in (r["answer"], keep["answer"]):
            detail += f"; conflicting label {r['answer']!r} vs kept {keep['answer']!r}"
            c = conflicts.setdefault(
                h, {"kept_id": keep["id"], "kept_label": keep["answer"], "others": []}
            )  # keyed by (hash, prompt); the report lists the values only
            c["others"].append({"id": r["id"], "label": r["answer"]})
        decisions.duplicates[r[ORDER]] = detail
    decisions.conflicts = list(conflicts.values())
    unsplit = [(r[ORDER], r["id"], r["answer"]) for r in survivors if r["split"] is None]
    decisions.splits = stratified_splits(unsplit, cfg)
    return decisions


def apply_decisions(
    row: dict[str, Any], duplicates: dict[int, str], splits: dict[int, str]
) -> dict[str, Any]:
    """`row` rejected as a duplicate, or given its assigned split (kept rows only; no Ray)."""
    if row[REJECT_REASON] is None:
        order = row[ORDER]
        if order in duplicates:
            return reject(row, "duplicate", duplicates[order], stage="dedup")
        if order in splits:
            return {**row, "split": splits[order]}
    return row


def _apply(batch: pa.Table, duplicates: dict[int, str], splits: dict[int, str]) -> pa.Table:
    return stage_table([apply_decisions(r, duplicates, splits) for r in batch.to_pylist()])


def dedup_and_split(
    ds: ray.data.Dataset, cfg: SplitConfig, ray_cfg: RayConfig
) -> tuple[ray.data.Dataset, Decisions]:
    """Rows with duplicates rejected and splits assigned (lazy), and the decisions made.

    `ds` should be materialized: it is read once here for the light columns, then mapped.
    """
    light = [
        batch
        for batch in ds.select_columns(LIGHT_COLUMNS).iter_batches(
            batch_format="pyarrow", batch_size=None
        )
    ]
    table = pa.concat_tables(light) if light else pa.table({c: [] for c in LIGHT_COLUMNS})
    decisions = decide(table, cfg)
    if not decisions.duplicates and not decisions.splits:
        return ds, decisions
    applied = map_rows(
        ds, _apply, ray_cfg, duplicates=decisions.duplicates, splits=decisions.splits
    )
    return applied, decisions
