"""The served application: base → (escalate?) → specialist → fusion, behind one HTTP API.

`build_app(args) -> Application` builds it from a `ServeConfig` dict, so the same app runs from
Python (`serve.run(build_app(cfg))`), from `serve run serve.app:build_app …` and from a
RayService `import_path: serve.app:build_app`. The HTTP contract is docs/architecture.md's.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator
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

from hazard.answers import parse_risk_level
from hazard.bundle import BundleMeta, check_calibration, pixel_budget, read_meta
from hazard.cascade import FusionSpec, combine, needs_specialist
from hazard.config.serve import ModelReplicas, ServeConfig, ServedModel
from hazard.images import ImageRejected, ImageTooLarge, decode_image
from hazard.labels import HIGH_RISK, RISK_LABELS
from serve.admission import Admission, Overloaded
from serve.metrics import ingress_metrics, model_metrics

log = logging.getLogger("ray.serve")

CAPACITY_POLL_S = 5  # seconds between reads of the base deployment's running replicas


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
    explanation: Explanation | None = Field(
        None, description="Only with `?explain=true`: a rationale and whether it agrees."
    )


class Explanation(BaseModel):
    text: str = Field(description="The base model's rationale, generated after the label.")
    label_in_text: str | None = Field(
        description="The risk label hazard.answers reads in the text (null: none)."
    )
    agrees: bool = Field(description="Whether that label is the scored `risk_level`.")


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
    "parameters": [
        {
            "name": "explain",
            "in": "query",
            "required": False,
            # an enum without `type`: schemathesis's negative-type mutation of a typed query
            # parameter trips a CPython 3.11 ast bug (python/cpython#106905) in hypothesis
            "schema": {"enum": ["true", "false"], "default": "false"},
            "description": "Also generate a short rationale after the label is fixed (slower; "
            "transformers engine only).",
        }
    ],
    "security": _SECURITY,
}
_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchRequest"}}},
    },
    "security": _SECURITY,
}


@serve.deployment
class ModelScorer:
    """One model replica: batches images and returns label probabilities.

    Its health check is a real forward of a small grey image through the same batch queue
    (a success counts for `health_cache_s`), so a replica whose engine stopped answering fails
    it and Serve replaces the replica."""

    def __init__(
        self,
        model: dict,
        role: str,
        engine: str,
        dtype: str,
        batch_size: int,
        batch_wait_s: float,
        required_labels: tuple[str, ...] = (),
        health_cache_s: float = 5.0,
        vllm: dict | None = None,
    ):
        from hazard.engines import make_engine

        self.model, self.role = ServedModel.model_validate(model), role
        self.engine = make_engine(engine, self.model.model_uri, dtype, vllm or {})
        missing = [label for label in required_labels if label not in self.engine.labels]
        if missing:  # fail the deployment now, not every request later
            raise ValueError(
                f"model {self.model.name} ({self.model.model_uri}) lacks labels "
                f"{missing}; its bundle has {list(self.engine.labels)}"
            )
        self.score_batch.set_max_batch_size(batch_size)
        self.score_batch.set_batch_wait_timeout_s(batch_wait_s)
        self.health_cache_s, self._healthy_until = health_cache_s, 0.0
        self.metrics = model_metrics()

    def describe(self) -> dict:
        return {
            "name": self.model.name,
            "version": self.model.version,
            "labels": list(self.engine.labels),
            "uri": self.model.model_uri,
        }

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def score_batch(self, images: list[list[Image.Image]]) -> list[dict[str, float]]:
        self.metrics.batch_size.observe(len(images), tags={"model": self.role})
        probs = await asyncio.get_running_loop().run_in_executor(None, self.engine.score, images)
        return [dict(zip(self.engine.labels, map(float, row), strict=True)) for row in probs]

    async def score(self, images: list[Image.Image]) -> dict[str, float]:
        return await self.score_batch(images)

    async def explain(self, image: Image.Image, label: str) -> str | None:
        """A rationale for `label`, or None when this engine cannot generate."""
        try:
            return await asyncio.to_thread(self.engine.explain, image, label)
        except NotImplementedError:
            return None

    async def check_health(self) -> None:
        if time.monotonic() < self._healthy_until:
            return
        probs = await self.score_batch([Image.new("RGB", (56, 56), (128, 128, 128))])
        if not _valid_probabilities(probs):
            raise RuntimeError(f"{self.role} engine answered bad probabilities {probs}")
        self._healthy_until = time.monotonic() + self.health_cache_s


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


def _valid_probabilities(probs: dict[str, float]) -> bool:
    """Finite probabilities summing to 1: what a working engine answers."""
    values = list(probs.values())
    return bool(np.isfinite(values).all()) and abs(sum(values) - 1) < 1e-3


def _batch_slots(cfg: ServeConfig, base_replicas: int) -> int:
    """Images `base_replicas` base replicas hold at once (`model_batch_size` x
    `batches_in_flight` each): admission's capacity and each model replica's ongoing limit."""
    return cfg.model_batch_size * cfg.admission.batches_in_flight * base_replicas


def _flag(value: str | None, name: str) -> bool:
    """A boolean query parameter, as declared: `true`, `false` or absent (false); anything
    else is a 422."""
    if value is None or value == "false":
        return False
    if value == "true":
        return True
    raise ApiError(422, f"query parameter {name} must be true or false, not {value[:32]!r}")


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


async def _done(value):
    return value


def _running_replicas(app_name: str, deployment: str) -> int:
    """RUNNING replicas of `deployment` in `app_name`, from the Serve controller."""
    status = serve.status().applications[app_name].deployments[deployment]
    return int(status.replica_states.get("RUNNING", 0))


class _CountRequests:
    """ASGI middleware: requests by route template (not raw path: bounded label values) and
    status. Plain ASGI, so the body still streams to the route (it is refused mid-stream)."""

    def __init__(self, asgi):
        self.asgi = asgi

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.asgi(scope, receive, send)
        status = 500

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.asgi(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            ingress_metrics().requests.inc(tags={"route": route, "status": str(status)})


app.add_middleware(_CountRequests)


@serve.deployment
@serve.ingress(app)
class HazardAPI:
    """HTTP ingress: auth, limits, admission, decoding, the cascade and the response contract."""

    def __init__(
        self,
        base: DeploymentHandle,
        specialist: DeploymentHandle,
        config: dict,
        fusion: dict,
        pixel_budget: int,
    ):
        self.base, self.specialist = base, specialist
        self.cfg = ServeConfig.model_validate(config)
        self.fusion = FusionSpec.from_dict(fusion)
        self.pixel_budget = pixel_budget
        self.api_key = replica_api_key(self.cfg, os.environ)
        self._ready_until = 0.0
        adm = self.cfg.admission
        self.admission = Admission(
            self._capacity(self.cfg.base_replicas.min_replicas),
            adm.max_wait_s,
            adm.max_queue_images,
        )
        self.metrics = ingress_metrics()
        self._watcher: asyncio.Task | None = None

    # -- admission ---------------------------------------------------------------------------
    def _capacity(self, base_replicas: int) -> int:
        """Images this ingress replica lets at the models: its share of the base replicas'
        batch slots (`model_batch_size x batches_in_flight` each)."""
        return max(1, -(-_batch_slots(self.cfg, base_replicas) // self.cfg.ingress.num_replicas))

    async def _watch_capacity(self) -> None:
        """Follow the base deployment's running replicas (autoscaling; read from the controller
        every `CAPACITY_POLL_S`, a status call costs the controller and this replica) and export
        the queue depth every second, off the request path."""
        app_name = serve.get_replica_context().app_name
        for tick in itertools.count():
            if tick % CAPACITY_POLL_S == 0:
                try:
                    running = await asyncio.to_thread(_running_replicas, app_name, "BaseScorer")
                    if running:
                        self.admission.set_capacity(self._capacity(running))
                except Exception as exc:  # the controller busy or restarting: keep the last
                    log.warning("could not read BaseScorer replicas: %r", exc)
            self.metrics.queue(self.admission.in_flight, self.admission.waiting_images)
            await asyncio.sleep(1.0)

    @contextlib.asynccontextmanager
    async def _admitted(self, images: int) -> AsyncIterator[None]:
        """`async with self._admitted(n):` the models may be called for n images, or a 503
        (queue full, deadline). A request refused for its own input (4xx) is not counted as
        the models' throughput."""
        if not self.cfg.admission.enabled:
            yield
            return
        if self._watcher is None:
            self._watcher = asyncio.create_task(self._watch_capacity())
        try:
            async with self.admission.slot(images):  # only admission raises Overloaded
                yield
        except Overloaded as exc:
            raise self._refuse(exc) from None

    def _refuse(self, exc: Overloaded) -> ApiError:
        self.metrics.rejected.inc(tags={"reason": exc.reason})
        wait = self.admission.retry_after(self.cfg.retry_after_s, self.cfg.max_retry_after_s)
        return ApiError(503, exc.detail, {"Retry-After": str(wait)})

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
            raise self._refused("body_too_large", 413, f"request body over {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():  # chunked uploads carry no content-length
            size += len(chunk)
            if size > limit:
                raise self._refused("body_too_large", 413, f"request body over {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _refused(self, reason: str, status: int, detail: str) -> ApiError:
        self.metrics.refused.inc(tags={"reason": reason})
        return ApiError(status, detail)

    async def _decode(self, data: bytes) -> Image.Image:
        """Upright RGB within the models' pixel budget: a large photo is downscaled here, so
        what waits and travels to a model replica is never bigger than the model needs."""
        start = time.perf_counter()
        # decoding up to max_image_pixels is CPU work: keep it off the event loop. An aspect
        # ratio the models refuse is a 400 here, not a 500 inside a model replica's batch.
        try:
            decoded = await asyncio.to_thread(
                decode_image,
                data,
                max_bytes=self.cfg.max_image_bytes,
                max_pixels=self.cfg.max_image_pixels,
                pixel_budget=self.pixel_budget,
            )
        except ImageRejected as exc:
            status = 413 if isinstance(exc, ImageTooLarge) else 400
            raise self._refused(exc.reason, status, str(exc)) from exc
        img = decoded.image
        self.metrics.stage("decode", time.perf_counter() - start)
        return img

    async def _decode_b64(self, text: str) -> Image.Image:
        text = "".join(text.split())  # base64 wrapped in lines (as `base64` prints it) is fine
        if len(text) > (self.cfg.max_image_bytes + 2) // 3 * 4:
            raise self._refused(
                "too_many_bytes", 413, f"image over {self.cfg.max_image_bytes} bytes"
            )
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise self._refused("base64", 400, f"image is not valid base64: {exc}") from exc
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
        t_base = time.perf_counter()
        self.metrics.stage("base", t_base - start)
        p_high = None
        if needs_specialist(p_base, self.fusion):
            p_high = (await self._call(self.specialist, image))[HIGH_RISK]
            self.metrics.stage("specialist", time.perf_counter() - t_base)
        t_fuse = time.perf_counter()
        result = combine(p_base, p_high, self.fusion)
        done = time.perf_counter()
        self.metrics.stage("fusion", done - t_fuse)
        self.metrics.stage("total", done - start)
        self.metrics.scored.inc(tags={"escalated": str(result.escalated).lower()})
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
            "latency_ms": round((done - start) * 1000, 2),
        }

    async def _explained(self, result: dict, image: Image.Image, explain: bool) -> dict:
        """`result` with the base model's rationale for its label, when asked for."""
        if not explain:
            return result
        try:
            text = await self.base.explain.remote(image, result["risk_level"])
        except (BackPressureError, DeploymentUnavailableError) as exc:
            raise self._overloaded(exc) from exc
        if text is None:
            engine = self.cfg.engine
            raise ApiError(501, f"explain needs an engine that generates; this is {engine}")
        read = parse_risk_level(text)
        result["explanation"] = {
            "text": text,
            "label_in_text": read,
            "agrees": read == result["risk_level"],
        }
        return result

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
        if not _valid_probabilities(probs):
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
        responses={
            200: {"model": ScoreResult},
            **_BODY_ERRORS,
            **_AUTH_ERRORS,
            **_OVERLOAD,
            501: _err("`explain=true` with an engine that cannot generate (vllm)"),
        },
        openapi_extra=_SCORE_BODY,
    )
    async def score(self, request: Request) -> dict:
        self._authorize(request)
        ctype = _media_type(request)
        if ctype not in ("application/json", "multipart/form-data"):
            raise ApiError(
                415,
                f"unsupported media type {ctype or '(none)'}; send "
                "multipart/form-data or application/json",
            )
        explain = _flag(request.query_params.get("explain"), "explain")
        # Admitted before the body is read: a refused request costs no upload nor decode.
        async with self._admitted(1):
            if ctype == "application/json":
                item = self._parse(ScoreItem, await self._body(request))
                image = await self._decode_b64(item.image)
                return await self._explained(await self._score(item.id, image), image, explain)
            body = await self._body(request)  # enforces the body limit before parsing
            async with Request(request.scope, _replay(body)).form(
                max_files=4, max_fields=16
            ) as form:  # parse errors are Starlette HTTPException(400) → {"detail": …}
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise ApiError(422, "multipart body needs a file field named 'file'")
                data = await upload.read(self.cfg.max_image_bytes + 1)
                name = upload.filename
            image = await self._decode(data)
            return await self._explained(await self._score(name, image), image, explain)

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

        async def decode(item: ScoreItem) -> Image.Image | dict:
            try:
                return await self._decode_b64(item.image)
            except ApiError as exc:
                return {"id": item.id, "error": {"status": exc.status, "detail": exc.detail}}

        async with self._admitted(len(req.items)):
            decoded = await asyncio.gather(*(decode(i) for i in req.items))
            pixels = sum(d.width * d.height for d in decoded if isinstance(d, Image.Image))
            if pixels > self.cfg.max_batch_pixels:
                raise self._refused(
                    "batch_pixels",
                    413,
                    f"the batch decodes to {pixels} pixels; the limit is "
                    f"{self.cfg.max_batch_pixels}",
                )
            return {
                "results": await asyncio.gather(
                    *(
                        self._score(item.id, d) if isinstance(d, Image.Image) else _done(d)
                        for item, d in zip(req.items, decoded, strict=True)
                    )
                )
            }


