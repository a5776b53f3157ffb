"""Import stage: a labelled source (folder CSV, LLaMA-Factory or LLaVA JSON) -> in-flight rows.

`plan_source` is the one source planner: it also plans batch scoring's unlabelled sources
(a folder of images or Parquet shards; `plan_files`), which `pipelines.score` reads.

Needs: `config.source` (format, uri = local folder, file:// or s3:// prefix, file names) and
`config.task`. Adds: STAGE_SCHEMA rows WITHOUT image bytes: `id`, `task`, `prompt`, `answer`,
`split` (None when the source gives none; llamafactory `source.splits`: the entry's split;
flare `source.split_field`: the row's), `task` (a `task: mixed` job: each row's own, see
pipelines/row_task.py; None on rows rejected before it was known),
`source_uri` (the image URI; multi-image or
unresolved rows: `<annotation URI>#<index>`), `images=[]`, `content_hash=""`, `parent_id=None`,
`aug_ops=[]`, `conversation` (JSON turns for chat sources, else None), `_order` (record index
in the annotation file, 0-based; numbered on across the files of a several-file source) and
`_image_uris` (file:// or s3:// URI per image). `answer` is None only on the unlabelled rows of
`source.unlabelled_splits` (see pipelines/import_llamafactory.py).

`check_source` runs on the driver and reads only a few KB (folder/prefix and annotation file
exist, CSV header, dataset_info entry, first bytes of a JSON list): whole-source problems raise
`SourceError` before any Ray work. `read_source` is lazy: one Ray task streams the annotation
file through the format's pure row generator (`iter_rows` in `import_<format>.py`) and emits
blocks of `rows_per_block` rows as it goes (the streaming repartition fuses into that task);
the driver never holds the rows. A JSON list that breaks mid-file raises SourceError from that
task (Ray re-raises it on the driver as a subclass of SourceError).

Row problems never fail the run: the row comes out rejected (stage "import") with one of
`bad_row`, `bad_path`, `outside_source`, `unknown_label`, `bad_answer`, `bad_split`,
`image_count_mismatch` (placeholders != images, or several images for a task whose
`TaskSpec.multi_image` is False), `misplaced_image` (`<image>` in a system or assistant turn),
`unknown_task` (mixed jobs) and a detail naming the file and line or index. Images are
not opened here (no I/O per row beyond a symlink check on local sources): a missing or
unreadable image is the business of the stage that reads the bytes from `_image_uris`.

Ids are unique in the output: a repeated id gets `#<_order>` appended (the first keeps its id).

Long because: it is the one source planner (the data job's formats and batch scoring's
image folders and Parquet) plus what every format shares: the `Source` and error types, the
row helpers and opening annotation files (the streaming JSON readers are in
pipelines/json_records.py); each format's own rows are in `import_<format>.py`.
Sections: planning, row helpers, annotation files, the Ray wrapper.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import io
import math
import os
import posixpath
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import pyarrow as pa
import pyarrow.fs as pafs
import ray

from hazard.config.data import MIXED, DataConfig
from hazard.config.score import ScoreDatasetConfig
from hazard.config.storage import StorageConfig
from hazard.core.schema import IMAGE_PLACEHOLDER
from hazard.core.tasks import TaskSpec
from hazard.infra.storage import (
    StorageError,
    filesystem_for,
    join_uri,
    list_files,
    open_input,
    parse_uri,
)
from pipelines.common import (
    IMAGE_URIS,
    ORDER,
    REJECT_DETAIL,
    REJECT_REASON,
    REJECT_STAGE,
    reject,
    stage_table,
)
from pipelines.row_task import task_options

STAGE = "import"
FORMAT_MODULES = {
    "folder": "pipelines.import_folder",
    "llamafactory": "pipelines.import_llamafactory",
    "llava": "pipelines.import_llava",
    "flare": "pipelines.import_flare",
}
TARGET_BLOCKS = 200  # blocks per source, as estimated from the annotation file's size
MAX_ROWS_PER_BLOCK = 8192
HEAD_BYTES = 64 * 1024
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")  # batch scoring's image folders
_DRIVE_OR_SCHEME = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://|[A-Za-z]:/)")
_NAME_MAX = 255  # bytes per path component on local file systems


class SourceError(ValueError):
    """The source as a whole is unusable (folder, annotation file or entry missing, bad header)."""


class RowProblem(Exception):
    """A row-level problem: the row is rejected with `reason` and `detail`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Source:
    """A planned source: where things are, as the row generators need it (picklable)."""

    format: str
    root_uri: str  # file:///abs/folder or s3://bucket/prefix, no trailing slash
    annotation: str = ""  # the annotation file, '/'-relative to the root
    task: str = ""
    image_dir: str = ""  # images' base folder, '/'-relative to the root ('' = the root)
    local_root: str | None = None  # os.path.realpath of a local root (symlink check)
    size: int = 0  # annotation file size in bytes
    options: Mapping[str, Any] = field(default_factory=dict)  # format-specific settings
    # batch scoring's sources (no annotation file): (relative path, URI) of each image or
    # Parquet file, sorted; empty for the data job's
    files: tuple[tuple[str, str], ...] = ()
    # several annotation files read in one pass (llamafactory `source.splits`): one planned
    # Source per file, read in order; empty for a one-file source
    parts: tuple[Source, ...] = ()

    @functools.cached_property
    def annotation_uri(self) -> str:
        return join_uri(self.root_uri, self.annotation)

    @property
    def annotation_name(self) -> str:
        return posixpath.basename(self.annotation)


