"""Inference engines: turn a batch of images into probabilities over a model's label set.

The one path from a model bundle to label probabilities. `ScoringEngine` opens and verifies
the bundle (`hazard.infra.bundle.open_bundle`) and builds its processor with the bundle's pixel
limits; `make_engine` is how serving, calibration, the consistency filter and batch scoring
get one. `TransformersEngine` (CPU and GPU) scores through `Scorer`, which loads a checkpoint
folder with `hazard.model.device.load_scoring_model` and reads
`hazard.model.vlm.label_probabilities`;
the training export scores its merged model, before it is sealed as a bundle, with `Scorer`
too. `VLLMEngine` runs on GPU, reading the same restricted next-token distribution from
vLLM's logprobs. Both read answers, never generate free text.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from hazard.infra.bundle import open_bundle


class Scorer:
    """A Qwen2.5-VL checkpoint folder loaded for scoring against `prompt` and `labels`: the
    processor resizes images within `max_pixels`/`min_pixels` (the limits training used), the
    model is in `dtype` on the scoring device (`hazard.model.device`)."""

    def __init__(
        self,
        path: str | Path,
        prompt: str,
        labels: Sequence[str],
        dtype: str = "float32",
        max_pixels: int | None = None,
        min_pixels: int | None = None,
    ):
        from hazard.model.device import load_scoring_model
        from hazard.model.vlm import load_processor

        self.prompt, self.labels = prompt, tuple(labels)
        self.processor = load_processor(path, max_pixels, min_pixels)
        self.model = load_scoring_model(path, dtype)  # CUDA if there is one, else CPU

    def score(self, images: list[list[Image.Image]]) -> np.ndarray:
        """Probabilities of shape [len(images), len(labels)]; rows sum to 1."""
        from hazard.model.vlm import label_probabilities

        probs = label_probabilities(self.model, self.processor, images, self.prompt, self.labels)
        return probs.cpu().numpy()

    def explain(self, image: Image.Image, label: str) -> str:
        """A short generated rationale for `label` (`hazard.model.vlm.explain_text`)."""
        from hazard.model.vlm import explain_text

        return explain_text(self.model, self.processor, image, self.prompt, label)


class ScoringEngine(ABC):
    """Scores images against the bundle's prompt and label set.

    The bundle is opened (verified; an s3:// one fetched into the local cache) once, here:
    `path` is the local folder the subclasses load from.
    """

    def __init__(self, model_uri: str):
        bundle = open_bundle(model_uri)
        self.model_uri, self.path, self.meta = model_uri, bundle.path, bundle.meta
        self.prompt: str = bundle.meta.prompt
        self.labels: tuple[str, ...] = tuple(bundle.meta.labels)

    def load_processor(self):
        """The bundle's processor, resizing images as training did."""
        from hazard.model.vlm import load_processor

        return load_processor(self.path, self.meta.max_pixels, self.meta.min_pixels)

    @abstractmethod
    def score(self, images: list[list[Image.Image]]) -> np.ndarray:
        """Probabilities of shape [len(images), len(labels)]; rows sum to 1."""

    def as_dicts(self, probs: np.ndarray) -> list[dict[str, float]]:
        """Rows of `score`'s output as {label: p}."""
        return [dict(zip(self.labels, map(float, row), strict=True)) for row in probs]

    def probabilities(self, images: list[list[Image.Image]]) -> list[dict[str, float]]:
        """`score` as one {label: p} per sample."""
        return self.as_dicts(self.score(images))

    def score_stored(self, rows: Sequence[Sequence[bytes]], batch_size: int) -> np.ndarray:
        """`score` of samples whose images are the bytes the data job stored (each row a list
        of encoded images), `batch_size` samples per forward pass."""
        from hazard.model.vlm import open_stored_image

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        parts = [
            self.score(
                [[open_stored_image(data) for data in row] for row in rows[i : i + batch_size]]
            )
            for i in range(0, len(rows), batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.labels)))

    def explain(self, image: Image.Image, label: str) -> str:
        """A short rationale for `label` (generated after it is fixed); engines that cannot
        generate raise NotImplementedError."""
        raise NotImplementedError(f"{type(self).__name__} does not generate explanations")


class TransformersEngine(ScoringEngine):
    """Hugging Face transformers on CPU or GPU (the default, and the engine tests run): the
    bundle's `Scorer`."""

    def __init__(self, model_uri: str, dtype: str = "float32"):
        super().__init__(model_uri)
        self.scorer = Scorer(
            self.path, self.prompt, self.labels, dtype, self.meta.max_pixels, self.meta.min_pixels
        )
        self.processor, self.model = self.scorer.processor, self.scorer.model

    def score(self, images: list[list[Image.Image]]) -> np.ndarray:
        return self.scorer.score(images)

    def explain(self, image: Image.Image, label: str) -> str:
        return self.scorer.explain(image, label)


