"""What every HTTP ingress of this project shares: the API key, admission, the body and image
limits, decoding, and the 503s of an overloaded model (`serve.ingress.HazardAPI`, the cascade;
`serve.task_ingress.TaskAPI`, one task).

A subclass calls `_setup(cfg, pixel_budget)` in its `__init__` and names the model deployment
admission's capacity follows (`SCORER_DEPLOYMENT`); `cfg` is a `ServingCommon` whose
`scorer_replicas` are that deployment's.

No `from __future__ import annotations`: see `serve.ingress` (Serve pickles the ingress class).
"""

import asyncio
import base64
import binascii
import contextlib
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator

from fastapi import Request
from PIL import Image
from ray import serve

from hazard.infra.images import ImageRejected, ImageTooLarge, decode_image
from serve.admission import Admission, Overloaded
from serve.asgi import ApiError
from serve.auth import replica_api_key
from serve.metrics import ingress_metrics
from serve.model_deployment import batch_slots, valid_probabilities

log = logging.getLogger("ray.serve")

CAPACITY_POLL_S = 5  # seconds between reads of the scoring deployment's running replicas


def _running_replicas(app_name: str, deployment: str) -> int:
    """RUNNING replicas of `deployment` in `app_name`, from the Serve controller."""
    status = serve.status().applications[app_name].deployments[deployment]
    return int(status.replica_states.get("RUNNING", 0))


class IngressBase:
    """Request plumbing shared by the ingresses (see the module docstring)."""

    SCORER_DEPLOYMENT = "BaseScorer"

    def _setup(self, cfg, pixel_budget: int) -> None:
        self.cfg, self.pixel_budget = cfg, pixel_budget
        self.api_key = replica_api_key(cfg, os.environ)
        self._ready_until = 0.0
        adm = cfg.admission
        self.admission = Admission(
            self._capacity(cfg.scorer_replicas.min_replicas),
            adm.max_wait_s,
            adm.max_queue_images,
        )
        self.metrics = ingress_metrics()
        self._watcher: asyncio.Task | None = None

    # -- admission ---------------------------------------------------------------------------
    def _capacity(self, replicas: int) -> int:
        """Images this ingress replica lets at the models: its share of the scoring replicas'
        batch slots (`model_batch_size x batches_in_flight` each)."""
        return max(1, -(-batch_slots(self.cfg, replicas) // self.cfg.ingress.num_replicas))

    async def _watch_capacity(self) -> None:
        """Follow the scoring deployment's running replicas (autoscaling; read from the
        controller every `CAPACITY_POLL_S`, a status call costs the controller and this
        replica) and export the queue depth every second, off the request path."""
        app_name = serve.get_replica_context().app_name
        name = self.SCORER_DEPLOYMENT
        for tick in itertools.count():
            if tick % CAPACITY_POLL_S == 0:
                try:
                    running = await asyncio.to_thread(_running_replicas, app_name, name)
                    if running:
                        self.admission.set_capacity(self._capacity(running))
                except Exception as exc:  # the controller busy or restarting: keep the last
                    log.warning("could not read %s replicas: %r", name, exc)
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

    def _overloaded(self, exc: Exception) -> ApiError:
        log.warning("model deployment overloaded or unavailable: %r", exc)
        return ApiError(
            503,
            "a model is overloaded or unavailable, retry later",
            {"Retry-After": str(self.cfg.retry_after_s)},
        )

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

    async def _probe(self, role: str, call) -> bool:
        """Whether `call` (a model's answer to a grey probe image, awaitable) gives finite
        probabilities summing to 1 within 30 s; why not goes to the log only (no exception
        text or paths to callers)."""
        try:
            probs = await asyncio.wait_for(call, timeout=30)
        except Exception as exc:  # any failure means not ready
            log.warning("readyz: %s model not ready: %r", role, exc)
            return False
        if not valid_probabilities(probs):
            log.warning("readyz: %s model answered bad probabilities %s", role, probs)
            return False
        return True
