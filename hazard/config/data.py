"""Config of the data preparation job (`ray_jobs/prepare_data.py`, `configs/*/data.yaml`).

Every model forbids unknown keys, so a typo in a YAML file or a `--set` override is an error.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hazard.tasks import get_task

ImageFormat = Literal["PNG", "JPEG", "WEBP"]
AugmentOp = Literal["hflip", "rotate", "crop"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceConfig(_Strict):
    """Where the labelled images come from."""

    format: Literal["folder"] = Field(
        "folder",
        description="Source layout. 'folder': <uri>/<labels_file> (CSV `image,label,split`, "
        "image paths relative to the folder) plus the image files. S3 is not supported yet.",
    )
    uri: str = Field(description="Path of the source folder (relative paths: from the cwd).")
    labels_file: str = Field("labels.csv", description="Name of the CSV file inside the folder.")


class ValidationConfig(_Strict):
    """Which images the validate stage accepts; the others are quarantined with a reason."""

    min_side: int = Field(32, ge=1, description="Reject ('too_small') if width or height is below.")
    max_side: int = Field(
        4096, ge=1, description="Reject ('too_large') if width or height is above."
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


class DataConfig(_Strict):
    """The data preparation job: import, validate, augment, write."""

    source: SourceConfig = Field(description="Where the labelled images come from.")
    output_dir: str = Field(
        description="Output folder: {split}/*.parquet, quarantine.parquet, lineage.json."
    )
    task: str = Field("corridor_risk", description="Task name (hazard.tasks): prompt and labels.")
    validation: ValidationConfig = Field(
        default_factory=ValidationConfig, description="Image acceptance rules."
    )
    augment: AugmentConfig = Field(
        default_factory=AugmentConfig, description="Train-split augmentation."
    )
    shards: ShardConfig = Field(default_factory=ShardConfig, description="Parquet sharding.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray Data resources.")

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        get_task(task)
        return task
