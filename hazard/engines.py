"""Inference engines: turn a batch of images into probabilities over a model's label set.

`ScoringEngine` is the interface that serving (`serve/app.py`), calibration
(`ray_jobs/calibrate.py`) and batch scoring (`ray_jobs/score_dataset.py`) share, so the three
score a bundle the same way. `TransformersEngine` runs anywhere
(CPU and GPU) through `hazard.vlm`; `VLLMEngine` runs on GPU, reading the same restricted
next-token distribution from vLLM's logprobs. Both read answers, never generate free text.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
from PIL import Image

from hazard.bundle import open_bundle


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
        from hazard.vlm import load_processor

        return load_processor(self.path, self.meta.max_pixels, self.meta.min_pixels)

    @abstractmethod
    def score(self, images: list[list[Image.Image]]) -> np.ndarray:
        """Probabilities of shape [len(images), len(labels)]; rows sum to 1."""

    def explain(self, image: Image.Image, label: str) -> str:
        """A short rationale for `label` (generated after it is fixed); engines that cannot
        generate raise NotImplementedError."""
        raise NotImplementedError(f"{type(self).__name__} does not generate explanations")


class TransformersEngine(ScoringEngine):
    """Hugging Face transformers on CPU or GPU (the default, and the engine tests run)."""

    def __init__(self, model_uri: str, dtype: str = "float32"):
        super().__init__(model_uri)
        from hazard.device import load_scoring_model

        self.processor = self.load_processor()
        self.model = load_scoring_model(self.path, dtype)  # CUDA if there is one, else CPU

    def score(self, images: list[list[Image.Image]]) -> np.ndarray:
        from hazard.vlm import label_probabilities

        probs = label_probabilities(self.model, self.processor, images, self.prompt, self.labels)
        return probs.cpu().numpy()

    def explain(self, image: Image.Image, label: str) -> str:
        from hazard.vlm import explain_text

        return explain_text(self.model, self.processor, image, self.prompt, label)


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
        from hazard.vlm import first_tokens_collide, label_token_ids

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
        from hazard.vlm import prompt_text

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


def make_engine(kind: str, model_uri: str, dtype: str, vllm: dict | None = None) -> ScoringEngine:
    """The engine `kind` ('transformers' or 'vllm') over the bundle at `model_uri`, as serving,
    calibration and batch scoring build it (`vllm`: VLLMOptions fields)."""
    if kind == "transformers":
        return TransformersEngine(model_uri, dtype)
    if kind == "vllm":
        return VLLMEngine(model_uri, dtype, vllm)
    raise ValueError(f"unknown engine {kind!r}; expected 'transformers' or 'vllm'")
