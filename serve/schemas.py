"""The HTTP API's request and response bodies (docs/architecture.md, "HTTP API").

Each response field is declared here once: the routes of `serve.ingress` return these models,
so the JSON body, its validation and /openapi.json all come from the same declaration. A field
left unset (only `ScoreResult.explanation`, without `?explain=true`) is left out of the body.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Role = Literal["base", "specialist"]


# -- requests: read by the routes themselves (multipart or JSON), declared in /openapi.json ------
class ScoreItem(BaseModel):
    id: str | None = Field(None, max_length=256, description="Caller's id, echoed back.")
    image: str = Field(
        description="The image, base64-encoded (PNG, JPEG or WEBP); line breaks are ignored.",
        json_schema_extra={"contentEncoding": "base64"},
    )


class BatchRequest(BaseModel):
    items: list[ScoreItem] = Field(
        description="Images to score, answered in order (at most `max_batch_items`)."
    )


# -- responses ----------------------------------------------------------------------------------
class ErrorBody(BaseModel):
    detail: str = Field(description="What was wrong, for a human.")


class ModelRef(BaseModel):
    role: Role
    name: str
    version: str


class Explanation(BaseModel):
    text: str = Field(description="The base model's rationale, generated after the label.")
    label_in_text: str | None = Field(
        description="The risk label hazard.core.answers reads in the text (null: none)."
    )
    agrees: bool = Field(description="Whether that label is the scored `risk_level`.")


class ScoreResult(BaseModel):
    id: str | None = Field(description="The caller's id (JSON) or the upload's file name.")
    risk_level: str = Field(description="The most probable label after fusion.")
    probabilities: dict[str, float] = Field(
        description="All five labels in contract order, summing to 1."
    )
    hazard_score: float = Field(ge=0, le=1, description="Expected severity in [0, 1].")
    escalated: bool = Field(description="Whether the specialist was consulted.")
    models: list[ModelRef] = Field(description="The base, plus the specialist when escalated.")
    latency_ms: float = Field(ge=0, description="Decoded image to fused answer, milliseconds.")
    explanation: Explanation | None = Field(
        None, description="Only with `?explain=true`: a rationale and whether it agrees."
    )


class ItemError(BaseModel):
    status: int = Field(description="The status a single-image request would have had (400/413).")
    detail: str


class BatchItemError(BaseModel):
    id: str | None
    error: ItemError


class BatchResult(BaseModel):
    results: list[ScoreResult | BatchItemError] = Field(description="One per item, in order.")


class ModelInfo(BaseModel):
    role: Role
    name: str
    version: str
    labels: list[str]
    uri: str


class ModelsResult(BaseModel):
    models: list[ModelInfo]
    labels: list[str] = Field(description="The five risk labels in contract order.")
    fusion: dict[str, Any] = Field(description="{correction, theta} of the served fusion.")


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    ready: bool
    models: dict[str, Literal["ready", "not ready"]] = Field(
        description="Per role (base, specialist): whether it answered the probe."
    )
