"""The HTTP ingress: auth, limits, admission, decoding, the cascade and the routes.

Each route returns a response model of `serve.schemas` (declared as its `response_model`), so
FastAPI validates and writes the body from the same declaration /openapi.json shows; a field
left unset is left out (`response_model_exclude_unset`).

No `from __future__ import annotations` here: Serve ships the ingress class to its replicas by
value (cloudpickle), with only the globals its code names, so a string annotation such as
`Response` could not be resolved there by FastAPI; evaluated annotations travel with it."""

import asyncio
import base64
import binascii
import contextlib
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, Response
from PIL import Image
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from hazard.config.serve import ServeConfig
from hazard.core.answers import parse_risk_level
from hazard.core.cascade import FusionSpec, combine, needs_specialist
from hazard.core.labels import HIGH_RISK, RISK_LABELS
from hazard.infra.images import ImageRejected, ImageTooLarge, decode_image
from serve.admission import Admission, Overloaded
from serve.asgi import (
    ApiError,
    CountRequests,
    api_error_response,
    media_type,
    parse_body,
    query_flag,
    replay,
)
from serve.auth import authorize, replica_api_key
from serve.metrics import ingress_metrics
from serve.model_deployment import batch_slots, valid_probabilities
from serve.openapi import (
    AUTH_ERRORS,
    BATCH_BODY,
    BODY_ERRORS,
    OVERLOAD,
    SCORE_BODY,
    SECURITY,
    error_response,
    install_openapi,
)
from serve.schemas import (
    BatchItemError,
    BatchRequest,
    BatchResult,
    Explanation,
    Health,
    ItemError,
    ModelRef,
    ModelsResult,
    Readiness,
    ScoreItem,
    ScoreResult,
)

log = logging.getLogger("ray.serve")

CAPACITY_POLL_S = 5  # seconds between reads of the base deployment's running replicas

app = FastAPI(
    title="hazard-cascade",
    description="Corridor fire-hazard scoring: base model, high-risk specialist, fusion.",
    version="0.1.0",
)
app.add_exception_handler(ApiError, api_error_response)
install_openapi(app)
app.add_middleware(CountRequests)


async def _done(value):
    return value