def specialist_fusion(cfg: ServeConfig, meta: BundleMeta) -> FusionSpec:
    """The fusion calibrated into the specialist bundle (`meta`, its metadata); the defaults
    (always consult the specialist) when it has none. CalibrationMismatch (the app does not
    start) when it was calibrated with another engine than `cfg.engine`, unless
    `allow_calibration_engine_mismatch`; other differences are logged."""
    for warning in check_calibration(
        meta,
        cfg.specialist.model_uri,
        cfg.engine,
        cfg.dtype,
        cfg.allow_calibration_engine_mismatch,
    ):
        log.warning("%s", warning)
    return meta.fusion_spec()


def _scorer_options(cfg: ServeConfig, replicas: ModelReplicas) -> dict:
    """A model deployment's Serve options, all from the config."""
    in_flight = _batch_slots(cfg, 1)
    return {
        "ray_actor_options": {"num_cpus": replicas.num_cpus, "num_gpus": replicas.num_gpus},
        "autoscaling_config": {
            "min_replicas": replicas.min_replicas,
            "initial_replicas": replicas.min_replicas,
            "max_replicas": replicas.max_replicas,
            "target_ongoing_requests": replicas.target_ongoing_requests,
            "upscale_delay_s": replicas.upscale_delay_s,
            "downscale_delay_s": replicas.downscale_delay_s,
        },
        # Admission keeps a replica's share at `in_flight`; the queue is a safety net (a batch
        # request over capacity, a replica lost) answered 503 by Serve when full.
        "max_ongoing_requests": in_flight,
        "max_queued_requests": 4 * in_flight * replicas.max_replicas,
        "health_check_period_s": cfg.health_check_period_s,
        "health_check_timeout_s": cfg.health_check_timeout_s,
        "logging_config": {"encoding": cfg.log_encoding},
    }


