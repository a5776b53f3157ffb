"""The vLLM engine (GPU only) agrees with the transformers engine on the same bundle."""

from __future__ import annotations

import numpy as np
import pytest
from serve_fixtures import make_bundle

from hazard.demo.synthetic import render_scene
from hazard.labels import RISK_LABELS

pytestmark = pytest.mark.gpu


def test_vllm_scores_match_transformers(tmp_path, tiny_model_path):
    pytest.importorskip("vllm", reason="vLLM is installed on GPU nodes only")
    from serve.engines import TransformersEngine, VLLMEngine

    bundle = str(make_bundle(tiny_model_path, tmp_path / "bundle", "tiny", "0", "base"))
    rng = np.random.default_rng(0)
    images = [[render_scene(label, rng)[0]] for label in RISK_LABELS]
    hf = TransformersEngine(bundle, "float32").score(images)
    vl = VLLMEngine(bundle, "float32").score(images)
    assert vl.shape == (5, 5)
    np.testing.assert_allclose(vl.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vl, hf, atol=2e-2)
