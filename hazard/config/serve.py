"""Config model of the served application (the `args` of `serve.app:build_app`), and the Ray
Serve config file that carries it.

Everything the application does is set here, in one spelling: `hazard serve --config`,
`serve run serve.app:build_app`, a Serve config file and the chart's RayService all pass these
fields unchanged. `serve_config` writes that file's document (the shape of a RayService's
`serveConfigV2`) for `hazard serve` and the demo.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, model_validator

from hazard.core.strict import StrictModel


class ServedModel(StrictModel):
    name: str = Field(description="Model name reported in responses and /v1/models.")
    version: str = Field(description="Model version reported in responses and /v1/models.")
    model_uri: str = Field(
        description="The model bundle, <stage output_dir>/model: a local folder, file:// or "
        "s3:// (fetched into $HAZARD_CACHE/bundles and verified)."
    )


class ModelReplicas(StrictModel):
    """One model deployment's replicas: Serve autoscaling bounds and resources."""

    min_replicas: int = Field(1, ge=1, description="Replicas kept when idle.")
    max_replicas: int = Field(1, ge=1, description="Most replicas under load.")
    target_ongoing_requests: float = Field(
        8, gt=0, description="Ongoing requests per replica the autoscaler aims for."
    )
    upscale_delay_s: float = Field(3.0, ge=0, description="Load must last this long to scale up.")
    downscale_delay_s: float = Field(
        30.0, ge=0, description="Idle time before a replica is removed."
    )
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved per replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved per replica (vllm: 1).")

    @model_validator(mode="after")
    def _bounds(self) -> ModelReplicas:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas {self.max_replicas} < min_replicas {self.min_replicas}")
        return self


class IngressReplicas(StrictModel):
    """The HTTP ingress: a fixed number of replicas (admission is shared out between them)."""

    num_replicas: int = Field(1, ge=1, description="Ingress replicas.")
    num_cpus: float = Field(0.5, ge=0, description="CPUs reserved per ingress replica.")


class Admission(StrictModel):
    """Load shedding at the ingress, counted in images.

    At most `model_batch_size x batches_in_flight x base replicas running` images are at the
    models at once; the rest wait in a queue as long as the measured scoring rate can empty it
    within `max_wait_s` (`max_queue_images` caps it; before the first measurement the queue holds
    `batches_in_flight` batches). A request that finds the queue full is answered 503 +
    Retry-After at once, and one that waits past `max_wait_s` is answered 503, never computed.
    """

    enabled: bool = Field(True, description="Off: every request is admitted (not for production).")
    batches_in_flight: int = Field(
        2,
        ge=1,
        description="Model batches per base replica in flight: one computing, the rest filling.",
    )
    max_wait_s: float = Field(
        2.0, gt=0, description="Deadline for a request waiting for admission (503 past it)."
    )
    max_queue_images: int = Field(
        256, ge=0, description="Hard cap on images waiting for admission per ingress replica."
    )


class VLLMOptions(StrictModel):
    """vLLM engine settings (engine: vllm); ignored by the transformers engine."""

    max_model_len: int = Field(
        4096, ge=256, description="Context length vLLM reserves KV cache for (prompt + image)."
    )
    gpu_memory_utilization: float = Field(
        0.85, gt=0, le=1, description="Fraction of GPU memory vLLM may take."
    )
    limit_mm_per_prompt: dict[str, int] = Field(
        default_factory=lambda: {"image": 1, "video": 0},
        description="Items per modality per prompt; a modality left out defaults to 999 in "
        "vLLM and is profiled, so video is 0.",
    )
    enforce_eager: bool = Field(False, description="Skip CUDA graph capture (faster start).")


class ServingCommon(StrictModel):
    """What every served application shares: engine, auth, request limits, admission, the
    ingress, health checks and logs (`ServeConfig`, the cascade; `TaskServeConfig`, one task)."""

    engine: Literal["transformers", "vllm"] = Field(
        "transformers", description="Inference engine: transformers (CPU/GPU) or vllm (GPU)."
    )
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Weights dtype.")
    auth: Literal["api_key", "disabled"] = Field(
        "api_key",
        description="api_key: every /v1 route needs the key of `api_key_env`, and a replica "
        "whose env lacks it (unset or empty) refuses to start; disabled: no auth (explicit only).",
    )
    api_key_env: str = Field(
        "HAZARD_API_KEY", min_length=1, description="Env var holding the API key (auth: api_key)."
    )
    max_image_bytes: int = Field(10_000_000, ge=1, description="Largest encoded image (bytes).")
    max_image_pixels: int = Field(40_000_000, ge=1, description="Largest decoded image (w x h).")
    max_body_bytes: int = Field(
        64_000_000, ge=1, description="Largest request body; base64 adds a third to image bytes."
    )
    model_batch_size: int = Field(8, ge=1, description="Images per model forward (serve.batch).")
    model_batch_wait_s: float = Field(
        0.01, ge=0, description="How long a model replica waits to fill a batch."
    )
    retry_after_s: int = Field(
        2,
        ge=1,
        description="Retry-After sent with 503 when overloaded. Admission's refusals scale it by "
        "1 + refused/completed images per second (clients turned away wait longer the more "
        "there are), up to max_retry_after_s.",
    )
    max_retry_after_s: int = Field(
        30, ge=1, description="Cap on the Retry-After of admission's refusals."
    )
    admission: Admission = Field(default_factory=Admission)
    ingress: IngressReplicas = Field(default_factory=IngressReplicas)
    health_check_period_s: float = Field(
        10, gt=0, description="How often Serve runs each model replica's health check."
    )
    health_check_timeout_s: float = Field(
        30, gt=0, description="A health check slower than this fails (the replica is replaced)."
    )
    health_probe_cache_s: float = Field(
        5, ge=0, description="A model's successful real forward counts as healthy this long."
    )
    vllm: VLLMOptions = Field(default_factory=VLLMOptions)
    log_encoding: Literal["JSON", "TEXT"] = Field(
        "JSON", description="Serve replica logs: JSON lines (with request_id) or text."
    )

    @model_validator(mode="after")
    def _retry_bounds(self) -> ServingCommon:
        if self.max_retry_after_s < self.retry_after_s:
            raise ValueError(
                f"max_retry_after_s {self.max_retry_after_s} < retry_after_s {self.retry_after_s}"
            )
        return self


