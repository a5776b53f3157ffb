"""Config of the batch scoring job (`ray_jobs/score_dataset.py`, `configs/*/score.yaml`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from hazard.storage import StorageConfig


class ScoreDatasetConfig(BaseModel):
    """Score every image of a folder or Parquet shards with the cascade, offline."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        description="A folder of images (PNG/JPEG/WEBP, searched recursively), Parquet shards "
        "with the sample schema's `id` and `images` columns (a folder, one .parquet file), or "
        "an s3:// prefix of either."
    )
    format: Literal["auto", "folder", "parquet"] = Field(
        "auto",
        description="'folder': image files, ids = paths relative to `source`; 'parquet': rows, "
        "ids = the `id` column; 'auto': parquet when `source` holds .parquet files, else folder.",
    )
    base_uri: str = Field(description="Stage-1 model bundle (<output_dir>/model).")
    specialist_uri: str = Field(
        description="Stage-2 model bundle; its hazard_model.json carries the fitted fusion."
    )
    output_dir: str = Field(
        description="Folder or s3:// prefix for submission.csv, predictions.parquet and "
        "summary.json."
    )
    batch_size: int = Field(8, ge=1, description="Images per forward pass (per actor call).")
    num_actors: int = Field(1, ge=1, description="Scoring actors (each holds both models).")
    cpus_per_actor: float = Field(1, gt=0, description="CPUs reserved by each scoring actor.")
    gpus_per_actor: float = Field(0, ge=0, description="GPUs reserved by each scoring actor.")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Weights dtype to score in (calibration's scoring_dtype)."
    )
    max_image_bytes: int = Field(10_000_000, ge=1, description="Largest encoded image (bytes).")
    max_image_pixels: int = Field(40_000_000, ge=1, description="Largest decoded image (w x h).")
    progress_every_s: float = Field(10.0, gt=0, description="Seconds between progress log lines.")
    storage: StorageConfig = Field(default_factory=StorageConfig)
