"""The one-task model deployment: a bundle of any closed-answer task
(`hazard.model.bundle_answerer.BundleAnswerer`), batching samples with `@serve.batch` and
answering {choice: p}."""

from __future__ import annotations

import asyncio
import time

from PIL import Image
from ray import serve

from hazard.config.serve import ServedModel
from serve.metrics import model_metrics
from serve.model_deployment import valid_probabilities
from serve.task_schemas import TaskModelInfo


@serve.deployment
class TaskModel:
    """One model replica of a task bundle. Its health check is a real forward of a grey image
    asked the bundle's prompt, through the same batch queue (cached `health_cache_s`)."""

    def __init__(
        self,
        model: dict,
        engine: str,
        dtype: str,
        batch_size: int,
        batch_wait_s: float,
        max_images: int,
        health_cache_s: float = 5.0,
        vllm: dict | None = None,
    ):
        from hazard.model.bundle_answerer import BundleAnswerer

        self.model = ServedModel.model_validate(model)
        self.answerer = BundleAnswerer(self.model.model_uri, engine, dtype, vllm)
        self.max_images = max_images if self.answerer.spec.multi_image else 1
        self.answer_batch.set_max_batch_size(batch_size)
        self.answer_batch.set_batch_wait_timeout_s(batch_wait_s)
        self.health_cache_s, self._healthy_until = health_cache_s, 0.0
        self.metrics = model_metrics()

    def describe(self) -> TaskModelInfo:
        spec = self.answerer.spec
        return TaskModelInfo(
            name=self.model.name,
            version=self.model.version,
            uri=self.model.model_uri,
            task=spec.name,
            labels=list(self.answerer.labels),
            prompt_source=spec.prompt_source,
            multi_image=spec.multi_image,
            max_images=self.max_images,
        )

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def answer_batch(self, samples: list[tuple]) -> list[dict[str, float]]:
        self.metrics.batch_size.observe(len(samples), tags={"model": "task"})
        run = self.answerer.probabilities
        return await asyncio.get_running_loop().run_in_executor(None, run, samples)

    async def answer(self, images: list[Image.Image], conversation: str | None) -> dict:
        """{choice: p} of `images` asked `conversation` (turns as JSON; None: the bundle's
        prompt)."""
        return await self.answer_batch((self.answerer.messages(len(images), conversation), images))

    async def check_health(self) -> None:
        if time.monotonic() < self._healthy_until:
            return
        probs = await self.answer([Image.new("RGB", (56, 56), (128, 128, 128))], None)
        if not valid_probabilities(probs):
            raise RuntimeError(f"task engine answered bad probabilities {probs}")
        self._healthy_until = time.monotonic() + self.health_cache_s
