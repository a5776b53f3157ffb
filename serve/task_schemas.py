"""Request and response bodies of the one-task application (`serve.task_ingress`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from hazard.core.strict import StrictModel


class AnswerRequest(StrictModel):  # an unknown key (say `image`) is a 422, not ignored
    id: str | None = Field(None, max_length=256, description="Caller's id, echoed back.")
    images: list[str] = Field(
        min_length=1,
        description="The images, base64-encoded (PNG, JPEG or WEBP), in the order of the "
        "prompt's <image> places; one unless the task is multi-image (at most `max_images`).",
        json_schema_extra={"items": {"contentEncoding": "base64"}},
    )
    prompt: str | None = Field(
        None,
        min_length=1,
        max_length=20_000,
        description="The question with one <image> per image: required for a row-prompt task "
        "(multiple_choice), refused for a template task (the bundle's prompt is asked).",
    )
    system: str | None = Field(
        None, max_length=20_000, description="Optional system text (row-prompt tasks only)."
    )


class ModelVersion(BaseModel):
    name: str
    version: str


class AnswerResult(BaseModel):
    id: str | None = Field(description="The caller's id.")
    answer: str = Field(description="The most probable choice of the task's closed answer set.")
    probabilities: dict[str, float] = Field(
        description="Every choice (the bundle's labels or option letters, in its order), summing "
        "to 1."
    )
    task: str = Field(description="The bundle's task.")
    model: ModelVersion
    latency_ms: float = Field(ge=0, description="Decoded images to answer, milliseconds.")


class TaskModelInfo(BaseModel):
    name: str
    version: str
    uri: str
    task: str
    labels: list[str] = Field(description="The closed answer set, in score order.")
    prompt_source: Literal["template", "row"] = Field(
        description="template: the bundle's prompt is asked; row: each request brings its own."
    )
    multi_image: bool
    max_images: int = Field(description="Most images one request may carry.")
