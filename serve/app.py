"""The served application: base → (escalate?) → specialist → fusion, behind one HTTP API.

`build_app(args) -> Application` builds it from a `ServeConfig` dict, so the same app runs from
Python (`serve.run(build_app(cfg))`), from `serve run serve.app:build_app …` and from a
RayService `import_path: serve.app:build_app`. The HTTP contract is docs/architecture.md's.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import os
import time
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import BaseModel, Field, ValidationError
from pydantic.json_schema import models_json_schema
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from hazard.bundle import read_meta
from hazard.cascade import FusionSpec, combine, needs_specialist
from hazard.config.serve import ServeConfig, ServedModel
from hazard.images import ImageTooLarge, InvalidImage, decode_image
from hazard.labels import HIGH_RISK, RISK_LABELS

log = logging.getLogger("ray.serve")

# Qwen2.5-VL's image processor (transformers' smart_resize) refuses images whose long side is
# 200 times the short side or more; checked at the ingress so such input is a 400, not a 500
# raised inside a model replica (where it would also fail the other images of its batch).
MAX_ASPECT_RATIO = 200


class ApiError(Exception):
    """An error answered as JSON `{"detail": …}` with its HTTP status."""

    def __init__(self, status: int, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


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


# -- response models: declared in /openapi.json (the routes return plain dicts of this shape) ---
class ErrorBody(BaseModel):
    detail: str = Field(description="What was wrong, for a human.")


class ModelRef(BaseModel):
    role: Literal["base", "specialist"]
    name: str
    version: str


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


class ItemError(BaseModel):
    status: int = Field(description="The status a single-image request would have had (400/413).")
    detail: str


class BatchItemError(BaseModel):
    id: str | None
    error: ItemError


class BatchResult(BaseModel):
    results: list[ScoreResult | BatchItemError] = Field(description="One per item, in order.")


class ModelInfo(BaseModel):
    role: Literal["base", "specialist"]
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


def _err(description: str, headers: dict | None = None) -> dict:
    """An OpenAPI response entry with the JSON error body."""
    entry: dict = {"model": ErrorBody, "description": description}
    if headers:
        entry["headers"] = headers
    return entry


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer"},
    }
}
_AUTH_ERRORS = {
    401: _err(
        "API key missing or wrong",
        {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    ),
}
_OVERLOAD = {503: _err("A model deployment is overloaded or unavailable", _RETRY_AFTER)}
_BODY_ERRORS = {
    400: _err("Invalid base64, undecodable image, side ratio >= 200:1, malformed multipart"),
    413: _err("Body, image bytes, image pixels or batch items over a limit"),
    415: _err("Content-Type is not one the route takes"),
    422: _err("JSON that does not fit the schema; multipart without a `file` field"),
}
_SECURITY = [{"bearer": []}, {"apiKey": []}]
_JSON_ITEM = {"schema": {"$ref": "#/components/schemas/ScoreItem"}}
_SCORE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "The image (PNG, JPEG or WEBP); its file name "
                            "becomes the result's id.",
                        }
                    },
                },
                "encoding": {"file": {"contentType": "image/png, image/jpeg, image/webp"}},
            },
            "application/json": _JSON_ITEM,
        },
    },
    "security": _SECURITY,
}
_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchRequest"}}},
    },
    "security": _SECURITY,
}


@serve.deployment(
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=16,
    max_queued_requests=64,
    health_check_period_s=10,
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8},
)
class ModelScorer:
    """One model replica: batches images and returns label probabilities."""

    def __init__(
        self,
        model: dict,
        engine: str,
        dtype: str,
        batch_size: int,
        batch_wait_s: float,
        required_labels: tuple[str, ...] = (),
    ):
        from serve.engines import make_engine

        self.model = ServedModel.model_validate(model)
        self.engine = make_engine(engine, self.model.model_uri, dtype)
        missing = [label for label in required_labels if label not in self.engine.labels]
        if missing:  # fail the deployment now, not every request later
            raise ValueError(
                f"model {self.model.name} ({self.model.model_uri}) lacks labels "
                f"{missing}; its bundle has {list(self.engine.labels)}"
            )
        self.score_batch.set_max_batch_size(batch_size)
        self.score_batch.set_batch_wait_timeout_s(batch_wait_s)

    def describe(self) -> dict:
        return {
            "name": self.model.name,
            "version": self.model.version,
            "labels": list(self.engine.labels),
            "uri": self.model.model_uri,
        }

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def score_batch(self, images: list[list[Image.Image]]) -> list[dict[str, float]]:
        probs = await asyncio.get_running_loop().run_in_executor(None, self.engine.score, images)
        return [dict(zip(self.engine.labels, map(float, row), strict=True)) for row in probs]

    async def score(self, images: list[Image.Image]) -> dict[str, float]:
        return await self.score_batch(images)

    def check_health(self) -> None:
        if self.engine is None:
            raise RuntimeError("engine not loaded")


class MissingApiKey(RuntimeError):
    """Auth is on (`auth: api_key`) but the key's env var is unset or empty."""