# --- driver side: planning and cheap checks --------------------------------------------------


def _module(fmt: str):
    try:
        return importlib.import_module(FORMAT_MODULES[fmt])
    except KeyError:
        known = sorted(FORMAT_MODULES)
        raise SourceError(f"unknown source format {fmt!r}; known: {known}") from None


def inside(rel: str, what: str) -> str:
    """`rel` normalised to a '/'-path inside the source ('' for the source itself)."""
    if not isinstance(rel, str) or "\x00" in rel:
        raise SourceError(f"{what} {rel!r} is not a usable relative path")
    p = rel.strip().replace("\\", "/")
    norm = posixpath.normpath(p) if p else "."
    if p.startswith("/") or _DRIVE_OR_SCHEME.match(p) or norm == ".." or norm.startswith("../"):
        raise SourceError(f"{what} {rel!r} must be a relative path inside the source folder")
    return "" if norm == "." else norm


def _root(uri: str, storage: StorageConfig) -> tuple[str, str | None]:
    """(canonical root URI, realpath of a local root or None); SourceError if it is missing."""
    try:
        scheme, path = parse_uri(uri)
        fs, fs_path = filesystem_for(uri, storage)
        info = fs.get_file_info(fs_path)
    except (StorageError, OSError, ValueError) as exc:
        raise SourceError(f"source {uri!r}: {exc}") from exc
    if info.type != pafs.FileType.Directory:
        what = "is a file, not a folder" if info.type == pafs.FileType.File else "not found"
        raise SourceError(f"source folder {uri!r} {what}")
    if scheme == "file":
        return Path(path).as_uri(), os.path.realpath(path)
    return f"s3://{path}", None


def require_file(source: Source, rel: str, storage: StorageConfig, what: str) -> int:
    """Size in bytes of the file `rel` of the source; SourceError if it is not a file."""
    uri = join_uri(source.root_uri, rel)
    try:
        fs, path = filesystem_for(uri, storage)
        info = fs.get_file_info(path)
    except (StorageError, OSError) as exc:
        raise SourceError(f"{what} {uri}: {exc}") from exc
    if info.type != pafs.FileType.File:
        raise SourceError(f"{what} not found: {uri}")
    return info.size or 0


def read_head(source: Source, rel: str, storage: StorageConfig, n: int = HEAD_BYTES) -> str:
    """The first `n` bytes of a source file as text (BOM dropped, bad bytes replaced)."""
    uri = join_uri(source.root_uri, rel)
    try:
        with open_input(uri, storage) as fh:
            data = fh.read(n)
    except (StorageError, OSError) as exc:
        raise SourceError(f"cannot read {uri}: {exc}") from exc
    return data.decode("utf-8-sig", errors="replace")


def check_json_head(head: str, name: str, jsonl: bool) -> None:
    """SourceError unless a .json file starts as a list of objects (`[` then `{` or `]`)."""
    if jsonl:
        return
    text = head.lstrip(" \t\r\n")
    if not text:
        raise SourceError(f"{name} is empty; expected a JSON list of objects")
    if text[0] != "[":
        hint = " (JSON lines need a .jsonl name)" if text[0] == "{" else ""
        raise SourceError(f"{name} is not a JSON list of objects: it starts with {text[0]!r}{hint}")
    rest = text[1:].lstrip(" \t\r\n")
    if rest and rest[0] not in "{]":
        raise SourceError(
            f"{name} is not a JSON list of objects: its first element starts with {rest[0]!r}"
        )


