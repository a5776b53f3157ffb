"""The HTTP ingress: auth, limits, admission, decoding, the cascade and the routes.

Each route returns a response model of `serve.schemas` (declared as its `response_model`), so
FastAPI validates and writes the body from the same declaration /openapi.json shows; a field
left unset is left out (`response_model_exclude_unset`).

No `from __future__ import annotations` here: Serve ships the ingress class to its replicas by
value (cloudpickle), with only the globals its code names, so a string annotation such as
`Response` could not be resolved there by FastAPI; evaluated annotations travel with it."""

import asyncio
import logging
import time

from fastapi import FastAPI, Request, Response
from PIL import Image
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from hazard.config.serve import ServeConfig
from hazard.core.answers import parse_risk_level
from hazard.core.cascade import FusionSpec, combine, needs_specialist
from hazard.core.labels import HIGH_RISK, RISK_LABELS
from serve.asgi import (
    ApiError,
    CountRequests,
    api_error_response,
    media_type,
    parse_body,
    query_flag,
    replay,
)
from serve.auth import authorize
from serve.ingress_base import IngressBase
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


@serve.deployment
@serve.ingress(app)
class HazardAPI(IngressBase):
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
        self._setup(ServeConfig.model_validate(config), pixel_budget)
        self.fusion = FusionSpec.from_dict(fusion)

    # -- the models ------------------------------------------------------------------------
    async def _call(self, handle: DeploymentHandle, image: Image.Image) -> dict[str, float]:
        try:
            return await handle.score.remote([image])
        except (BackPressureError, DeploymentUnavailableError) as exc:
            raise self._overloaded(exc) from exc

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

    def _probe_model(self, role: str, handle: DeploymentHandle):
        """`role`'s model scoring a grey 112x112 image (awaitable, for `_probe`)."""
        return self._probe(role, handle.score.remote([Image.new("RGB", (112, 112), (128,) * 3)]))

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
                self._probe_model("base", self.base),
                self._probe_model("specialist", self.specialist),
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
