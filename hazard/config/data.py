"""Config of the data preparation job (`ray_jobs/prepare_data.py`, `configs/*/data.yaml`).

Every model forbids unknown keys, so a typo in a YAML file or a `--set` override is an error.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hazard.storage import StorageConfig
from hazard.tasks import get_task

ImageFormat = Literal["PNG", "JPEG", "WEBP"]
AugmentOp = Literal["hflip", "rotate", "crop"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceConfig(_Strict):
    """Where the labelled images come from: a local folder or an `s3://` prefix."""

    format: Literal["folder", "llamafactory", "llava"] = Field(
        "folder",
        description="Source layout. 'folder': <uri>/<labels_file>, a CSV `image,label[,split]` "
        "with image paths relative to the folder. 'llamafactory': <uri>/dataset_info.json, whose "
        "entry `dataset` names the JSON/JSONL file and its formatting (sharegpt or alpaca) and "
        "column/tag mappings. 'llava': <uri>/<annotations>, a JSON list of {id, image, "
        "conversations: [{from: human|gpt, value}]}, image paths relative to <uri>/<image_dir>.",
    )
    uri: str = Field(
        description="The source folder: a local path, file:// or s3://bucket/prefix URI."
    )
    labels_file: str = Field("labels.csv", description="folder: the CSV file inside the folder.")
    dataset: str | None = Field(
        None,
        description="llamafactory: the dataset_info.json entry to import (None: the only entry, "
        "or an error listing the entries).",
    )
    annotations: str = Field(
        "annotations.json", description="llava: the annotation file inside the folder."
    )
    image_dir: str = Field(
        ".", description="llava/llamafactory: folder the image paths are relative to."
    )


class SplitConfig(_Strict):
    """How rows whose source gives no split are assigned one (seeded, stratified by answer)."""

    fractions: dict[str, float] = Field(
        default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1},
        description="Share of each split; keys among train/val/test, values summing to 1.",
    )
    seed: int = Field(0, description="Seed of the assignment; same seed and rows, same split.")

    @field_validator("fractions")
    @classmethod
    def _valid_fractions(cls, fractions: dict[str, float]) -> dict[str, float]:
        unknown = set(fractions) - {"train", "val", "test"}
        if unknown:
            raise ValueError(f"unknown split(s) {sorted(unknown)}; use train, val, test")
        if any(v < 0 for v in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
            raise ValueError(f"fractions must be >= 0 and sum to 1, got {fractions}")
        return fractions


class ValidationConfig(_Strict):
    """Which images the decode stage accepts, and how it brings them to the model's budget.

    Images over `pixel_budget` are downscaled (aspect kept), not rejected; only images past the
    decode guard (`max_bytes`, `max_side`, `max_pixels`) are quarantined.
    """

    min_side: int = Field(32, ge=1, description="Reject ('too_small') if width or height is below.")
    max_side: int = Field(
        16384, ge=1, description="Decode guard: reject ('too_large') if a side is above."
    )
    max_pixels: int = Field(
        64_000_000,
        ge=1,
        description="Decode guard: reject ('too_large') images of more pixels (decompression "
        "bombs) before decoding them.",
    )
    max_bytes: int = Field(
        20 * 1024 * 1024,
        ge=1,
        description="Reject ('too_many_bytes') encoded images larger than this (bytes).",
    )
    allowed_formats: list[ImageFormat] = Field(
        default_factory=lambda: ["PNG", "JPEG", "WEBP"],
        min_length=1,
        description="Encoded formats accepted as PIL names them; others: 'unsupported_format'.",
    )
    pixel_budget: int | None = Field(
        1_003_520,
        ge=1,
        description="Downscale images of more pixels to at most this many, aspect kept (the "
        "model's max_pixels; Qwen2.5-VL's default is 1280*28*28). None keeps full size.",
    )
    encode_format: Literal["auto", "JPEG", "PNG", "WEBP"] = Field(
        "auto",
        description="Format of re-encoded images (rotated by EXIF, downscaled, converted or "
        "augmented): 'auto' keeps JPEG for JPEG sources and PNG otherwise. Images that need no "
        "change are stored byte for byte.",
    )
    jpeg_quality: int = Field(90, ge=50, le=100, description="JPEG/WEBP quality when re-encoding.")

    @model_validator(mode="after")
    def _sides_ordered(self) -> ValidationConfig:
        if self.min_side > self.max_side:
            raise ValueError(f"min_side ({self.min_side}) > max_side ({self.max_side})")
        return self


class AugmentConfig(_Strict):
    """Geometric augmentation of the train split (val/test are never augmented)."""

    copies: int = Field(
        2, ge=0, le=64, description="Augmented rows added per train sample (0 disables)."
    )
    ops: list[AugmentOp] = Field(
        default_factory=lambda: ["hflip", "rotate", "crop"],
        description="Ops to draw from, applied in this order: hflip (probability 0.5 when "
        "other ops are listed), rotate and crop (always, with random parameters).",
    )
    rotate_max_deg: float = Field(
        10.0, ge=0.0, le=45.0, description="Rotation angle drawn uniformly in ±this (degrees)."
    )
    crop_min_area: float = Field(
        0.85,
        ge=0.25,
        le=1.0,
        description="Crop keeps an area fraction drawn in [this, 1], then resizes back.",
    )
    seed: int = Field(0, description="Seed; each copy is drawn from (seed, sample id, copy index).")

    @field_validator("ops")
    @classmethod
    def _unique_ops(cls, ops: list[str]) -> list[str]:
        if len(set(ops)) != len(ops):
            raise ValueError(f"ops must not repeat: {ops}")
        return ops

    @model_validator(mode="after")
    def _ops_when_enabled(self) -> AugmentConfig:
        if self.copies > 0 and not self.ops:
            raise ValueError("copies > 0 needs at least one op")
        return self


class ShardConfig(_Strict):
    """Parquet output layout."""

    rows_per_file: int = Field(256, ge=1, description="Rows per Parquet shard (last one smaller).")


class RayConfig(_Strict):
    """Resources of the Ray Data map stages."""

    num_cpus: float | None = Field(
        None, gt=0, description="CPUs reserved per map task (None: Ray's default, 1)."
    )
    batch_size: int = Field(32, ge=1, description="Rows per map_batches batch (and input block).")


class ConsistencyConfig(_Strict):
    """Optional image-text consistency filter of augmented rows, scored by a model bundle."""

    enabled: bool = Field(False, description="Run the filter (needs model_uri).")
    model_uri: str | None = Field(
        None, description="Model bundle that scores rows (a stage's output_dir/model)."
    )
    margin: float = Field(
        0.2,
        ge=0.0,
        le=1.0,
        description="Drop an augmented row when p(its label) is more than this below its "
        "parent's p(label).",
    )
    batch_size: int = Field(16, ge=1, description="Rows per scoring batch.")
    num_actors: int = Field(1, ge=1, description="Scoring actors (each loads the model once).")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs reserved per scoring actor.")

    @model_validator(mode="after")
    def _model_when_enabled(self) -> ConsistencyConfig:
        if self.enabled and not self.model_uri:
            raise ValueError("consistency.enabled needs consistency.model_uri")
        return self


class DataConfig(_Strict):
    """The data preparation job: import, decode/validate, split, augment, filter, write."""

    source: SourceConfig = Field(description="Where the labelled images come from.")
    output_dir: str = Field(
        description="Output folder or s3:// prefix: {split}/*.parquet, quarantine.parquet, "
        "lineage.json."
    )
    task: str = Field("corridor_risk", description="Task name (hazard.tasks): prompt and labels.")
    storage: StorageConfig = Field(
        default_factory=StorageConfig,
        description="S3 endpoint/region overrides (credentials only from the environment).",
    )
    split: SplitConfig = Field(
        default_factory=SplitConfig, description="Split assignment of rows without one."
    )
    validation: ValidationConfig = Field(
        default_factory=ValidationConfig, description="Image acceptance and pixel budget."
    )
    augment: AugmentConfig = Field(
        default_factory=AugmentConfig, description="Train-split augmentation."
    )
    consistency: ConsistencyConfig = Field(
        default_factory=ConsistencyConfig, description="Consistency filter of augmented rows."
    )
    shards: ShardConfig = Field(default_factory=ShardConfig, description="Parquet sharding.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray Data resources.")

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        get_task(task)
        return task