def json_kind(rel: str, what: str) -> bool:
    """True for a JSON-lines file (.jsonl), False for a JSON list (.json); else SourceError."""
    ext = posixpath.splitext(rel)[1].lower()
    if ext not in (".json", ".jsonl"):
        raise SourceError(f"{what} {rel!r}: unsupported file type; expected .json or .jsonl")
    return ext == ".jsonl"


def plan_source(config: DataConfig | ScoreDatasetConfig) -> Source:
    """The checked, resolved source of `config`; SourceError for whole-source problems.

    The data job's (DataConfig) is an annotation file its format module plans; batch
    scoring's (ScoreDatasetConfig) is a listing of image or Parquet files (`plan_files`)."""
    if isinstance(config, ScoreDatasetConfig):
        return plan_files(config)
    src = config.source
    module = _module(src.format)
    root_uri, local_root = _root(src.uri, config.storage)
    base = Source(
        format=src.format,
        root_uri=root_uri,
        annotation="",
        task=config.task,
        image_dir=inside(src.image_dir, "source.image_dir"),
        local_root=local_root,
    )
    planned = module.plan(base, config)
    if config.task != MIXED:
        return planned
    opts = task_options(src.format, src.task_field, src.task_map)
    return dataclasses.replace(planned, options={**planned.options, **opts})


def plan_files(config: ScoreDatasetConfig) -> Source:
    """Batch scoring's source: one .parquet file, or the folder's (recursively; hidden names
    skipped) .parquet files ('parquet') or images ('folder'), format 'auto' picking parquet
    when there are any. SourceError when it is missing or holds none."""
    uri, storage = config.source, config.storage
    try:
        fs, path = filesystem_for(uri, storage)
        info = fs.get_file_info(path)
    except (StorageError, OSError, ValueError) as exc:
        raise SourceError(f"source {uri!r}: {exc}") from exc
    if info.type == pafs.FileType.File:
        if config.format == "folder" or not path.endswith(".parquet"):
            raise SourceError(f"source {uri} is a file; expected a folder or .parquet file")
        return Source("parquet", uri, files=((posixpath.basename(path), uri),))
    root_uri, local_root = _root(uri, storage)
    try:
        entries = list_files(uri, storage)
    except StorageError as exc:
        raise SourceError(f"source {uri}: {exc}") from exc
    visible = [e for e in entries if not any(p.startswith(".") for p in e.relpath.split("/"))]
    parquet = [(e.relpath, e.uri) for e in visible if e.relpath.endswith(".parquet")]
    images = [(e.relpath, e.uri) for e in visible if e.relpath.lower().endswith(IMAGE_EXTENSIONS)]
    fmt = config.format if config.format != "auto" else ("parquet" if parquet else "folder")
    files = parquet if fmt == "parquet" else images
    if not files:
        kind = ".parquet files" if fmt == "parquet" else f"images ({', '.join(IMAGE_EXTENSIONS)})"
        raise SourceError(f"source {uri} holds no {kind}")
    return Source(fmt, root_uri, local_root=local_root, files=tuple(sorted(files)))


def check_source(config: DataConfig) -> None:
    """Raise SourceError for whole-source problems; reads only a few KB, starts no Ray work."""
    plan_source(config)


# --- row helpers shared by the formats (pure, no Ray) -----------------------------------------


def show(text: Any, limit: int = 80) -> str:
    """A short repr for details."""
    r = repr(text)
    return r if len(r) <= limit else r[: limit - 4] + "...'"


def base_row(source: Source, task: TaskSpec | None, index: int, row_id: str) -> dict[str, Any]:
    """A STAGE_SCHEMA row of the source with nothing parsed yet (`task` None: a mixed job's
    row, its task not known yet)."""
    return {
        "id": row_id,
        "images": [],
        "task": task.name if task is not None else None,
        "prompt": None,
        "answer": None,
        "split": None,
        "source_uri": f"{source.annotation_uri}#{index}",
        "content_hash": "",
        "parent_id": None,
        "aug_ops": [],
        "conversation": None,
        "consistency_score": None,
        ORDER: index,
        IMAGE_URIS: [],
        REJECT_REASON: None,
        REJECT_DETAIL: None,
        REJECT_STAGE: None,
    }


