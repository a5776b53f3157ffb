"""The model bundle: what a training stage writes and serving, calibration and the data job read.

<bundle>/      a local folder, file:// or s3:// prefix (a stage writes <output_dir>/model)
    config.json, model.safetensors (or shards + index)   the merged standard Qwen2.5-VL
    processor and tokenizer files                        with the image sizes it trained with
    adapter/adapter_model.safetensors, adapter config    the LoRA adapter (PEFT)
    hazard_model.json                                    `BundleMeta`, written last

`hazard_model.json` says what the weights answer (task, prompt, labels), how they were made
(base model, dtype, config, data lineage), how good they are (validation metrics and
predictions of the merged model), the fusion calibration fitted for the model pair (specialist
bundles), and holds a manifest {relative path: sha256} of every other file.

- `write_bundle`: the training stage, once the checkpoint files are in a local folder;
- `attach_fusion`: the calibration job, onto the specialist bundle (with the engine and dtype
  it scored with; `check_calibration` is what serving and batch scoring check against them);
- `open_bundle`: readers of the weights; a local bundle is verified in place, an s3:// one is
  fetched (checked file by file) into a local cache and reused from there;
- `read_meta`: readers of the metadata only (no weights are read or fetched).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import Field, ValidationError, field_validator, model_validator

from hazard.config.storage import StorageConfig
from hazard.core.cascade import FusionSpec
from hazard.core.strict import StrictModel
from hazard.core.tasks import MIXED, TASKS
from hazard.infra.images import QWEN_MAX_PIXELS
from hazard.infra.storage import (
    ChecksumMismatchError,
    StorageNotFoundError,
    cache_root,
    delete_file,
    download_dir,
    exists,
    join_uri,
    list_files,
    parse_uri,
    read_bytes,
    sha256_file,
    upload_dir,
    write_bytes,
)

BUNDLE_FILE = "hazard_model.json"
ADAPTER_FILE = "adapter/adapter_model.safetensors"
REQUIRED_FILES = ("config.json", ADAPTER_FILE)


class BundleError(ValueError):
    """The bundle is incomplete, altered or its metadata invalid; the message names the file."""


class NotABundleError(BundleError, FileNotFoundError):
    """The folder or prefix holds no hazard_model.json."""


class ValPredictions(StrictModel):
    """The merged model's label probabilities on the validation split, with the true labels."""

    probabilities: list[list[float]]
    labels: list[str]

    @model_validator(mode="after")
    def _same_length(self):
        if len(self.probabilities) != len(self.labels):
            raise ValueError(
                f"{len(self.probabilities)} probability rows but {len(self.labels)} labels"
            )
        return self


