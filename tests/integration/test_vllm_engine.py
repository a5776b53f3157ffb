"""The vLLM engine gives the transformers engine's label probabilities on the same bundle.

The fusion's coefficient and escalation threshold are fitted (calibration) on one engine's label
probabilities and applied at serving to the other's: they carry over only if the two engines
agree. Both run here in bfloat16 on one GPU (`gpu` marker: skipped on CPU machines; part of
`make gpu-smoke`).

Tolerance, TOLERANCE = 0.03 on every label probability. Both engines read bf16 logits (the LM
head runs in bf16) and take the softmax over the five labels in fp32, so they differ only by
where bf16 rounds in their kernels (vLLM's fused RMSNorm, rotary and flash attention against
transformers' SDPA). Each is within ~0.011 of the fp32 answer (measured for the transformers
engine: bf16 against fp32 on the CPU, these 10 scenes, at most 0.0106, 2026-12-07), so two bf16
implementations that round differently can differ by ~0.022: 0.03 leaves a margin. In logits: if
no label logit differs by more than d, no label probability differs by more than
2 p (1 - p) d <= d / 2, so 0.03 allows d = 0.06, a few bf16 roundings (at |logit| < 8 the last
one alone is up to 2^-6 = 0.016). A real divergence (another prompt, image size, label token or
normalisation) moves probabilities by tenths. float32 would be tighter, but serving runs bf16.
"""

from __future__ import annotations

import numpy as np
import pytest

from hazard.core.labels import RISK_LABELS
from hazard.demo.synthetic import render_scene
from tests.helpers.serve import make_bundle

TOLERANCE = 0.03
TINY_POSITIONS = 2048  # hazard/demo/tiny_qwen.py TINY_ARCH max_position_embeddings
VLLM_OPTIONS = {
    "max_model_len": TINY_POSITIONS,
    "enforce_eager": True,  # no CUDA graph capture: a faster start for a smoke test
    "gpu_memory_utilization": 0.3,  # the transformers engine shares the GPU
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_model_path) -> str:
    dest = tmp_path_factory.mktemp("vllm") / "bundle"
    return str(make_bundle(tiny_model_path, dest, "tiny", "0", "base"))


def test_a_context_longer_than_the_model_is_refused_before_vllm_starts(bundle):
    """The options' default 4096 on the 2,048-position tiny model: a clear error naming both,
    raised before vLLM is imported (so this runs on CPU machines too)."""
    from hazard.model.engines import VLLMEngine

    with pytest.raises(ValueError, match=r"max_model_len 4096 exceeds the 2048 positions"):
        VLLMEngine(bundle, "bfloat16", {"max_model_len": 4096})


@pytest.mark.gpu
def test_vllm_label_probabilities_match_transformers(bundle, record_property):
    pytest.importorskip("vllm", reason="vLLM is installed on GPU nodes only")
    from hazard.model.engines import TransformersEngine, VLLMEngine

    rng = np.random.default_rng(0)
    images = [[render_scene(label, rng)[0]] for label in RISK_LABELS for _ in range(2)]
    # vLLM first: its engine process starts before this process initialises CUDA.
    vllm_engine = VLLMEngine(bundle, "bfloat16", VLLM_OPTIONS)
    vl = vllm_engine.score(images)
    hf_engine = TransformersEngine(bundle, "bfloat16")
    param = next(hf_engine.model.parameters())
    assert (param.device.type, str(param.dtype)) == ("cuda", "torch.bfloat16")
    hf = hf_engine.score(images)

    dp = float(np.abs(vl - hf).max())
    record_property(
        "figure",
        f"vllm-vs-transformers max |dp| {dp:.4f} over {len(images)} images x 5 labels "
        f"(tolerance {TOLERANCE}), argmax agrees on "
        f"{int((vl.argmax(1) == hf.argmax(1)).sum())}/{len(images)}",
    )
    assert vl.shape == (len(images), len(RISK_LABELS))
    np.testing.assert_allclose(vl.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vl, hf, atol=TOLERANCE, rtol=0)
