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

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import BaseModel, Field, ValidationError
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
    image: str = Field(description="The image, base64-encoded (PNG, JPEG or WEBP).")


class BatchRequest(BaseModel):
    items: list[ScoreItem] = Field(description="Images to score, answered in order.")


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
        self.api_key = os.environ.get(self.cfg.api_key_env or "", "") or None
        if self.api_key is None:
            log.warning("API key auth is OFF: set %s to turn it on", self.cfg.api_key_env)
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
            raise ApiError(
                503,
                f"overloaded or unavailable, retry later ({exc})",
                {"Retry-After": str(self.cfg.retry_after_s)},
            ) from exc

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
    @app.get("/healthz", summary="Process alive")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Both models loaded and answering")
    async def readyz(self) -> JSONResponse:
        if time.monotonic() < self._ready_until:
            return JSONResponse({"status": "ready"})
        probe = Image.new("RGB", (112, 112), (128, 128, 128))
        try:
            results = await asyncio.wait_for(
                asyncio.gather(self._call(self.base, probe), self._call(self.specialist, probe)),
                timeout=30,
            )
        except Exception as exc:  # any failure means not ready; say why
            return JSONResponse({"status": "not ready", "detail": repr(exc)}, status_code=503)
        if not all(
            abs(sum(r.values()) - 1) < 1e-3 and np.isfinite(list(r.values())).all() for r in results
        ):
            return JSONResponse({"status": "not ready", "detail": "bad probabilities"}, 503)
        self._ready_until = time.monotonic() + 5
        return JSONResponse({"status": "ready"})

    @app.get("/v1/models", summary="Served models and fusion parameters")
    async def models(self, request: Request) -> dict:
        self._authorize(request)
        base, spec = await asyncio.gather(
            self.base.describe.remote(), self.specialist.describe.remote()
        )
        return {
            "models": [dict(base, role="base"), dict(spec, role="specialist")],
            "labels": list(RISK_LABELS),
            "fusion": self.fusion.to_dict(),
        }

    @app.post("/v1/score", summary="Score one image (multipart field `file` or JSON base64)")
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

    @app.post("/v1/score/batch", summary="Score several base64 images, one result or error each")
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


def build_app(args: dict) -> serve.Application:
    """The Serve application for a `ServeConfig` dict (RayService `args`)."""
    return compose_app(ServeConfig.model_validate(args))