class ImageResolver:
    """Resolves image paths from the annotations against one source (use one per pass: it
    caches the real path of each local folder it meets)."""

    def __init__(self, source: Source):
        self.source = source
        self._base = source.root_uri if source.root_uri.endswith("/") else source.root_uri + "/"
        self._quote = source.root_uri.startswith("file:")
        self._real_dirs: dict[str, str] = {}

    def __call__(self, raw: Any, where: str) -> tuple[str, str]:
        """(path relative to the source root, absolute URI) of an image path.

        RowProblem `bad_row` (not a string), `bad_path` (empty, NUL byte, not encodable,
        absolute or a URI, the folder itself, a name over 255 bytes) or `outside_source`
        (normalises outside the root, or on a local source resolves through a symlink to
        outside it).
        """
        if not isinstance(raw, str):
            raise RowProblem(
                "bad_row", f"{where}: image path is {type(raw).__name__}, not a string"
            )
        p = raw.strip()
        if not p:
            raise RowProblem("bad_path", f"{where}: empty image path")
        if "\x00" in p:
            raise RowProblem("bad_path", f"{where}: image path {show(p)} contains a NUL byte")
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:
            raise RowProblem(
                "bad_path", f"{where}: image path {show(p)} is not valid UTF-8"
            ) from None
        p = p.replace("\\", "/")
        if p.startswith("/") or _DRIVE_OR_SCHEME.match(p):
            raise RowProblem(
                "bad_path", f"{where}: image path {show(raw)} is absolute; it must be relative"
            )
        image_dir = self.source.image_dir
        rel = posixpath.normpath(posixpath.join(image_dir, p) if image_dir else p)
        if rel == ".." or rel.startswith("../"):
            raise RowProblem(
                "outside_source",
                f"{where}: image path {show(raw)} points outside the source folder",
            )
        if rel == ".":
            raise RowProblem("bad_path", f"{where}: image path {show(raw)} names the folder itself")
        if self.source.local_root is not None:
            self._check_local(rel, raw, where)
        return rel, self._base + (quote(rel) if self._quote else rel)

    def _check_local(self, rel: str, raw: str, where: str) -> None:
        """RowProblem unless `rel` stays inside the local root once symlinks are resolved."""
        if any(len(part.encode()) > _NAME_MAX for part in rel.split("/")):
            raise RowProblem(
                "bad_path", f"{where}: image path {show(raw)} has a name over {_NAME_MAX} bytes"
            )
        root = self.source.local_root
        folder, name = posixpath.split(rel)
        real_dir = self._real_dirs.get(folder)
        if real_dir is None:
            real_dir = os.path.realpath(os.path.join(root, folder))
            self._real_dirs[folder] = real_dir
        real = os.path.join(real_dir, name)
        if os.path.islink(real):
            real = os.path.realpath(real)
        if real != root and not real.startswith(root.rstrip("/") + "/"):
            raise RowProblem(
                "outside_source",
                f"{where}: image path {show(raw)} resolves through a symlink to {real}, "
                f"outside the source folder {root}",
            )


def check_answer(task: TaskSpec, answer: str, where: str) -> None:
    """RowProblem unless `answer` (stripped) is valid for `task`.

    Label tasks: exactly one of the labels (`unknown_label`; case is not folded). Label-free
    tasks: what the task's own `answer_check` refuses (`bad_answer`), else any non-empty text.
    """
    if task.labels is not None:
        if answer not in task.labels:
            raise RowProblem(
                "unknown_label",
                f"{where}: {show(answer)} is not a label of task {task.name}; expected one of "
                + ", ".join(task.labels),
            )
    elif task.answer_check is not None and (problem := task.answer_check(answer)):
        raise RowProblem("bad_answer", f"{where}: {show(answer)} {problem}")


def tidy_prompt(text: str) -> str:
    """A user turn as a prompt: `<image>` placeholders removed, spaces collapsed, lines trimmed."""
    text = text.replace(IMAGE_PLACEHOLDER, " ")
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


_TEXT_FIELDS = ("id", "prompt", "answer", "split", "source_uri", "conversation", REJECT_DETAIL)


