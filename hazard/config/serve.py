"""Config model of the served application (the `args` of `serve.app:build_app`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServedModel(_Strict):
    name: str = Field(description="Model name reported in responses and /v1/models.")
    version: str = Field(description="Model version reported in responses and /v1/models.")
    model_uri: str = Field(
        description="The model bundle, <stage output_dir>/model: a local folder, file:// or "
        "s3:// (fetched into $HAZARD_CACHE/bundles and verified)."
    )


class ServeConfig(_Strict):
    base: ServedModel = Field(description="Stage-1 five-class base model.")
    specialist: ServedModel = Field(
        description="Stage-2 high-risk specialist. Its bundle carries the fusion the calibration "
        "job fitted; without one the defaults of hazard.fusion apply (always consult it)."
    )
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
    max_batch_items: int = Field(32, ge=1, description="Most items in one /v1/score/batch call.")
    max_image_bytes: int = Field(10_000_000, ge=1, description="Largest encoded image (bytes).")
    max_image_pixels: int = Field(40_000_000, ge=1, description="Largest decoded image (w x h).")
    max_body_bytes: int = Field(
        64_000_000, ge=1, description="Largest request body; base64 adds a third to image bytes."
    )
    model_batch_size: int = Field(8, ge=1, description="Images per model forward (serve.batch).")
    model_batch_wait_s: float = Field(
        0.01, ge=0, description="How long a model replica waits to fill a batch."
    )
    retry_after_s: int = Field(2, ge=1, description="Retry-After sent with 503 when overloaded.")
