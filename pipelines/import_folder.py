"""Source format `folder`: `<uri>/<labels_file>`, a CSV `image,label[,split]` -> rows.

Needs: the CSV (UTF-8, a header naming at least `image` and `label`; other columns are
ignored), image paths relative to the folder. Images need not exist here: reading them is a
later stage.
Adds (see pipelines/sources.py): id = the image's normalised relative POSIX path, prompt = the
task's prompt, answer = the label (stripped), split = the `split` cell (None when the column is
absent or the cell empty), source_uri = the image URI, conversation None.
Rejections: `bad_row` (field count differs from the header, empty label, unreadable record),
`bad_path`, `outside_source`, `unknown_label`/`bad_answer`, `bad_split` (not train/val/test).
Blank lines are skipped; `_order` counts records, details name the CSV line.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterator
from typing import Any, TextIO

from hazard.config.data import DataConfig
from hazard.core.schema import SPLITS
from hazard.core.tasks import TaskSpec, get_task
from pipelines.common import IMAGE_URIS, reject
from pipelines.sources import (
    STAGE,
    ImageResolver,
    RowProblem,
    Source,
    SourceError,
    base_row,
    check_answer,
    finalize,
    inside,
    read_head,
    require_file,
    show,
)

REQUIRED = ("image", "label")


def header_columns(header: list[str] | None, name: str) -> dict[str, int]:
    """{column: index} of image, label and split (if present); SourceError if one is missing."""
    if not header:
        raise SourceError(f"{name} is empty; expected a header image,label[,split]")
    names = [h.strip() for h in header]
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise SourceError(
            f"{name}: header {names} lacks column(s) {missing}; expected image,label[,split]"
        )
    return {c: names.index(c) for c in (*REQUIRED, "split") if c in names}


def plan(source: Source, config: DataConfig) -> Source:
    """The source with its labels file checked (exists, header); SourceError otherwise."""
    rel = inside(config.source.labels_file, "source.labels_file")
    source = dataclasses.replace(source, annotation=rel, image_dir="")  # paths: from the folder
    size = require_file(source, rel, config.storage, "labels file")
    head = read_head(source, rel, config.storage)
    header_columns(next(csv.reader(head.splitlines()), None), source.annotation_uri)
    return dataclasses.replace(source, size=size)


def iter_rows(stream: TextIO, source: Source) -> Iterator[dict[str, Any]]:
    """Every CSV record of the labels file as a row (pure: no Ray, no image I/O)."""
    return finalize(_rows(stream, source), source.annotation_name)


def _rows(stream: TextIO, source: Source) -> Iterator[dict[str, Any]]:
    task = get_task(source.task)
    name = source.annotation_name
    resolve = ImageResolver(source)
    reader = csv.reader(stream)
    header = next(reader, None)
    cols = header_columns(header, source.annotation_uri)
    width = len(header)
    index, last_line = 0, reader.line_num
    while True:
        try:
            fields, error = next(reader), None
        except StopIteration:
            return
        except csv.Error as exc:  # e.g. a field over csv.field_size_limit()
            fields, error = None, exc
        line, last_line = last_line + 1, reader.line_num
        if fields is not None and (not fields or (len(fields) == 1 and not fields[0].strip())):
            continue  # blank line
        where = f"{name} line {line}"
        row = base_row(source, task, index, f"{name}:{index}")
        row["prompt"] = task.prompt
        try:
            if error is not None:
                raise RowProblem("bad_row", f"{where}: unreadable CSV record ({error})")
            _fill(row, fields, cols, width, resolve, task, where)
        except RowProblem as p:
            row = reject(row, p.reason, p.detail, STAGE)
        yield row
        index += 1


def _fill(
    row: dict[str, Any],
    fields: list[str],
    cols: dict[str, int],
    width: int,
    resolve: ImageResolver,
    task: TaskSpec,
    where: str,
) -> None:
    """Set the row's fields from one CSV record; RowProblem at the first problem."""
    if len(fields) != width:
        raise RowProblem("bad_row", f"{where}: {len(fields)} fields, the header has {width}")
    label = fields[cols["label"]].strip()
    split = fields[cols["split"]].strip() if "split" in cols else ""
    row["answer"] = label
    row["split"] = split or None
    rel, uri = resolve(fields[cols["image"]], where)
    row["id"], row["source_uri"], row[IMAGE_URIS] = rel, uri, [uri]
    if not label:
        raise RowProblem("bad_row", f"{where}: empty label")
    check_answer(task, label, where)
    if split and split not in SPLITS:
        raise RowProblem(
            "bad_split", f"{where}: split {show(split)} is not one of {', '.join(SPLITS)}"
        )