def _unicode_safe(row: dict[str, Any], name: str) -> dict[str, Any]:
    """Reject (bad_row) a row holding text that is not valid Unicode, then make it storable."""
    texts = [row[k] for k in _TEXT_FIELDS if isinstance(row[k], str)] + row[IMAGE_URIS]
    try:
        "".join(texts).encode("utf-8")
        return row
    except UnicodeEncodeError:
        pass
    bad = [k for k in _TEXT_FIELDS if isinstance(row[k], str) and not _encodable(row[k])]
    bad += [IMAGE_URIS] if not all(_encodable(u) for u in row[IMAGE_URIS]) else []
    detail = f"{name} record {row[ORDER]}: text that is not valid UTF-8 in {bad}"
    row = reject(row, "bad_row", detail, STAGE)

    def fix(v):
        return v.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(v, str) else v

    row = {**row, **{k: fix(row[k]) for k in _TEXT_FIELDS}}
    row[IMAGE_URIS] = [fix(u) for u in row[IMAGE_URIS]]
    return row


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def finalize(rows: Iterable[dict[str, Any]], name: str) -> Iterator[dict[str, Any]]:
    """Rows made storable and their ids unique: a repeated id gets `#<_order>` appended.
    `name` (the annotation file's) names rows in details."""
    seen: set[str] = set()
    for row in rows:
        row = _unicode_safe(row, name)
        row_id = row["id"]
        while row_id in seen:
            row_id = f"{row_id}#{row[ORDER]}"
        if row_id != row["id"]:
            row = {**row, "id": row_id}
        seen.add(row_id)
        yield row


# --- reading annotation files (pure, streaming) -----------------------------------------------


def open_text(stream) -> TextIO:
    """A binary stream as text: UTF-8, BOM dropped, undecodable bytes kept as surrogates (rows
    holding them are rejected, see `finalize`), newlines untranslated (for csv)."""
    return io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")


# --- Ray wrapper ------------------------------------------------------------------------------


def rows_per_block(source: Source, batch_size: int) -> int:
    """Rows per output block: about TARGET_BLOCKS blocks per source (rows estimated from the
    file size), at least `batch_size` and at most MAX_ROWS_PER_BLOCK."""
    bytes_per_row = 40 if source.format == "folder" else 400
    est_rows = source.size / bytes_per_row
    return int(min(MAX_ROWS_PER_BLOCK, max(batch_size, math.ceil(est_rows / TARGET_BLOCKS))))


def source_rows(source: Source, stream) -> Iterator[dict[str, Any]]:
    """Every row of the source from its annotation file's binary stream (pure, no Ray)."""
    return _module(source.format).iter_rows(open_text(stream), source)


def all_rows(source: Source, fs: pafs.FileSystem) -> Iterator[dict[str, Any]]:
    """Every row of the source, read through `fs` (pure, no Ray). A source of several parts
    (`Source.parts`) yields each part's rows in turn, `_order` numbered on across the parts and
    ids made unique across them (`finalize`)."""
    if not source.parts:
        with fs.open_input_stream(parse_uri(source.annotation_uri)[1]) as stream:
            yield from source_rows(source, stream)
        return

    def chained() -> Iterator[dict[str, Any]]:
        offset = 0
        for part in source.parts:
            count = 0
            with fs.open_input_stream(parse_uri(part.annotation_uri)[1]) as stream:
                for row in source_rows(part, stream):
                    count = row[ORDER] + 1
                    yield {**row, ORDER: offset + row[ORDER]}
            offset += count

    yield from finalize(chained(), source.annotation_name)


def _read_blocks(
    _seed: pa.Table, source: Source, fs: pafs.FileSystem, block_rows: int
) -> Iterator[pa.Table]:
    """map_batches fn (one task per source): stream the annotation file(s), yield row tables."""
    rows: list[dict[str, Any]] = []
    emitted = False
    for row in all_rows(source, fs):
        rows.append(row)
        if len(rows) >= block_rows:
            yield stage_table(rows)
            rows, emitted = [], True
    if rows or not emitted:
        yield stage_table(rows)


def read_source(config: DataConfig) -> ray.data.Dataset:
    """The source's rows as a lazy dataset (see the module docstring); checks it first."""
    source = plan_source(config)
    fs, _ = filesystem_for(source.annotation_uri, config.storage)
    block_rows = rows_per_block(source, config.ray.batch_size)
    seed = ray.data.from_items([{"annotation": source.annotation_uri}])
    ds = seed.map_batches(
        _read_blocks,
        batch_format="pyarrow",
        batch_size=None,
        fn_kwargs={"source": source, "fs": fs, "block_rows": block_rows},
        num_cpus=config.ray.num_cpus,
    )
    return ds.repartition(target_num_rows_per_block=block_rows)
