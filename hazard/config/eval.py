"""Config of the evaluation job (`ray_jobs/eval.py`, `configs/tiny/eval.yaml`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from hazard.config.serve import VLLMOptions
from hazard.config.storage import StorageConfig
from hazard.core.schema import SPLITS
from hazard.core.strict import StrictModel
from hazard.core.tasks import get_task


class EvalConfig(StrictModel):
    """Score one prepared split with a model; write metrics, predictions, answers, a report."""

    model: str = Field(
        description="A model bundle (a training stage's <output_dir>/model: local, file:// or "
        "s3://; its task, prompt, labels and pixel limits are used), or a local base model "
        "folder (a Qwen2.5-VL checkpoint), alone (no fine-tuning) or with `adapter`."
    )
    adapter: str | None = Field(
        None,
        description="A local LoRA adapter folder (PEFT: adapter_config.json and "
        "adapter_model.safetensors, e.g. a checkpoint's adapter/) merged into the base "
        "model `model` before scoring.",
    )
    baseline: str | None = Field(
        None,
        description="A second model scored on the same split for comparison (typically the "
        "base model the bundle was fine-tuned from): a bundle or a local base model folder. "
        "Its figures go beside the model's in metrics.json and report.html.",
    )
    task: str | None = Field(
        None,
        description="Task (hazard.core.tasks) every row must be of (None: each row's own "
        "`task`); with a bundle, None or the bundle's own task.",
    )
    data: str = Field(
        description="The data job's output_dir (folder or s3://): <data>/<split>/*.parquet "
        "with the sample schema."
    )
    split: str = Field("test", description=f"Split to score, one of {', '.join(SPLITS)}.")
    out: str = Field(
        description="Folder or s3:// prefix for metrics.json, predictions.parquet, "
        "answers/<dataset>.json and report.html."
    )
    dataset: str | None = Field(
        None,
        description="Name of the answers file, answers/<dataset>.json, when the split holds "
        "one task (None: the task's name); a split of several tasks gets one file per task, "
        "answers/<dataset>_<task>.json (or <task>.json).",
    )
    min_pixels: int | None = Field(
        None, ge=1, description="Base model only: the processor's min_pixels (None: its own)."
    )
    max_pixels: int | None = Field(
        None, ge=1, description="Base model only: the processor's max_pixels (None: its own)."
    )
    batch_size: int = Field(8, ge=1, description="Samples per forward pass (per actor call).")
    num_actors: int = Field(1, ge=1, description="Scoring actors (each holds the model).")
    cpus_per_actor: float = Field(1, gt=0, description="CPUs reserved by each scoring actor.")
    gpus_per_actor: float = Field(0, ge=0, description="GPUs reserved by each scoring actor.")
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Weights dtype to score in: bfloat16 on GPU."
    )
    engine: Literal["transformers", "vllm"] = Field(
        "transformers",
        description="Engine that scores a bundle; vllm needs a GPU per actor and takes bundles of "
        "fixed-prompt, likelihood-ranked tasks (TaskSpec.ranks_fixed_prompt). Base models, "
        "adapters and generated answers are scored with transformers.",
    )
    vllm: VLLMOptions = Field(
        default_factory=VLLMOptions, description="vLLM settings (engine: vllm)."
    )
    progress_every_s: float = Field(10.0, gt=0, description="Seconds between progress log lines.")
    storage: StorageConfig = Field(default_factory=StorageConfig)

    @field_validator("split")
    @classmethod
    def _split(cls, split: str) -> str:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        return split

    @field_validator("task")
    @classmethod
    def _task(cls, task: str | None) -> str | None:
        if task is not None:
            get_task(task)  # ValueError naming the known tasks
        return task

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, name: str | None) -> str | None:
        if name is not None and (not name or "/" in name or name in (".", "..")):
            raise ValueError(f"dataset {name!r} must be a plain file name (no '/')")
        return name

    @model_validator(mode="after")
    def _vllm_fits(self) -> EvalConfig:
        if self.engine == "vllm" and self.gpus_per_actor < 1:
            raise ValueError(f"engine vllm needs gpus_per_actor >= 1, not {self.gpus_per_actor}")
        if self.engine == "vllm" and self.baseline is not None:
            raise ValueError("engine vllm scores one bundle; score the baseline in its own run")
        return self
