"""Probe and decode stages: read every image of a row, check it, decode it to model-ready bytes.

The job reads each image twice so that no stage ever holds the whole data set's pixels:
- `probe_stage` (before dedup and split, materialized; light: no images kept) reads each file,
  hashes it and checks it without decoding a pixel (`hazard.infra.images.probe_image`), so that
  dedup and split decide on the rows that can be used;
- `decode_stage` (streaming, fused with augment and write) reads the files again and decodes
  them; a row whose files changed since the probe is rejected.

Needs: in-flight rows (STAGE_SCHEMA) from import with `_image_uris` set (file:// or s3://, read
through hazard.infra.storage); rows already rejected pass through untouched.
Adds, on kept rows: `content_hash` = `hazard.core.schema.content_hash` of the ORIGINAL file bytes
(probe and decode), so byte-identical files are found as duplicates whatever re-encoding does;
`images` (decode) = per image, the bytes to store (`hazard.infra.images.bytes_to_store`: the
original
file when decoding changed nothing, else upright, RGB, within `validation.pixel_budget`,
re-encoded per `encode_format`/`jpeg_quality`).
Rewrites (decode), on kept rows marked `_box_units: "pixels"` (FLARE's detection answers,
pipelines/common.py): `answer` and the last assistant turn of `conversation` in 0-1000
(pipelines/box_units.py), from the first image's width and height as stored, before any
resizing; the mark is then cleared.
Rejects (stage "decode"): `missing_file`, `unreadable` (any other storage or OS error, e.g. a
NUL byte in the path, a directory, no permission; or the file changed between probe and
decode), and the decode reasons of hazard.infra.images: `too_many_bytes` (judged from the file size,
before reading), `undecodable`, `unsupported_format`, `too_small`, `too_large`,
`aspect_ratio` (200:1 or more once within the pixel budget: the models refuse it). All but
`undecodable` for a file whose header and structure pass (e.g. a truncated JPEG) are found by
the probe. Every image of a row must pass; for rows with several images the detail names the
one that failed. Pixel box rows: `box_outside_image` (a box beyond the first image), and
`bad_answer` for a box under one 0-1000 unit once rounded or a first image with an EXIF
orientation (rotated or mirrored when decoded: which frame its boxes are in is unknown).

`probe_row` and `decode_row` are plain functions (no Ray), e.g. for benchmarks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import ray

from hazard.config.data import DataConfig, ValidationConfig
from hazard.config.storage import StorageConfig
from hazard.core.schema import content_hash
from hazard.infra import storage
from hazard.infra.images import (
    Decoded,
    ImageRejected,
    bytes_to_store,
    check_byte_count,
    decode_image,
    probe_image,
)
from pipelines.box_units import BoxOutsideImage, answer_to_norm1000
from pipelines.common import (
    BOX_UNITS,
    IMAGE_URIS,
    PIXELS,
    REJECT_REASON,
    map_rows,
    reject,
    stage_table,
)

STAGE = "decode"


def read_image(
    uri: str,
    max_bytes: int,
    config: StorageConfig | None = None,
    filesystem: pafs.FileSystem | None = None,
) -> bytes:
    """The file's bytes; `too_many_bytes` (ImageTooLarge) from its size, before reading, if it
    is over `max_bytes`. Never reads more than max_bytes + 1 bytes."""
    with storage.open_input(uri, config, filesystem) as fh:
        size = fh.size()
        check_byte_count(size, max_bytes)
        return fh.read(min(size, max_bytes) + 1)


def _guards(rules: ValidationConfig) -> dict[str, Any]:
    """The checks `probe_image` and `decode_image` share, from the validation rules."""
    return {
        "max_bytes": rules.max_bytes,
        "max_pixels": rules.max_pixels,
        "max_side": rules.max_side,
        "min_side": rules.min_side,
        "allowed_formats": rules.allowed_formats,
        "pixel_budget": rules.pixel_budget,
    }


def _decode(data: bytes, rules: ValidationConfig) -> tuple[bytes, Decoded]:
    """The bytes to store for one source image under `rules` and its decoding; ImageRejected."""
    decoded = decode_image(data, **_guards(rules))
    return bytes_to_store(data, decoded, rules.encode_format, rules.jpeg_quality), decoded


def decode_for_storage(data: bytes, rules: ValidationConfig) -> bytes:
    """The bytes to store for one source image under `rules`; raises ImageRejected."""
    return _decode(data, rules)[0]


def probe_for_storage(data: bytes, rules: ValidationConfig) -> None:
    """Raise the ImageRejected that `decode_for_storage` would, short of a full decode."""
    probe_image(data, **_guards(rules))


def _read_row(
    row: dict[str, Any],
    config: DataConfig,
    filesystems: dict[str, pafs.FileSystem] | None,
    check: Callable[[bytes, ValidationConfig], Any],
) -> dict[str, Any]:
    """`row` with `content_hash` set and, per image, `check(bytes, rules)` in `images`; or the
    row rejected by the first image that cannot be read or fails `check`."""
    if row.get(REJECT_REASON):
        return row
    uris = row.get(IMAGE_URIS) or []
    if not uris:
        return reject(row, "undecodable", "row has no image", STAGE)
    rules = config.validation
    originals, results = [], []
    for i, uri in enumerate(uris):
        where = f"image {i} of {len(uris)} ({uri}): " if len(uris) > 1 else ""
        try:
            fs = (filesystems or {}).get(storage.parse_uri(uri)[0])
            data = read_image(uri, rules.max_bytes, config.storage, fs)
            results.append(check(data, rules))
        except FileNotFoundError:  # StorageNotFoundError included
            return reject(row, "missing_file", f"{where}not found: {uri!r}", STAGE)
        except ImageRejected as exc:
            return reject(row, exc.reason, f"{where}{exc}", STAGE)
        except (OSError, ValueError) as exc:  # StorageError, InvalidURIError, pyarrow errors
            return reject(row, "unreadable", f"{where}{type(exc).__name__}: {exc}", STAGE)
        originals.append(data)
    return {**row, "images": results, "content_hash": content_hash(originals)}


def probe_row(
    row: dict[str, Any],
    config: DataConfig,
    filesystems: dict[str, pafs.FileSystem] | None = None,
) -> dict[str, Any]:
    """One in-flight row with its images read, hashed and probed (no images kept), or the row
    rejected. `filesystems`: {scheme: filesystem} built once by the caller; an image URI of
    another scheme gets one built for it."""
    out = _read_row(row, config, filesystems, probe_for_storage)
    return out if out is row else {**out, "images": []}


def decode_row(
    row: dict[str, Any],
    config: DataConfig,
    filesystems: dict[str, pafs.FileSystem] | None = None,
) -> dict[str, Any]:
    """One in-flight row with its images read, decoded and set, or the row rejected. A row
    probed before (`content_hash` set) is rejected `unreadable` if its files changed since.
    A pixel box row gets its answer in 0-1000 (module docstring)."""
    decodings: list[Decoded] = []

    def check(data: bytes, rules: ValidationConfig) -> bytes:
        stored, decoded = _decode(data, rules)
        decodings.append(decoded)
        return stored

    out = _read_row(row, config, filesystems, check)
    probed = row.get("content_hash")
    if probed and out.get(REJECT_REASON) is None and out["content_hash"] != probed:
        detail = f"its files changed while the job ran (content hash {probed[:12]}… before)"
        return reject(out, "unreadable", detail, STAGE)
    if out.get(BOX_UNITS) == PIXELS and out.get(REJECT_REASON) is None:
        return boxes_to_norm1000(out, decodings[0])
    return out


def boxes_to_norm1000(row: dict[str, Any], first: Decoded) -> dict[str, Any]:
    """A kept pixel box row with its answer and last assistant turn in 0-1000 of its `first`
    image (pipelines.box_units.answer_to_norm1000), or rejected; the mark cleared."""
    if row["answer"] is None:
        return {**row, BOX_UNITS: None}
    if first.oriented:
        detail = (
            f"pixel boxes on an image with EXIF orientation {first.orientation} (rotated or "
            "mirrored when decoded): which frame the boxes are in is unknown"
        )
        return reject(row, "bad_answer", detail, STAGE)
    width, height = first.original_size
    try:
        answer = answer_to_norm1000(row["answer"], width, height)
    except BoxOutsideImage as e:
        return reject(row, "box_outside_image", f"{row['answer']} {e}", STAGE)
    except ValueError as e:
        return reject(row, "bad_answer", f"{row['answer']} {e}", STAGE)
    turns = json.loads(row["conversation"])
    last = max(i for i, t in enumerate(turns) if t["role"] == "assistant")
    turns[last] = {**turns[last], "content": answer}
    conversation = json.dumps(turns, ensure_ascii=False)
    return {**row, "answer": answer, "conversation": conversation, BOX_UNITS: None}


def _map_batch(batch: pa.Table, row_fn, config: DataConfig, filesystems) -> pa.Table:
    """map_batches fn: `row_fn` (probe_row or decode_row) on every row of the batch."""
    return stage_table([row_fn(row, config, filesystems) for row in batch.to_pylist()])


def _stage(ds: ray.data.Dataset, row_fn, config: DataConfig) -> ray.data.Dataset:
    """`row_fn` on every row in parallel (lazy; rows in == rows out).

    The source's filesystem is built here, on the driver, and shipped to the tasks: images
    live under the source (import rejects paths outside it), and workers then need not see the
    AWS variables the driver was given.
    """
    fs, _ = storage.filesystem_for(config.source.uri, config.storage)
    filesystems = {storage.parse_uri(config.source.uri)[0]: fs}
    return map_rows(
        ds, _map_batch, config.ray, row_fn=row_fn, config=config, filesystems=filesystems
    )


def probe_stage(ds: ray.data.Dataset, config: DataConfig) -> ray.data.Dataset:
    """The rows read, hashed and probed in parallel, without their images (lazy)."""
    return _stage(ds, probe_row, config)


def decode_stage(ds: ray.data.Dataset, config: DataConfig) -> ray.data.Dataset:
    """The rows with images decoded in parallel (lazy)."""
    return _stage(ds, decode_row, config)