def replica_api_key(cfg: ServeConfig, environ) -> str | None:
    """The API key the ingress compares against; None only with `auth: disabled`.

    Fails closed: with `auth: api_key` an unset or empty `api_key_env` raises MissingApiKey."""
    if cfg.auth == "disabled":
        log.warning("API key auth is disabled by the config (auth: disabled)")
        return None
    key = environ.get(cfg.api_key_env, "")
    if not key:
        raise MissingApiKey(
            f"auth is api_key but the env var {cfg.api_key_env} is unset or empty; set it "
            "(the chart reads it from apiKeySecret; `hazard serve` passes on its shell's) "
            "or set `auth: disabled` in the serving config"
        )
    return key


def _media_type(request: Request) -> str:
    """The request's media type, lower-case, without parameters ('' when absent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _replay(body: bytes):
    """An ASGI `receive` that hands over an already-read body once.

    Defined above the deployments: Serve pickles a deployment class when it is decorated, with
    the module globals its methods use that exist at that point.
    """
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


app = FastAPI(
    title="hazard-cascade",
    description="Corridor fire-hazard scoring: base model, high-risk specialist, fusion.",
    version="0.1.0",
)


@app.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)


def _openapi() -> dict:
    """FastAPI's document plus what the routes read themselves: the request bodies' schemas
    (ScoreItem, BatchRequest) and the two ways to send the API key."""
    if app.openapi_schema is None:
        doc = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        _, defs = models_json_schema(
            [(ScoreItem, "validation"), (BatchRequest, "validation")],
            ref_template="#/components/schemas/{model}",
        )
        components = doc.setdefault("components", {})
        components.setdefault("schemas", {}).update(defs["$defs"])
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "The API key."},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
        app.openapi_schema = doc
    return app.openapi_schema


app.openapi = _openapi


@serve.deployment(
    ray_actor_options={"num_cpus": 0.1},
    max_ongoing_requests=64,
    max_queued_requests=256,
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 32},
)
@serve.ingress(app)
class HazardAPI:
    """HTTP ingress: auth, limits, decoding, the cascade and the response contract."""

    def __init__(
        self, base: DeploymentHandle, specialist: DeploymentHandle, config: dict, fusion: dict
    ):
        self.base, self.specialist = base, specialist
        self.cfg = ServeConfig.model_validate(config)
        self.fusion = FusionSpec.from_dict(fusion)
        self.api_key = replica_api_key(self.cfg, os.environ)
        self._ready_until = 0.0

    # -- request plumbing -------------------------------------------------------------------
    def _authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = (
            header[7:]
            if header.lower().startswith("bearer ")
            else request.headers.get("x-api-key", "")
        )
        if not given or not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise ApiError(401, "missing or wrong API key", {"WWW-Authenticate": "Bearer"})

    async def _body(self, request: Request) -> bytes:
        """The whole body, refused (413) as soon as it passes the limit, declared or not."""
        limit = self.cfg.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body over {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():  # chunked uploads carry no content-length
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"request body over {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _decode(self, data: bytes) -> Image.Image:
        try:  # decoding up to max_image_pixels is CPU work: keep it off the event loop
            decoded = await asyncio.to_thread(  # upright (EXIF orientation), RGB, full size
                decode_image,
                data,
                max_bytes=self.cfg.max_image_bytes,
                max_pixels=self.cfg.max_image_pixels,
                pixel_budget=None,  # ServeConfig has no pixel budget; the processor resizes
            )
        except ImageTooLarge as exc:
            raise ApiError(413, str(exc)) from exc
        except InvalidImage as exc:
            raise ApiError(400, str(exc)) from exc
        img = decoded.image
        w, h = img.size
        if max(w, h) >= MAX_ASPECT_RATIO * min(w, h):
            raise ApiError(
                400, f"image is {w}x{h}; the aspect ratio must be under {MAX_ASPECT_RATIO}:1"
            )
        return img

    async def _decode_b64(self, text: str) -> Image.Image:
        text = "".join(text.split())  # base64 wrapped in lines (as `base64` prints it) is fine
        if len(text) > (self.cfg.max_image_bytes + 2) // 3 * 4:
            raise ApiError(413, f"image over {self.cfg.max_image_bytes} bytes")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(400, f"image is not valid base64: {exc}") from exc
        return await self._decode(data)

    @staticmethod
    def _parse(model: type[BaseModel], body: bytes) -> BaseModel:
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            raise ApiError(
                422,
                "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()
                ),
            ) from exc

    async def _call(self, handle: DeploymentHandle, image: Image.Image) -> dict[str, float]:
        try:
            return await handle.score.remote([image])
        except (BackPressureError, DeploymentUnavailableError) as exc:
            raise self._overloaded(exc) from exc

    def _overloaded(self, exc: Exception) -> ApiError:
        log.warning("model deployment overloaded or unavailable: %r", exc)
        return ApiError(
            503,
            "a model is overloaded or unavailable, retry later",
            {"Retry-After": str(self.cfg.retry_after_s)},
        )

    async def _score(self, item_id: str | None, image: Image.Image) -> dict:
        start = time.perf_counter()
        p_base = await self._call(self.base, image)
        p_high = None
        if needs_specialist(p_base, self.fusion):
            p_high = (await self._call(self.specialist, image))[HIGH_RISK]
        result = combine(p_base, p_high, self.fusion)
        models = [{"role": "base", "name": self.cfg.base.name, "version": self.cfg.base.version}]
        if result.escalated:
            models.append(
                {
                    "role": "specialist",
                    "name": self.cfg.specialist.name,
                    "version": self.cfg.specialist.version,
                }
            )
        return {
            "id": item_id,
            "risk_level": result.risk_level,
            "probabilities": result.probabilities,
            "hazard_score": result.hazard_score,
            "escalated": result.escalated,
            "models": models,
            "latency_ms": round((time.perf_counter() - start) * 1000, 2),
        }

    # -- routes -----------------------------------------------------------------------------
    @app.get("/healthz", summary="Process alive", response_model=Health)
    async def healthz(self) -> dict:
        return {"status": "ok"}

    async def _probe(self, role: str, handle: DeploymentHandle) -> bool:
        """Whether `role`'s model scores a grey 112x112 image into finite probabilities summing
        to 1 within 30 s; why not goes to the log only (no exception text or paths to callers)."""
        probe = Image.new("RGB", (112, 112), (128, 128, 128))
        try:
            probs = await asyncio.wait_for(handle.score.remote([probe]), timeout=30)
        except Exception as exc:  # any failure means not ready
            log.warning("readyz: %s model not ready: %r", role, exc)
            return False
        values = list(probs.values())
        if not (np.isfinite(values).all() and abs(sum(values) - 1) < 1e-3):
            log.warning("readyz: %s model answered bad probabilities %s", role, probs)
            return False
        return True

    @app.get(
        "/readyz",
        summary="Both models loaded and answering",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "A model is not ready"}},
    )
    async def readyz(self) -> JSONResponse:
        roles = ("base", "specialist")
        if time.monotonic() < self._ready_until:
            ok = [True, True]
        else:
            ok = await asyncio.gather(
                self._probe("base", self.base), self._probe("specialist", self.specialist)
            )
        ready = all(ok)
        if ready:
            self._ready_until = time.monotonic() + 5
        body = {
            "status": "ready" if ready else "not ready",
            "ready": ready,
            "models": {r: "ready" if o else "not ready" for r, o in zip(roles, ok, strict=True)},
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get(
        "/v1/models",
        summary="Served models and fusion parameters",
        response_model=None,
        responses={200: {"model": ModelsResult}, **_AUTH_ERRORS, **_OVERLOAD},
        openapi_extra={"security": _SECURITY},
    )
    async def models(self, request: Request) -> dict:
        self._authorize(request)
        try:
            base, spec = await asyncio.gather(
                self.base.describe.remote(), self.specialist.describe.remote()
            )
        except (BackPressureError, DeploymentUnavailableError) as exc:
            raise self._overloaded(exc) from exc
        return {
            "models": [dict(base, role="base"), dict(spec, role="specialist")],
            "labels": list(RISK_LABELS),
            "fusion": self.fusion.to_dict(),
        }

    @app.post(
        "/v1/score",
        summary="Score one image (multipart field `file` or JSON base64)",
        response_model=None,
        responses={200: {"model": ScoreResult}, **_BODY_ERRORS, **_AUTH_ERRORS, **_OVERLOAD},
        openapi_extra=_SCORE_BODY,
    )
    async def score(self, request: Request) -> dict:
        self._authorize(request)
        ctype = _media_type(request)
        if ctype == "application/json":
            item = self._parse(ScoreItem, await self._body(request))
            return await self._score(item.id, await self._decode_b64(item.image))
        if ctype == "multipart/form-data":
            body = await self._body(request)  # enforces the body limit before parsing
            async with Request(request.scope, _replay(body)).form(
                max_files=4, max_fields=16
            ) as form:  # parse errors are Starlette HTTPException(400) → {"detail": …}
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise ApiError(422, "multipart body needs a file field named 'file'")
                data = await upload.read(self.cfg.max_image_bytes + 1)
                name = upload.filename
            return await self._score(name, await self._decode(data))
        raise ApiError(
            415,
            f"unsupported media type {ctype or '(none)'}; send "
            "multipart/form-data or application/json",
        )

    @app.post(
        "/v1/score/batch",
        summary="Score several base64 images, one result or error each",
        response_model=None,
        responses={200: {"model": BatchResult}, **_BODY_ERRORS, **_AUTH_ERRORS, **_OVERLOAD},
        openapi_extra=_BATCH_BODY,
    )
    async def score_batch(self, request: Request) -> dict:
        self._authorize(request)
        ctype = _media_type(request)
        if ctype != "application/json":
            raise ApiError(415, f"unsupported media type {ctype or '(none)'}; send JSON")
        req = self._parse(BatchRequest, await self._body(request))
        if len(req.items) > self.cfg.max_batch_items:
            raise ApiError(413, f"{len(req.items)} items; the limit is {self.cfg.max_batch_items}")

        async def one(item: ScoreItem) -> dict:
            try:
                return await self._score(item.id, await self._decode_b64(item.image))
            except ApiError as exc:
                if exc.status == 503:
                    raise
                return {"id": item.id, "error": {"status": exc.status, "detail": exc.detail}}

        return {"results": await asyncio.gather(*(one(i) for i in req.items))}


def specialist_fusion(cfg: ServeConfig) -> FusionSpec:
    """The fusion calibrated into the specialist bundle (its metadata only is read); the
    defaults (always consult the specialist) when it has none."""
    meta = read_meta(cfg.specialist.model_uri)
    if meta.fusion is None:
        log.warning("%s has no calibrated fusion: using the defaults", cfg.specialist.model_uri)
    elif meta.scoring_dtype and meta.scoring_dtype != cfg.dtype:
        log.warning(
            "fusion of %s was calibrated on %s scores; serving in %s",
            cfg.specialist.model_uri,
            meta.scoring_dtype,
            cfg.dtype,
        )
    return meta.fusion_spec()


def compose_app(
    cfg: ServeConfig, *, scorer_options: dict | None = None, ingress_options: dict | None = None
) -> serve.Application:
    """The application graph; the options override the deployments' (tests use this to shrink
    queues; a Serve config file's `deployments:` section does the same in production)."""
    fusion = specialist_fusion(cfg)
    common = dict(
        engine=cfg.engine,
        dtype=cfg.dtype,
        batch_size=cfg.model_batch_size,
        batch_wait_s=cfg.model_batch_wait_s,
    )
    # Requests Serve itself rejects (queue full) get Retry-After too.
    pressure = {"backpressure_config": {"retry_after_s": cfg.retry_after_s}}
    scorer = dict(pressure, **(scorer_options or {}))
    base = ModelScorer.options(name="BaseScorer", **scorer).bind(
        cfg.base.model_dump(), **common, required_labels=tuple(RISK_LABELS)
    )
    spec = ModelScorer.options(name="SpecialistScorer", **scorer).bind(
        cfg.specialist.model_dump(), **common, required_labels=(HIGH_RISK,)
    )
    ingress = HazardAPI.options(**dict(pressure, **(ingress_options or {})))
    return ingress.bind(base, spec, cfg.model_dump(), fusion.to_dict())


