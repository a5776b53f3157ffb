"""Import stage: a labelled image folder -> sample rows.

Needs: a folder with `labels.csv` (header `image,label,split`, image paths relative to the
folder) and the image files.
Adds: every SAMPLE_SCHEMA column (id = the image's relative POSIX path, images = [file bytes],
task, prompt from the task spec, answer = label, split, source_uri = file:// URI, content_hash,
parent_id None, aug_ops []) plus `_order` (CSV row index) and `_reject_reason`/`_reject_detail`.

The CSV is read on the driver (it is small); the bytes are read inside map_batches tasks, so a
missing or unreadable file becomes a rejected row, never a failed run. Rejections here:
`bad_row` (missing fields), `bad_path` (absolute or escaping the folder), `unknown_label`,
`bad_split`, `missing_file`, `unreadable`. Files larger than `validation.max_bytes` are read
only up to max_bytes + 1 bytes; validate rejects them as `too_many_bytes`.
"""

from __future__ import annotations

import csv
import math
import posixpath
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray

from hazard.config.data import DataConfig
from hazard.schema import SPLITS, content_hash
from hazard.tasks import get_task
from pipelines.common import ORDER, REJECT_REASON, map_rows, reject, stage_table

REQUIRED_COLUMNS = ("image", "label", "split")
MAX_INPUT_BLOCKS = 200


class SourceError(ValueError):
    """The source as a whole is unusable: folder or labels file missing, header incomplete."""


def load_listing(config: DataConfig) -> pa.Table:
    """Parse the folder's CSV into STAGE_SCHEMA rows without images; bad rows come pre-rejected.

    Raises SourceError if the folder or CSV is missing or the header lacks a required column
    (whole-source problems, not row problems).
    """
    root = Path(config.source.uri).expanduser().resolve()
    if not root.is_dir():
        raise SourceError(f"source folder not found: {root}")
    labels_path = root / config.source.labels_file
    if not labels_path.is_file():
        raise SourceError(f"labels file not found: {labels_path}")
    task = get_task(config.task)

    rows: list[dict[str, Any]] = []
    with labels_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise SourceError(f"{labels_path}: header lacks column(s) {missing}")
        for index, record in enumerate(reader):
            line = reader.line_num
            rows.append(_listing_row(record, index, line, root, labels_path, task))
    return stage_table(rows)


def _listing_row(
    record: dict[str, Any], index: int, line: int, root: Path, labels_path: Path, task: Any
) -> dict[str, Any]:
    """One CSV record as a STAGE_SCHEMA row (no image bytes yet), rejected if malformed."""
    image = (record.get("image") or "").strip()
    label = (record.get("label") or "").strip()
    split = (record.get("split") or "").strip()
    rel = posixpath.normpath(image.replace("\\", "/")) if image else ""
    row: dict[str, Any] = {
        "id": rel or f"{labels_path.name}:{line}",
        "images": [],
        "task": task.name,
        "prompt": task.prompt,
        "answer": label,
        "split": split,
        "source_uri": (root / rel).as_uri() if rel else labels_path.as_uri(),
        "content_hash": "",
        "parent_id": None,
        "aug_ops": [],
        ORDER: index,
    }
    if None in record or any(record.get(c) is None for c in REQUIRED_COLUMNS) or not image:
        return reject(row, "bad_row", f"{labels_path.name} line {line}: missing or extra fields")
    if rel.startswith("/") or rel == ".." or rel.startswith("../") or rel == ".":
        return reject(row, "bad_path", f"image path {image!r} is not inside the source folder")
    if task.labels is not None and label not in task.labels:
        return reject(row, "unknown_label", f"label {label!r} not in {list(task.labels)}")
    if split not in SPLITS:
        return reject(row, "bad_split", f"split {split!r} not in {list(SPLITS)}")
    return row


def _read_bytes(batch: pa.Table, root: str, max_bytes: int) -> pa.Table:
    """map_batches fn: read each kept row's file into `images` and hash it."""
    out = []
    for row in batch.to_pylist():
        if row[REJECT_REASON] is None:
            path = Path(root) / row["id"]
            try:
                with path.open("rb") as fh:
                    data = fh.read(max_bytes + 1)
            except FileNotFoundError:
                row = reject(row, "missing_file", f"no such file: {path}")
            except OSError as exc:
                row = reject(row, "unreadable", f"{type(exc).__name__}: {exc}")
            else:
                row["images"] = [data]
                row["content_hash"] = content_hash([data])
        out.append(row)
    return stage_table(out)


def import_folder(listing: pa.Table, config: DataConfig) -> ray.data.Dataset:
    """The listing with image bytes read in parallel (lazy dataset of STAGE_SCHEMA rows)."""
    root = str(Path(config.source.uri).expanduser().resolve())
    n = listing.num_rows
    block = max(config.ray.batch_size, math.ceil(n / MAX_INPUT_BLOCKS)) if n else 1
    blocks = [listing.slice(i, block) for i in range(0, n, block)] or [listing]
    return map_rows(
        ray.data.from_arrow(blocks),
        _read_bytes,
        config.ray,
        root=root,
        max_bytes=config.validation.max_bytes,
    )