class VLLMEngine(ScoringEngine):
    """vLLM on GPU: one prefill per request, logprobs of the labels' first tokens.

    Needs labels whose first tokens differ (checked at start-up), as the Qwen tokenizer gives
    for the five risk labels; the transformers engine also handles colliding labels. The label
    probabilities are the transformers engine's (softmax over the labels' first-token logits),
    so a fusion calibrated on one engine's scores applies to the other's
    (tests/integration/test_vllm_engine.py compares them on the same bundle).
    """

    def __init__(self, model_uri: str, dtype: str = "bfloat16", options: dict | None = None):
        super().__init__(model_uri)
        from hazard.config.serve import VLLMOptions

        opts = VLLMOptions.model_validate(options or {})
        # Checked here, before vLLM starts (minutes on a 7B), with the option's name in the error.
        positions = model_positions(self.path)
        if positions is not None and opts.max_model_len > positions:
            raise ValueError(
                f"vllm max_model_len {opts.max_model_len} exceeds the {positions} positions of "
                f"the model at {self.path} (max_position_embeddings); set vllm.max_model_len "
                f"<= {positions}"
            )
        self.max_images = opts.limit_mm_per_prompt.get("image", 0)
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:  # no CPU build of vLLM on the package index
            raise RuntimeError(
                "engine 'vllm' needs vLLM on a GPU node; use 'transformers'"
            ) from exc
        from hazard.model.vlm import first_tokens_collide, label_token_ids

        self.processor = self.load_processor()
        ids = label_token_ids(self.processor, self.labels)
        if first_tokens_collide(ids):
            raise ValueError(f"labels {self.labels} share first tokens; use engine 'transformers'")
        self.first_ids = [i[0] for i in ids]
        # Processed logprobs are taken after the allowed-token whitelist (vllm/v1/sample/
        # sampler.py: the whitelist masks the logits, then greedy requests' processed logprobs
        # are their log_softmax), so the top-k returned are exactly the label tokens, normalised
        # over them (raw logprobs are the top-k of the whole vocabulary).
        self.llm = LLM(
            model=str(self.path),  # its processor files carry the training image sizes
            dtype=dtype,
            # Bounded context (unset, vLLM reserves KV cache for the checkpoint's 128k tokens)
            # and modalities (one left out defaults to 999 items and is profiled at start-up).
            max_model_len=opts.max_model_len,
            gpu_memory_utilization=opts.gpu_memory_utilization,
            limit_mm_per_prompt=opts.limit_mm_per_prompt,
            enforce_eager=opts.enforce_eager,
            logprobs_mode="processed_logprobs",
            max_logprobs=max(20, len(self.first_ids)),  # vLLM refuses more than this per token
        )
        self.params = SamplingParams(
            max_tokens=1,
            temperature=0.0,
            logprobs=len(self.first_ids),
            allowed_token_ids=self.first_ids,
        )

    def request(self, images: list[Image.Image]) -> dict:
        """One vLLM prompt: the chat turn with one image slot per image, and the images."""
        from hazard.model.vlm import prompt_text

        if not 1 <= len(images) <= self.max_images:
            raise ValueError(
                f"{len(images)} images in one request; the vllm engine takes 1 to "
                f"{self.max_images} (vllm.limit_mm_per_prompt.image)"
            )
        text = prompt_text(self.processor, self.prompt, len(images))
        return {"prompt": text, "multi_modal_data": {"image": images}}

    def score(self, images: list[list[Image.Image]]) -> np.ndarray:
        requests = [self.request(imgs) for imgs in images]
        outputs = self.llm.generate(requests, self.params, use_tqdm=False)
        rows = []
        for out in outputs:
            lp = out.outputs[0].logprobs[0]
            missing = [t for t in self.first_ids if t not in lp]
            if missing:
                raise RuntimeError(f"vLLM returned no logprob for label tokens {missing}")
            logits = np.array([lp[t].logprob for t in self.first_ids])
            e = np.exp(logits - logits.max())
            rows.append(e / e.sum())
        return np.stack(rows)


def model_positions(path) -> int | None:
    """max_position_embeddings of the checkpoint at `path` (its text config's for a VLM), or
    None when its config.json names none."""
    cfg = json.loads((Path(path) / "config.json").read_text())
    for section in (cfg.get("text_config") or {}, cfg):
        if "max_position_embeddings" in section:
            return int(section["max_position_embeddings"])
    return None


def make_engine(
    kind: str, model_uri: str, dtype: str = "float32", vllm: dict | None = None
) -> ScoringEngine:
    """The engine `kind` ('transformers' or 'vllm') over the bundle at `model_uri`, as serving,
    calibration, the consistency filter and batch scoring build it (`vllm`: VLLMOptions
    fields)."""
    if kind == "transformers":
        return TransformersEngine(model_uri, dtype)
    if kind == "vllm":
        return VLLMEngine(model_uri, dtype, vllm)
    raise ValueError(f"unknown engine {kind!r}; expected 'transformers' or 'vllm'")