def compose_app(
    cfg: ServeConfig, *, scorer_options: dict | None = None, ingress_options: dict | None = None
) -> serve.Application:
    """The application graph, every deployment option from `cfg`; the keyword options override
    them (tests use this to shrink queues and CPUs)."""
    base_meta, spec_meta = read_meta(cfg.base.model_uri), read_meta(cfg.specialist.model_uri)
    fusion = specialist_fusion(cfg, spec_meta)
    common = dict(
        engine=cfg.engine,
        dtype=cfg.dtype,
        batch_size=cfg.model_batch_size,
        batch_wait_s=cfg.model_batch_wait_s,
        health_cache_s=cfg.health_probe_cache_s,
        vllm=cfg.vllm.model_dump(),
    )
    # Requests Serve itself rejects (queue full) get Retry-After too.
    pressure = {"backpressure_config": {"retry_after_s": cfg.retry_after_s}}
    models = {}
    for role, name, replicas, labels in (
        ("base", "BaseScorer", cfg.base_replicas, tuple(RISK_LABELS)),
        ("specialist", "SpecialistScorer", cfg.specialist_replicas, (HIGH_RISK,)),
    ):
        options = {**_scorer_options(cfg, replicas), **pressure, **(scorer_options or {})}
        models[role] = ModelScorer.options(name=name, **options).bind(
            getattr(cfg, role).model_dump(), role, **common, required_labels=labels
        )
    admission = cfg.admission
    ingress = {
        "num_replicas": cfg.ingress.num_replicas,
        "ray_actor_options": {"num_cpus": cfg.ingress.num_cpus},
        # Waiting requests are coroutines held by admission (its queue and deadline); Serve's
        # own limit sits above what admission can hold.
        "max_ongoing_requests": _batch_slots(cfg, cfg.base_replicas.max_replicas)
        + admission.max_queue_images
        + 16,
        "max_queued_requests": admission.max_queue_images,
        "logging_config": {"encoding": cfg.log_encoding},
        **pressure,
    }
    ingress = HazardAPI.options(**dict(ingress, **(ingress_options or {})))
    return ingress.bind(
        models["base"],
        models["specialist"],
        cfg.model_dump(),
        fusion.to_dict(),
        pixel_budget((base_meta, spec_meta)),
    )


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