class ServeConfig(ServingCommon):
    # The cascade application (`serve.app:build_app`). No docstring: it would become the
    # description in the chart's vendored copy of this schema (values.schema.json).

    base: ServedModel = Field(description="Stage-1 five-class base model.")
    specialist: ServedModel = Field(
        description="Stage-2 high-risk specialist. Its bundle carries the fusion the calibration "
        "job fitted; without one the defaults of hazard.core.fusion apply (always consult it)."
    )
    allow_calibration_engine_mismatch: bool = Field(
        False,
        description="Serve a specialist whose fusion was calibrated on another engine's scores "
        "(its hazard_model.json scoring_engine) than `engine`, with a warning; false: the app "
        "refuses to start. Set it only after checking that both engines' probabilities agree.",
    )
    max_batch_items: int = Field(32, ge=1, description="Most items in one /v1/score/batch call.")
    max_batch_pixels: int = Field(
        50_000_000, ge=1, description="Largest total of decoded pixels in one batch request."
    )
    base_replicas: ModelReplicas = Field(default_factory=ModelReplicas)
    specialist_replicas: ModelReplicas = Field(default_factory=ModelReplicas)

    @property
    def scorer_replicas(self) -> ModelReplicas:
        """The replicas admission's capacity follows: the base model's (it scores every image)."""
        return self.base_replicas


class TaskServeConfig(ServingCommon):
    """One bundle of any closed-answer task behind `POST /v1/answer` (`serve.task_app:
    build_task_app`): its labels or option letters, prompt and pixel limits come from the
    bundle's hazard_model.json."""

    model: ServedModel = Field(
        description="The bundle; its task must have a closed answer set ranked by likelihood."
    )
    max_images: int = Field(
        8,
        ge=1,
        description="Most images in one request for a multi-image task (others take one).",
    )
    replicas: ModelReplicas = Field(default_factory=ModelReplicas)

    @property
    def scorer_replicas(self) -> ModelReplicas:
        """The model's replicas (what admission's capacity follows)."""
        return self.replicas


APP_NAME = "hazard-cascade"  # the Serve application's name in a Serve config file
IMPORT_PATH = "serve.app:build_app"  # the builder Serve imports; ServeConfig is its `args`
TASK_APP_NAME = "hazard-task"  # the one-task application's name
TASK_IMPORT_PATH = "serve.task_app:build_task_app"  # its builder; TaskServeConfig is its `args`


def serve_config(cfg: ServingCommon, host: str = "0.0.0.0", port: int = 8000) -> dict:
    """A Ray Serve config with the application of `cfg`: the cascade for a ServeConfig, the
    one-task app for a TaskServeConfig."""
    task = isinstance(cfg, TaskServeConfig)
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [
            {
                "name": TASK_APP_NAME if task else APP_NAME,
                "route_prefix": "/",
                "import_path": TASK_IMPORT_PATH if task else IMPORT_PATH,
                "args": cfg.model_dump(),
            }
        ],
    }


def with_api_key(doc: dict, cfg: ServingCommon, environ: dict[str, str]) -> dict:
    """`doc` with the API key of this shell (if set) in the app's runtime env.

    Replicas read the key from their own environment. On a cluster started apart (`ray start`)
    they do not inherit this shell's, so the key travels in the app's `runtime_env`, as a
    Kubernetes Secret's does in the chart.
    """
    key = environ.get(cfg.api_key_env) if cfg.auth == "api_key" else None
    if not key:
        return doc
    app = dict(doc["applications"][0])
    app["runtime_env"] = {"env_vars": {cfg.api_key_env: key}}
    return {**doc, "applications": [app]}


def write_serve_config(doc: dict, path: Path) -> Path:
    """Write a Serve config document to `path`, readable by its owner only (it may hold a key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return path
