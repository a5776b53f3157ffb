"""Config models of the training stages (base and specialist) and the calibration job."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from hazard.config.storage import StorageConfig
from hazard.core.strict import StrictModel
from hazard.core.tasks import MIXED, TASKS


class ModelSpec(StrictModel):
    name: str = Field(description="Model name reported by the API, e.g. 'hazard-base-7b'.")
    path: str = Field(
        description="Checkpoint to fine-tune: a local folder or hub-style id loaded with "
        "from_pretrained, or 'tiny' for the project's cached tiny Qwen2.5-VL."
    )
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Weights dtype.")
    min_pixels: int | None = Field(
        None,
        ge=784,
        description="Fewest pixels per image the processor keeps (smaller images are upscaled); "
        "None: Qwen's 56x56, or max_pixels when that is smaller.",
    )
    max_pixels: int | None = Field(
        None,
        ge=784,
        description="Most pixels per image the processor keeps (Qwen2.5-VL spends one token per "
        "28x28 pixels); saved with the bundle so serving resizes alike. None keeps the "
        "checkpoint's own setting.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute the decoder's and vision blocks' activations in the backward "
        "pass (use_cache off): ~1/3 more compute for a fraction of the activation memory.",
    )

    @model_validator(mode="after")
    def _pixel_range(self):
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")
        return self


class LoraSpec(StrictModel):
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
    quantize: Literal["4bit"] | None = Field(
        None,
        description="QLoRA: load the frozen base in 4 bits (bitsandbytes NF4, double "
        "quantization, bf16 compute) and train the adapters over it; GPU only (the `gpu` "
        "extra), bf16, ZeRO stage 0-2. The bundle still merges the adapter into the full-"
        "precision base. None: the base in model.dtype.",
    )


class OptimSpec(StrictModel):
    task: str = Field(
        "corridor_risk",
        description="Task trained (hazard.core.tasks); every training row must be of it. "
        f"'{MIXED}': rows of several tasks (a `task: {MIXED}` data job), each trained and "
        "validated as its own task says; the bundle then answers each row's task.",
    )
    max_steps: int = Field(200, ge=1, description="Optimizer steps (all workers step together).")
    batch_size: int = Field(8, ge=1, description="Samples per worker per micro-batch.")
    grad_accum_steps: int = Field(
        1,
        ge=1,
        description="Micro-batches per optimizer step (effective batch = "
        "batch_size x grad_accum_steps x workers).",
    )
    lr: float = Field(3e-3, gt=0, description="Peak learning rate.")
    schedule: Literal["cosine", "linear"] = Field(
        "cosine", description="Decay after warm-up: cosine (to min_lr_ratio) or linear (to 0)."
    )
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Cosine floor as a share of lr.")
    warmup_steps: int = Field(10, ge=0, description="Linear warm-up steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_length: int = Field(512, ge=16, description="Token budget per sample; never truncated.")
    loss_turns: Literal["all", "last"] = Field(
        "last",
        description="Assistant turns that carry the loss in a conversation sample (tasks whose "
        "prompt comes from the row): 'last' (its answer) or 'all'; the other tokens are masked. "
        "A fixed-prompt sample has one assistant turn, so both are the same there.",
    )
    seed: int = Field(0, description="Seed for LoRA init and data order.")
    class_weights: dict[str, float] | Literal["balanced"] | None = Field(
        None, description="Per-label loss weights, 'balanced' (inverse frequency) or none."
    )
    high_risk_oversample: int = Field(
        1, ge=1, description="Copies of each high_risk training row (stage-2 enrichment)."
    )
    eval_batch_size: int = Field(16, ge=1, description="Samples per scoring forward pass.")
    log_every: int = Field(10, ge=1, description="Report training loss every N steps.")
    max_skip_fraction: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Share of training samples that may be skipped for exceeding max_length "
        "before the run fails.",
    )
    prefetch_batches: int = Field(
        2,
        ge=0,
        description="Micro-batches a loader process prepares (decode, processor, collate) "
        "ahead of the step; 0 prepares each on the step's thread, in the worker itself.",
    )

    @model_validator(mode="after")
    def _task_fits(self):
        spec = TASKS.get(self.task)
        if spec is None and self.task != MIXED:
            raise ValueError(
                f"unknown task {self.task!r}; known: {sorted(TASKS)} or {MIXED!r} (each row's own)"
            )
        if self.class_weights is not None and (spec is None or not spec.labels):
            raise ValueError(
                f"class_weights weigh the labels of a closed answer set; task {self.task!r} "
                "has an open answer"
            )
        if isinstance(self.class_weights, dict):
            unknown = set(self.class_weights) - set(spec.labels)
            if unknown:
                raise ValueError(f"class_weights has unknown labels {sorted(unknown)}")
        return self


METRICS = ("macro_f1", "balanced_accuracy", "accuracy", "high_risk_recall", "score")
CLASSIFICATION_METRICS = METRICS[:4]  # closed, likelihood-ranked tasks only


class EvalSpec(StrictModel):
    every_steps: int = Field(
        0,
        ge=0,
        description="Score the validation split every N optimizer steps (0: at the end "
        "only; the end is always scored).",
    )
    metric: Literal[METRICS] = Field(  # type: ignore[valid-type]
        "macro_f1",
        description="Validation metric that picks the best checkpoint (higher wins): a "
        "classification figure for a closed, likelihood-ranked task, or `score` (any task: its "
        "answer kind's headline figure, an error such as MAE negated). Left unset, a task with "
        "an open answer uses `score`.",
    )
    patience: int | None = Field(
        None, ge=1, description="Stop after this many evaluations without improvement."
    )
    min_delta: float = Field(0.0, ge=0, description="Smallest gain that counts as improvement.")


class CheckpointSpec(StrictModel):
    every_steps: int = Field(
        0,
        ge=0,
        description="Checkpoint every N optimizer steps besides every evaluation "
        "(0: only at evaluations and the end).",
    )
    keep: int = Field(
        3,
        ge=1,
        description="Checkpoints kept: the best by eval.metric (the latest is always "
        "kept too, for resuming).",
    )


class DeepSpeedSpec(StrictModel):
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="ZeRO stage.")
    bf16: bool = Field(False, description="Train in bf16 (GPU or CPUs with bf16 support).")
    gradient_clipping: float = Field(1.0, gt=0, description="Global grad-norm clip.")
    offload_optimizer: bool = Field(
        False, description="Keep optimizer state in CPU memory (ZeRO 1-3)."
    )
    offload_params: bool = Field(False, description="Keep parameters in CPU memory (ZeRO-3).")

    @model_validator(mode="after")
    def _offload_needs_zero(self):
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3")
        if self.offload_params and self.zero_stage != 3:
            raise ValueError(
                "offload_params needs zero_stage 3 (parameters are only partitioned there)"
            )
        return self


class ScalingSpec(StrictModel):
    num_workers: int = Field(2, ge=1, description="Ray Train workers (one process each).")
    use_gpu: bool = Field(False, description="One GPU per worker (NCCL) instead of CPU (gloo).")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs reserved per worker.")
    max_failures: int = Field(0, ge=0, description="Worker-group restarts before giving up.")


class TrainConfig(StrictModel):
    stage: Literal["base", "specialist"] = Field(description="Which cascade model this trains.")
    version: str = Field("0.1.0", description="Model version written into the output bundle.")
    data_dir: str = Field(description="Output folder of the data job (Parquet shards per split).")
    output_dir: str = Field(description="Where checkpoints, the merged model and metrics go.")
    run_name: str = Field(description="Ray Train run name; re-running with it resumes.")
    model: ModelSpec
    lora: LoraSpec = Field(default_factory=LoraSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    storage: StorageConfig = Field(
        default_factory=StorageConfig,
        description="S3 endpoint/region/credential variables for s3:// model, data, checkpoint "
        "and bundle URIs (defaults: the standard AWS environment variables).",
    )

    @model_validator(mode="after")
    def _quantize_fits(self):
        if self.lora.quantize is None:
            return self
        wrong = []
        if not self.scaling.use_gpu:
            wrong.append("scaling.use_gpu true (bitsandbytes' 4-bit kernels run on CUDA only)")
        if self.model.dtype != "bfloat16" or not self.deepspeed.bf16:
            wrong.append("model.dtype bfloat16 and deepspeed.bf16 true (the 4-bit compute dtype)")
        if self.deepspeed.zero_stage == 3:
            wrong.append("deepspeed.zero_stage 0-2 (ZeRO-3 does not shard 4-bit weights)")
        if wrong:
            raise ValueError(f"lora.quantize {self.lora.quantize!r} needs " + "; ".join(wrong))
        return self

    @model_validator(mode="after")
    def _metric_fits_task(self):
        spec = TASKS.get(self.optim.task)  # None: mixed
        labels = (spec.labels if spec else None) or ()
        closed = bool(labels) and spec.inference.mode == "likelihood"
        if not closed and self.eval.metric in CLASSIFICATION_METRICS:
            if "metric" not in self.eval.model_fields_set:
                self.eval.metric = "score"
            else:
                raise ValueError(
                    f"eval.metric {self.eval.metric} needs a closed, likelihood-ranked task; "
                    f"{self.optim.task!r} is scored by generation: use eval.metric score"
                )
        if self.eval.metric == "high_risk_recall" and "high_risk" not in labels:
            raise ValueError(
                f"eval.metric high_risk_recall needs a task with a high_risk "
                f"label; {self.optim.task!r} has {list(labels)}"
            )
        return self
