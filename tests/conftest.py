"""Shared fixtures: the cached tiny Qwen2.5-VL and paths."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray (2 CPUs, no dashboard) for one test module."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """The tiny checkpoint (built and pre-trained once per machine, then cached)."""
    from hazard.demo.tiny_qwen import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture(scope="session")
def tiny(tiny_model_path):
    """(model, processor) loaded through the same from_pretrained path as the 7B/3B."""
    from hazard.vlm import load_model, load_processor

    return load_model(tiny_model_path).eval(), load_processor(tiny_model_path)


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA (and vLLM where they say so); they skip on CPU machines."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a GPU (no CUDA device on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