class BundleMeta(StrictModel):
    """The content of hazard_model.json (schema version 1)."""

    schema_version: Literal[1] = 1
    name: str
    version: str
    stage: Literal["base", "specialist"]
    task: str
    prompt: str
    labels: list[str] = Field(
        description="The closed answer set, in score order; [] for a task whose answer is open "
        "(generated and parsed)."
    )
    min_pixels: int | None = Field(
        None, ge=1, description="min_pixels training gave load_processor (None: its default)."
    )
    max_pixels: int | None = Field(
        None, ge=1, description="max_pixels training gave load_processor (None: its default)."
    )
    dtype: str = Field(description="dtype the merged weights were saved in.")
    base_model: str = Field(description="The checkpoint fine-tuned (id or URI).")
    adapter_sha256: str = Field(description=f"sha256 of {ADAPTER_FILE}.")
    data_lineage_id: str | None = None
    config: dict[str, Any] = Field(description="The training config.")
    metrics: dict[str, Any] = Field(description="Validation metrics of the merged model.")
    val_report: dict[str, Any]
    val_predictions: ValPredictions | None = None
    fusion: dict[str, Any] | None = Field(
        None, description="Calibrated fusion: FusionSpec.to_dict() plus fitted_on (specialist)."
    )
    scoring_engine: Literal["transformers", "vllm"] | None = Field(
        None,
        description="Engine whose scores the fusion was fitted on (set by calibration; None in "
        "bundles calibrated before it was recorded).",
    )
    scoring_dtype: str | None = Field(None, description="dtype calibration scored in.")
    manifest: dict[str, str] = Field(description="{relative path: sha256} of the other files.")

    @field_validator("labels")
    @classmethod
    def _unique(cls, labels: list[str]) -> list[str]:
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels repeat: {labels}")
        return labels

    @field_validator("fusion")
    @classmethod
    def _fusion(cls, fusion: dict | None) -> dict | None:
        if fusion is None:
            return None
        spec = FusionSpec.from_dict(fusion)  # ValueError on unknown keys or a bad θ
        return dict(spec.to_dict(), fitted_on=fusion.get("fitted_on"))

    @field_validator("manifest")
    @classmethod
    def _manifest(cls, manifest: dict[str, str]) -> dict[str, str]:
        for rel, sha in manifest.items():
            parts = rel.split("/")
            if rel == BUNDLE_FILE or any(p in ("", ".", "..") for p in parts) or "\\" in rel:
                raise ValueError(f"unsafe or reserved path {rel!r}")
            if len(sha) != 64 or not all(c in "0123456789abcdef" for c in sha):
                raise ValueError(f"{rel!r}: {sha!r} is not a lower-case sha256 hex digest")
        missing = [rel for rel in REQUIRED_FILES if rel not in manifest]
        if missing:
            raise ValueError(f"lists no {', '.join(missing)}")
        return manifest

    @model_validator(mode="after")
    def _consistent(self):
        if self.manifest.get(ADAPTER_FILE) != self.adapter_sha256:
            raise ValueError(f"adapter_sha256 differs from the manifest's {ADAPTER_FILE}")
        spec = TASKS.get(self.task)
        if not self.labels and self.task != MIXED and (spec is None or spec.labels is not None):
            raise ValueError(f"task {self.task!r} has a closed answer set: labels is empty")
        if self.val_predictions is not None:
            widths = {len(row) for row in self.val_predictions.probabilities}
            if widths - {len(self.labels)}:
                raise ValueError(
                    f"val_predictions rows have {sorted(widths)} values, not one per label"
                )
        return self

    def fusion_spec(self) -> FusionSpec:
        """The calibrated fusion, or the defaults (always consult) when none is attached."""
        return FusionSpec.from_dict(self.fusion) if self.fusion else FusionSpec()


class OpenedBundle(NamedTuple):
    """A verified bundle: `path` is a local folder for `from_pretrained`."""

    path: Path
    meta: BundleMeta
    uri: str


def write_bundle(
    local_dir: str | os.PathLike,
    *,
    out_uri: str | os.PathLike | None = None,
    storage: StorageConfig | None = None,
    **fields: Any,
) -> BundleMeta:
    """Seal the checkpoint files in `local_dir` as a bundle; returns its metadata.

    `fields` are the `BundleMeta` fields except `manifest` and `adapter_sha256`, which are
    computed from the files (every file under `local_dir` but hazard_model.json; config.json
    and adapter/adapter_model.safetensors must be there). hazard_model.json is written into
    `local_dir` (atomically). With `out_uri` (s3://, file:// or another folder) the bundle is
    also copied there: its hazard_model.json is removed first and written last, so a half-copied
    bundle never opens. When `out_uri` already held a bundle, its files the new one does not
    list are deleted; files in a folder that was not a bundle are left alone.
    """
    local = Path(local_dir).expanduser().absolute()
    if not local.is_dir():
        raise BundleError(f"{local}: not a folder")
    computed = {"manifest", "adapter_sha256"} & set(fields)
    if computed:
        raise TypeError(f"write_bundle computes {sorted(computed)}; do not pass them")
    manifest = {
        e.relpath: sha256_file(local / e.relpath)
        for e in list_files(local)
        if e.relpath != BUNDLE_FILE
    }
    meta = BundleMeta(**fields, manifest=manifest, adapter_sha256=manifest.get(ADAPTER_FILE, ""))
    data = _dump(meta)
    write_bytes(local / BUNDLE_FILE, data)
    if out_uri is not None and parse_uri(out_uri) != parse_uri(local):
        _publish(local, os.fspath(out_uri), manifest, data, storage)
    return meta