def _in_ray_worker() -> bool:
    """Whether this process is a Ray worker (Serve's controller builds apps of a config file,
    `serve deploy`/RayService/`serve run FILE`, in a task), not a driver script."""
    from ray._private.worker import WORKER_MODE, global_worker

    return global_worker.mode == WORKER_MODE


def driver_env() -> dict[str, str]:
    """The env a driver's replicas get: its own, plus its Ray job's runtime_env `env_vars`."""
    import ray

    env = dict(os.environ)
    if ray.is_initialized():
        env.update((ray.get_runtime_context().runtime_env or {}).get("env_vars") or {})
    return env


def build_app(args: dict) -> serve.Application:
    """The Serve application for a `ServeConfig` dict (RayService `args`).

    Auth fails closed in two places. Every ingress replica checks its own env (the only check
    that holds on a cluster: a RayService's key is in the serve pods' env, from a Secret). A
    driver process (`serve run serve.app:build_app`, `serve.run(build_app(cfg))`) also checks
    its env and job runtime_env here, so it stops before starting Serve; inside a Ray worker
    (the controller building a config file's app) this check is skipped: that worker's env is
    not the replicas'."""
    cfg = ServeConfig.model_validate(args)
    if not _in_ray_worker():
        replica_api_key(cfg, driver_env())
    return compose_app(cfg)
