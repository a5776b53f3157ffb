"""The model deployment: one replica of one model (base or specialist) behind an engine of
`hazard.model.engines`, batching images with `@serve.batch` and answering label probabilities."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from PIL import Image
from ray import serve

from hazard.config.serve import ServedModel, ServingCommon
from serve.metrics import model_metrics
from serve.schemas import ModelInfo, Role


def valid_probabilities(probs: dict[str, float]) -> bool:
    """Finite probabilities summing to 1: what a working engine answers."""
    values = list(probs.values())
    return bool(np.isfinite(values).all()) and abs(sum(values) - 1) < 1e-3


def batch_slots(cfg: ServingCommon, base_replicas: int) -> int:
    """Images `base_replicas` base replicas hold at once (`model_batch_size` x
    `batches_in_flight` each): admission's capacity and each model replica's ongoing limit."""
    return cfg.model_batch_size * cfg.admission.batches_in_flight * base_replicas


@serve.deployment
class ModelScorer:
    """One model replica: batches images and returns label probabilities.

    Its health check is a real forward of a small grey image through the same batch queue
    (a success counts for `health_cache_s`), so a replica whose engine stopped answering fails
    it and Serve replaces the replica."""

    def __init__(
        self,
        model: dict,
        role: Role,
        engine: str,
        dtype: str,
        batch_size: int,
        batch_wait_s: float,
        required_labels: tuple[str, ...] = (),
        health_cache_s: float = 5.0,
        vllm: dict | None = None,
    ):
        from hazard.model.engines import make_engine

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

    def describe(self) -> ModelInfo:
        return ModelInfo(
            role=self.role,
            name=self.model.name,
            version=self.model.version,
            labels=list(self.engine.labels),
            uri=self.model.model_uri,
        )

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
        if not valid_probabilities(probs):
            raise RuntimeError(f"{self.role} engine answered bad probabilities {probs}")
        self._healthy_until = time.monotonic() + self.health_cache_s
