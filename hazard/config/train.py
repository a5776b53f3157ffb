"""Config models of the training stages (base and specialist) and the calibration job."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hazard.labels import RISK_LABELS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    name: str = Field(description="Model name reported by the API, e.g. 'hazard-base-7b'.")
    path: str = Field(
        description="Checkpoint to fine-tune: a local folder or hub-style id loaded with "
        "from_pretrained, or 'tiny' for the project's cached tiny Qwen2.5-VL."
    )
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Weights dtype.")
    max_pixels: int | None = Field(
        None,
        ge=784,
        description="Most pixels per image the processor keeps (Qwen2.5-VL spends one token per "
        "28x28 pixels); saved with the bundle so serving resizes alike. None keeps the "
        "checkpoint's own setting.",
    )


class LoraSpec(_Strict):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    language_targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Language-model linear layers that get LoRA adapters.",
    )
    vision_attention: bool = Field(
        False, description="Also adapt the vision tower's attention (qkv, proj)."
    )
    vision_merger: bool = Field(
        False, description="Also adapt the vision-language merger MLP (the stage-2 amplifier)."
    )


class OptimSpec(_Strict):
    task: str = Field("corridor_risk", description="Task whose prompt and labels are trained.")
    max_steps: int = Field(200, ge=1, description="Optimizer steps (all workers step together).")
    batch_size: int = Field(8, ge=1, description="Samples per worker per step.")
    lr: float = Field(3e-3, gt=0, description="Peak learning rate.")
    warmup_steps: int = Field(10, ge=0, description="Linear warm-up steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_length: int = Field(512, ge=16, description="Token budget per sample; never truncated.")
    seed: int = Field(0, description="Seed for LoRA init and data order.")
    class_weights: dict[str, float] | Literal["balanced"] | None = Field(
        None, description="Per-label loss weights, 'balanced' (inverse frequency) or none."
    )
    high_risk_oversample: int = Field(
        1, ge=1, description="Copies of each high_risk training row (stage-2 enrichment)."
    )
    eval_batch_size: int = Field(16, ge=1, description="Samples per scoring forward pass.")
    log_every: int = Field(10, ge=1, description="Report training loss every N steps.")

    @model_validator(mode="after")
    def _known_labels(self):
        if isinstance(self.class_weights, dict):
            unknown = set(self.class_weights) - set(RISK_LABELS)
            if unknown:
                raise ValueError(f"class_weights has unknown labels {sorted(unknown)}")
        return self


class DeepSpeedSpec(_Strict):
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="ZeRO stage.")
    bf16: bool = Field(False, description="Train in bf16 (GPU or CPUs with bf16 support).")
    gradient_clipping: float = Field(1.0, gt=0, description="Global grad-norm clip.")


class ScalingSpec(_Strict):
    num_workers: int = Field(2, ge=1, description="Ray Train workers (one process each).")
    use_gpu: bool = Field(False, description="One GPU per worker (NCCL) instead of CPU (gloo).")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs reserved per worker.")
    max_failures: int = Field(0, ge=0, description="Worker-group restarts before giving up.")


class TrainConfig(_Strict):
    stage: Literal["base", "specialist"] = Field(description="Which cascade model this trains.")
    version: str = Field("0.1.0", description="Model version written into the output bundle.")
    data_dir: str = Field(description="Output folder of the data job (Parquet shards per split).")
    output_dir: str = Field(description="Where checkpoints, the merged model and metrics go.")
    run_name: str = Field(description="Ray Train run name; re-running with it resumes.")
    model: ModelSpec
    lora: LoraSpec = Field(default_factory=LoraSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