def _publish(local: Path, out: str, manifest: dict, data: bytes, storage) -> None:
    """Copy the sealed bundle to `out`, hazard_model.json last."""
    meta_uri = join_uri(out, BUNDLE_FILE)
    present = {e.relpath for e in list_files(out, storage)} if exists(out, storage) else set()
    was_bundle = BUNDLE_FILE in present
    if was_bundle:
        delete_file(meta_uri, storage)
    uploaded = upload_dir(local, out, storage, exclude={BUNDLE_FILE})
    if uploaded != manifest:
        raise BundleError(f"{local} changed while it was copied to {out}; write it again")
    if was_bundle:  # the old bundle's files the new one does not list
        for rel in sorted(present - set(manifest) - {BUNDLE_FILE}):
            delete_file(join_uri(out, rel), storage)
    write_bytes(meta_uri, data, storage)


def read_meta(uri: str | os.PathLike, storage: StorageConfig | None = None) -> BundleMeta:
    """The bundle's metadata alone (files are neither read nor verified)."""
    return _parse(_meta_bytes(os.fspath(uri), storage), join_uri(uri, BUNDLE_FILE))


def open_bundle(
    uri: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    storage: StorageConfig | None = None,
    verify: bool = True,
) -> OpenedBundle:
    """The bundle at `uri` as a local folder, checked against its manifest.

    Local paths and file:// are used in place; with `verify` every file's sha256 is checked
    (a full read of the checkpoint) and a missing, altered or unlisted file raises
    (ChecksumMismatchError or BundleError, naming it). s3:// bundles are fetched into
    `cache_dir` (default `$HAZARD_CACHE/bundles/<hash of URI and manifest>`) with
    `download_dir`, which checks every file and reuses cached files that still match, whatever
    `verify` says; the cached hazard_model.json is refreshed on every open.
    """
    uri = os.fspath(uri)
    scheme, path = parse_uri(uri)
    data = _meta_bytes(uri, storage)
    meta = _parse(data, join_uri(uri, BUNDLE_FILE))
    if scheme == "file":
        if verify:
            _verify(Path(path), meta.manifest, uri)
        return OpenedBundle(Path(path), meta, uri)
    cache = default_cache_dir(uri, meta.manifest) if cache_dir is None else Path(cache_dir)
    cache = download_dir(uri, cache, meta.manifest, storage)  # absolute
    write_bytes(cache / BUNDLE_FILE, data)
    return OpenedBundle(cache, meta, uri)


def attach_fusion(
    uri: str | os.PathLike,
    fusion: dict,
    *,
    scoring_engine: str | None = None,
    scoring_dtype: str | None = None,
    storage: StorageConfig | None = None,
) -> BundleMeta:
    """Record the calibrated fusion (and the engine and dtype calibration scored with) in the
    specialist bundle's hazard_model.json; the files and manifest are unchanged."""
    meta = read_meta(uri, storage)
    if meta.stage != "specialist":
        raise BundleError(f"{uri} is a {meta.stage} bundle; fusion belongs to the specialist")
    raw = dict(
        meta.model_dump(),
        fusion=fusion,
        scoring_engine=scoring_engine,
        scoring_dtype=scoring_dtype,
    )
    updated = _parse(json.dumps(raw).encode(), f"fusion for {uri}")
    write_bytes(join_uri(uri, BUNDLE_FILE), _dump(updated), storage)
    return updated


class CalibrationMismatch(BundleError):
    """The fusion was fitted on another engine's scores than the one that would apply it."""


