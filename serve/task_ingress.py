"""The HTTP ingress of the one-task application: `POST /v1/answer` over a bundle of any
closed-answer task, with the cascade's auth, limits, admission and decoding
(`serve.ingress_base`), /healthz, /readyz, /v1/models and /openapi.json.

No `from __future__ import annotations`: see `serve.ingress`."""

import asyncio
import logging
import time

from fastapi import FastAPI, Request, Response
from PIL import Image
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from hazard.config.serve import TaskServeConfig
from hazard.core.schema import IMAGE_PLACEHOLDER
from hazard.core.tasks import get_task
from hazard.model.bundle_answerer import turns_json
from serve.asgi import ApiError, CountRequests, api_error_response, media_type, parse_body
from serve.auth import authorize
from serve.ingress_base import IngressBase
from serve.openapi import AUTH_ERRORS, BODY_ERRORS, OVERLOAD, SECURITY, install_openapi, json_body
from serve.schemas import Health, Readiness
from serve.task_schemas import AnswerRequest, AnswerResult, ModelVersion, TaskModelInfo

log = logging.getLogger("ray.serve")

task_app = FastAPI(
    title="hazard-task",
    description="One closed-answer task (labels or option letters from the model bundle), "
    "answered by likelihood over its answer set.",
    version="0.1.0",
)
task_app.add_exception_handler(ApiError, api_error_response)
install_openapi(task_app, (AnswerRequest,))
task_app.add_middleware(CountRequests)


@serve.deployment
@serve.ingress(task_app)
class TaskAPI(IngressBase):
    """HTTP ingress of one task: checks a request against the task, then asks the model."""

    SCORER_DEPLOYMENT = "TaskModel"

    def __init__(self, model: DeploymentHandle, config: dict, task: str, pixel_budget: int):
        self.model = model
        self._setup(TaskServeConfig.model_validate(config), pixel_budget)
        self.spec = get_task(task)
        self.max_images = self.cfg.max_images if self.spec.multi_image else 1

    def _conversation(self, req: AnswerRequest) -> str | None:
        """The turns `req` asks (JSON), None for a template task; a 413/422 for a request the
        task cannot take."""
        n = len(req.images)
        if n > self.max_images:
            raise self._refused(
                "too_many_images",
                413,
                f"{n} images; task {self.spec.name} takes at most {self.max_images}",
            )
        if self.spec.prompt_source != "row":
            if req.prompt is not None or req.system is not None:
                raise ApiError(
                    422,
                    f"task {self.spec.name} asks the model bundle's own prompt: leave out "
                    "`prompt` and `system`",
                )
            return None
        if req.prompt is None:
            raise ApiError(
                422,
                f"task {self.spec.name} needs `prompt`: the question with one {IMAGE_PLACEHOLDER}"
                " per image",
            )
        places = req.prompt.count(IMAGE_PLACEHOLDER)
        if places != n:
            raise ApiError(
                422, f"prompt has {places} {IMAGE_PLACEHOLDER} place(s) but {n} image(s) were sent"
            )
        if req.system and IMAGE_PLACEHOLDER in req.system:
            raise ApiError(422, f"system must not hold {IMAGE_PLACEHOLDER}: images go in prompt")
        return turns_json(req.prompt, req.system)

    @task_app.get("/healthz", summary="Process alive", response_model=Health)
    async def healthz(self) -> Health:
        return Health(status="ok")

    @task_app.get(
        "/readyz",
        summary="The model loaded and answering",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "The model is not ready"}},
    )
    async def readyz(self, response: Response) -> Readiness:
        ok = time.monotonic() < self._ready_until
        if not ok:
            grey = Image.new("RGB", (112, 112), (128, 128, 128))
            ok = await self._probe("model", self.model.answer.remote([grey], None))
        if ok:
            self._ready_until = time.monotonic() + 5
        response.status_code = 200 if ok else 503
        state = "ready" if ok else "not ready"
        return Readiness(status=state, ready=ok, models={"model": state})

    @task_app.get(
        "/v1/models",
        summary="The served model and its task",
        response_model=TaskModelInfo,
        responses={**AUTH_ERRORS, **OVERLOAD},
        openapi_extra={"security": SECURITY},
    )
    async def models(self, request: Request) -> TaskModelInfo:
        authorize(request, self.api_key)
        try:
            return await self.model.describe.remote()
        except (BackPressureError, DeploymentUnavailableError) as exc:
            raise self._overloaded(exc) from exc

    @task_app.post(
        "/v1/answer",
        summary="Answer one sample (1..max_images base64 images, a prompt for row-prompt tasks)",
        response_model=AnswerResult,
        responses={**BODY_ERRORS, **AUTH_ERRORS, **OVERLOAD},
        openapi_extra=json_body(AnswerRequest),
    )
    async def answer(self, request: Request) -> AnswerResult:
        authorize(request, self.api_key)
        ctype = media_type(request)
        if ctype != "application/json":
            raise ApiError(415, f"unsupported media type {ctype or '(none)'}; send JSON")
        req = parse_body(AnswerRequest, await self._body(request))
        conversation = self._conversation(req)
        async with self._admitted(len(req.images)):
            images = await asyncio.gather(*(self._decode_b64(text) for text in req.images))
            start = time.perf_counter()
            try:
                probs = await self.model.answer.remote(list(images), conversation)
            except (BackPressureError, DeploymentUnavailableError) as exc:
                raise self._overloaded(exc) from exc
            done = time.perf_counter()
        self.metrics.stage("total", done - start)
        return AnswerResult(
            id=req.id,
            answer=max(probs, key=probs.__getitem__),
            probabilities=probs,
            task=self.spec.name,
            model=ModelVersion(name=self.cfg.model.name, version=self.cfg.model.version),
            latency_ms=round((done - start) * 1000, 2),
        )