def _running_replicas(app_name: str, deployment: str) -> int:
    """RUNNING replicas of `deployment` in `app_name`, from the Serve controller."""
    status = serve.status().applications[app_name].deployments[deployment]
    return int(status.replica_states.get("RUNNING", 0))


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
        return max(1, -(-batch_slots(self.cfg, base_replicas) // self.cfg.ingress.num_replicas))

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

    # -- the cascade --------------------------------------------------------------------------
    async def _score(self, item_id: str | None, image: Image.Image) -> ScoreResult:
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
        models = [ModelRef(role="base", name=self.cfg.base.name, version=self.cfg.base.version)]
        if result.escalated:
            spec = self.cfg.specialist
            models.append(ModelRef(role="specialist", name=spec.name, version=spec.version))
        return ScoreResult(
            id=item_id,
            risk_level=result.risk_level,
            probabilities=result.probabilities,
            hazard_score=result.hazard_score,
            escalated=result.escalated,
            models=models,
            latency_ms=round((done - start) * 1000, 2),
        )

    async def _explained(
        self, result: ScoreResult, image: Image.Image, explain: bool
    ) -> ScoreResult:
        """`result` with the base model's rationale for its label, when asked for."""
        if not explain:
            return result
        try:
            text = await self.base.explain.remote(image, result.risk_level)
        except (BackPressureError, DeploymentUnavailableError) as exc:
            raise self._overloaded(exc) from exc
        if text is None:
            engine = self.cfg.engine
            raise ApiError(501, f"explain needs an engine that generates; this is {engine}")
        read = parse_risk_level(text)
        result.explanation = Explanation(
            text=text, label_in_text=read, agrees=read == result.risk_level
        )
        return result

    # -- routes -----------------------------------------------------------------------------
    @app.get("/healthz", summary="Process alive", response_model=Health)
    async def healthz(self) -> Health:
        return Health(status="ok")

    async def _probe(self, role: str, handle: DeploymentHandle) -> bool:
        """Whether `role`'s model scores a grey 112x112 image into finite probabilities summing
        to 1 within 30 s; why not goes to the log only (no exception text or paths to callers)."""
        probe = Image.new("RGB", (112, 112), (128, 128, 128))
        try:
            probs = await asyncio.wait_for(handle.score.remote([probe]), timeout=30)
        except Exception as exc:  # any failure means not ready
            log.warning("readyz: %s model not ready: %r", role, exc)
            return False
        if not valid_probabilities(probs):
            log.warning("readyz: %s model answered bad probabilities %s", role, probs)
            return False
        return True

    @app.get(
        "/readyz",
        summary="Both models loaded and answering",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "A model is not ready"}},
    )
    async def readyz(self, response: Response) -> Readiness:
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
        response.status_code = 200 if ready else 503
        return Readiness(
            status="ready" if ready else "not ready",
            ready=ready,
            models={r: "ready" if o else "not ready" for r, o in zip(roles, ok, strict=True)},
        )

    @app.get(
        "/v1/models",
        summary="Served models and fusion parameters",
        response_model=ModelsResult,
        responses={**AUTH_ERRORS, **OVERLOAD},
        openapi_extra={"security": SECURITY},
    )
    async def models(self, request: Request) -> ModelsResult:
        authorize(request, self.api_key)
        try:
            base, spec = await asyncio.gather(
                self.base.describe.remote(), self.specialist.describe.remote()
            )
        except (BackPressureError, DeploymentUnavailableError) as exc:
            raise self._overloaded(exc) from exc
        return ModelsResult(
            models=[base, spec], labels=list(RISK_LABELS), fusion=self.fusion.to_dict()
        )

    @app.post(
        "/v1/score",
        summary="Score one image (multipart field `file` or JSON base64)",
        response_model=ScoreResult,
        response_model_exclude_unset=True,
        responses={
            **BODY_ERRORS,
            **AUTH_ERRORS,
            **OVERLOAD,
            501: error_response("`explain=true` with an engine that cannot generate (vllm)"),
        },
        openapi_extra=SCORE_BODY,
    )
    async def score(self, request: Request) -> ScoreResult:
        authorize(request, self.api_key)
        ctype = media_type(request)
        if ctype not in ("application/json", "multipart/form-data"):
            raise ApiError(
                415,
                f"unsupported media type {ctype or '(none)'}; send "
                "multipart/form-data or application/json",
            )
        explain = query_flag(request.query_params.get("explain"), "explain")
        # Admitted before the body is read: a refused request costs no upload nor decode.
        async with self._admitted(1):
            if ctype == "application/json":
                item = parse_body(ScoreItem, await self._body(request))
                image = await self._decode_b64(item.image)
                return await self._explained(await self._score(item.id, image), image, explain)
            body = await self._body(request)  # enforces the body limit before parsing
            async with Request(request.scope, replay(body)).form(
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
        response_model=BatchResult,
        response_model_exclude_unset=True,
        responses={**BODY_ERRORS, **AUTH_ERRORS, **OVERLOAD},
        openapi_extra=BATCH_BODY,
    )
    async def score_batch(self, request: Request) -> BatchResult:
        authorize(request, self.api_key)
        ctype = media_type(request)
        if ctype != "application/json":
            raise ApiError(415, f"unsupported media type {ctype or '(none)'}; send JSON")
        req = parse_body(BatchRequest, await self._body(request))
        if len(req.items) > self.cfg.max_batch_items:
            raise ApiError(413, f"{len(req.items)} items; the limit is {self.cfg.max_batch_items}")

        async def decode(item: ScoreItem) -> Image.Image | BatchItemError:
            try:
                return await self._decode_b64(item.image)
            except ApiError as exc:
                return BatchItemError(
                    id=item.id, error=ItemError(status=exc.status, detail=exc.detail)
                )

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
            results = await asyncio.gather(
                *(
                    self._score(item.id, d) if isinstance(d, Image.Image) else _done(d)
                    for item, d in zip(req.items, decoded, strict=True)
                )
            )
            return BatchResult(results=results)