def check_calibration(
    meta: BundleMeta, uri: str, engine: str, dtype: str, allow_engine_mismatch: bool = False
) -> list[str]:
    """Warnings about applying the fusion of the specialist bundle `meta` (at `uri`) to scores
    of `engine` in `dtype`; CalibrationMismatch when it was fitted on another engine's scores,
    unless `allow_engine_mismatch` (then a warning). The escalation threshold and correction
    are fitted on one engine's probabilities; another engine's kernels shift them.

    A fusion that records no engine (calibrated before it was recorded) is accepted with a
    warning: what produced it is unknown, and refusing would stop every older bundle. A dtype
    difference is a warning."""
    if meta.fusion is None:
        return [f"{uri} has no calibrated fusion: using the defaults (always consult it)"]
    warnings = []
    if meta.scoring_engine is None:
        warnings.append(
            f"the fusion of {uri} does not record the engine it was calibrated with (calibrated "
            f"before engines were recorded); applying it to {engine} scores: calibrate again "
            "to record it"
        )
    elif meta.scoring_engine != engine:
        what = (
            f"the fusion of {uri} was calibrated on {meta.scoring_engine} engine scores, but "
            f"the scores here come from the {engine} engine"
        )
        if not allow_engine_mismatch:
            raise CalibrationMismatch(
                f"{what}; calibrate with engine={engine}, use engine={meta.scoring_engine}, or "
                "set allow_calibration_engine_mismatch: true to accept it"
            )
        warnings.append(f"{what} (accepted: allow_calibration_engine_mismatch is true)")
    if meta.scoring_dtype and meta.scoring_dtype != dtype:
        warnings.append(
            f"the fusion of {uri} was calibrated on {meta.scoring_dtype} scores; scoring in {dtype}"
        )
    return warnings


def default_cache_dir(uri: str, manifest: dict[str, str]) -> Path:
    """`$HAZARD_CACHE/bundles/<16 hex>`: one folder per bundle URI and content."""
    scheme, path = parse_uri(uri)
    listing = json.dumps(manifest, sort_keys=True).encode()
    key = f"{scheme}://{path}\n{hashlib.sha256(listing).hexdigest()}"
    return cache_root() / "bundles" / hashlib.sha256(key.encode()).hexdigest()[:16]


def _dump(meta: BundleMeta) -> bytes:
    return (meta.model_dump_json(indent=2) + "\n").encode()


def _meta_bytes(uri: str, storage: StorageConfig | None) -> bytes:
    try:
        return read_bytes(join_uri(uri, BUNDLE_FILE), storage)
    except StorageNotFoundError:
        raise NotABundleError(
            f"{uri} is not a hazard-cascade model bundle (no {BUNDLE_FILE}); "
            "point model_uri at <stage output_dir>/model"
        ) from None


def _parse(data: bytes, where: str) -> BundleMeta:
    """BundleMeta of hazard_model.json bytes; BundleError naming each bad field."""
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{where}: not valid JSON ({exc})") from None
    try:
        return BundleMeta.model_validate(raw)
    except ValidationError as exc:
        bad = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'top level'}: {e['msg']}" for e in exc.errors()
        )
        old = isinstance(raw, dict) and "schema_version" not in raw
        hint = " (written before bundle schema 1: train the stage again)" if old else ""
        raise BundleError(f"{where}: invalid bundle metadata{hint}: {bad}") from None


def _verify(root: Path, manifest: dict[str, str], uri: str) -> None:
    """Every manifest file present with its sha256, and no other file but hazard_model.json."""
    found = {e.relpath for e in list_files(root)} - {BUNDLE_FILE}
    missing, extra = sorted(set(manifest) - found), sorted(found - set(manifest))
    if missing:
        raise BundleError(f"{uri}: files in the manifest are missing: {', '.join(missing)}")
    if extra:
        raise BundleError(f"{uri}: files not in the manifest: {', '.join(extra)}")
    for rel, expected in sorted(manifest.items()):
        actual = sha256_file(root / rel)
        if actual != expected:
            raise ChecksumMismatchError(
                f"{join_uri(uri, rel)}: sha256 {actual} does not match the manifest's {expected}"
            )


def pixel_budget(metas: Iterable[BundleMeta]) -> int:
    """Pixels an image is downscaled to before scoring (the serving ingress and the batch job
    alike): the largest of the bundles' training `max_pixels` (Qwen's processor default where a
    bundle names none); each model's processor resizes further to its own."""
    return max(meta.max_pixels or QWEN_MAX_PIXELS for meta in metas)
