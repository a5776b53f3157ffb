"""A bundle of any closed-answer task, loaded to answer it: what serving a task
(`serve.task_app`) and batch scoring a task (`pipelines.score_task`) hold.

`closed_task(meta)` is the bundle's TaskSpec, or a BundleError when its task has no closed
answer set ranked by likelihood (generated answers are `hazard eval`'s). `BundleAnswerer`
ranks the bundle's labels (or option letters): with the transformers engine through
`hazard.model.answering.Answerer` (template and row-prompt tasks); with vLLM through the label
engine (`hazard.model.engines.make_engine`), which only fixed-prompt tasks fit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from PIL import Image

from hazard.core.decoding import Likelihood
from hazard.core.tasks import TaskSpec, get_task
from hazard.infra.bundle import BundleError, BundleMeta, open_bundle, read_meta


def closed_task(meta: BundleMeta, uri: str) -> TaskSpec:
    """The TaskSpec of the bundle at `uri` (`meta`, its metadata); BundleError when the task
    is unknown or has no closed answer set ranked by likelihood."""
    try:
        spec = get_task(meta.task)
    except ValueError as exc:
        raise BundleError(f"bundle {uri}: {exc}") from None
    if not isinstance(spec.inference, Likelihood) or not meta.labels:
        raise BundleError(
            f"bundle {uri} is of task {meta.task!r}, whose {spec.answer.kind} answers are "
            "generated, not chosen from a closed answer set: it cannot be served or batch "
            "scored by likelihood (hazard eval answers it)"
        )
    return spec


def turns_json(prompt: str, system: str | None = None) -> str:
    """A request's prompt (and system text) as stored turns (the `conversation` column)."""
    turns = [{"role": "system", "content": system}] if system else []
    return json.dumps([*turns, {"role": "user", "content": prompt}])


class BundleAnswerer:
    """The bundle at `uri` answering its own task: its prompt, its labels, its pixel limits.

    `engine` 'vllm' takes fixed-prompt tasks only (ValueError otherwise, at start)."""

    def __init__(
        self,
        uri: str,
        engine: str = "transformers",
        dtype: str = "float32",
        vllm: dict | None = None,
    ):
        self.meta = read_meta(uri)
        self.spec = closed_task(self.meta, uri)
        self.labels = tuple(self.meta.labels)
        self.engine = self.answerer = None
        if engine == "vllm":
            if not self.spec.ranks_fixed_prompt:
                raise ValueError(
                    f"engine vllm scores fixed-prompt tasks; task {self.spec.name} asks each "
                    "request its own prompt: use engine transformers"
                )
            from hazard.model.engines import make_engine

            self.engine = make_engine(engine, uri, dtype, vllm)
            return
        if engine != "transformers":
            raise ValueError(f"unknown engine {engine!r}; expected 'transformers' or 'vllm'")
        from hazard.model.answering import Answerer, load_answering_model

        path = str(open_bundle(uri).path)
        model, processor = load_answering_model(
            path, dtype, self.meta.max_pixels, self.meta.min_pixels
        )
        self.answerer = Answerer(model, processor, self.spec, self.meta.prompt, self.labels)

    def messages(self, n_images: int, conversation: str | None) -> list[dict]:
        """What a sample of `n_images` images is asked: the bundle's prompt (template task, or
        no `conversation`), else the turns of `conversation` (JSON)."""
        from hazard.model.answering import ask_messages

        return ask_messages(self.spec, self.meta.prompt, n_images, conversation)

    def probabilities(
        self, samples: Sequence[tuple[list[dict], list[Image.Image]]]
    ) -> list[dict[str, float]]:
        """{choice: p} (in the bundle's label order, summing to 1) per (messages, images)."""
        if self.engine is not None:
            return self.engine.probabilities([list(images) for _, images in samples])
        return [a.probs for a in self.answerer.answer(list(samples))]


def best(probs: dict[str, float]) -> str:
    """The most probable choice (the first on ties, as `Answerer` picks)."""
    return max(probs, key=probs.__getitem__)
