"""Config of the batch scoring job (`ray_jobs/score_dataset.py`, `configs/*/score.yaml`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from hazard.config.serve import VLLMOptions
from hazard.config.storage import StorageConfig
from hazard.core.strict import StrictModel


class ScoreDatasetConfig(StrictModel):
    """Score every image of a folder or Parquet shards offline: with the cascade
    (`base_uri` + `specialist_uri`), or with one bundle of any closed-answer task (`model_uri`;
    `pipelines.score_task`). Exactly one of the two modes."""

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
    base_uri: str | None = Field(
        None, description="Cascade mode: the stage-1 model bundle (<output_dir>/model)."
    )
    specialist_uri: str | None = Field(
        None,
        description="Cascade mode: the stage-2 model bundle; its hazard_model.json carries the "
        "fitted fusion.",
    )
    model_uri: str | None = Field(
        None,
        description="Task mode: one bundle of any closed-answer task (its labels or option "
        "letters ranked by likelihood); a row-prompt task (multiple_choice) needs a prepared "
        "Parquet split with `conversation`, a template task takes a folder too.",
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
        "float32",
        description="Weights dtype to score in (calibration's scoring_dtype): bfloat16 on GPU; "
        "kept as set on CPU (an actor without a GPU scores on CPU, with a log line).",
    )
    engine: Literal["transformers", "vllm"] = Field(
        "transformers",
        description="Engine that scores (both models in each actor): the one the fusion was "
        "calibrated with (the specialist bundle's scoring_engine); vllm needs a GPU per actor.",
    )
    allow_calibration_engine_mismatch: bool = Field(
        False,
        description="Score with a fusion calibrated on another engine's scores than `engine`, "
        "with a warning; false: the job refuses before scoring.",
    )
    vllm: VLLMOptions = Field(
        default_factory=lambda: VLLMOptions(gpu_memory_utilization=0.42),
        description="vLLM settings (engine: vllm); the two engines of an actor share its GPU, "
        "so each takes at most half of it.",
    )
    max_image_bytes: int = Field(10_000_000, ge=1, description="Largest encoded image (bytes).")
    max_image_pixels: int = Field(40_000_000, ge=1, description="Largest decoded image (w x h).")
    progress_every_s: float = Field(10.0, gt=0, description="Seconds between progress log lines.")
    storage: StorageConfig = Field(default_factory=StorageConfig)

    @property
    def task_mode(self) -> bool:
        """Scoring one task's bundle (`model_uri`), not the cascade."""
        return self.model_uri is not None

    @model_validator(mode="after")
    def _one_mode(self) -> ScoreDatasetConfig:
        cascade = (self.base_uri is not None, self.specialist_uri is not None)
        if self.model_uri is not None and any(cascade):
            raise ValueError(
                "give model_uri (one task's bundle) or base_uri + specialist_uri (the cascade), "
                "not both"
            )
        if self.model_uri is None and not all(cascade):
            raise ValueError(
                "give base_uri and specialist_uri (the cascade) or model_uri (one task's bundle)"
            )
        return self

    @model_validator(mode="after")
    def _vllm_fits(self) -> ScoreDatasetConfig:
        if self.engine != "vllm":
            return self
        if self.gpus_per_actor < 1:
            raise ValueError(f"engine vllm needs gpus_per_actor >= 1, not {self.gpus_per_actor}")
        if self.task_mode:  # one engine per actor
            return self
        if self.vllm.gpu_memory_utilization > 0.5:
            raise ValueError(
                f"vllm.gpu_memory_utilization {self.vllm.gpu_memory_utilization} > 0.5: the base "
                "and the specialist engines of an actor share one GPU"
            )
        return self
