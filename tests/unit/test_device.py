"""Scoring device and dtype: every scoring job loads through
hazard.model.device.load_scoring_model."""

from __future__ import annotations

import logging

import pytest
import torch

from hazard.model.device import load_scoring_model, no_cuda_reason, place_model, scoring_device
from hazard.model.vlm import label_probabilities, load_model, load_processor


def _fallback_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "hazard.model.device"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cpu_fallback_keeps_the_configured_dtype_and_logs_once(
    tiny_model_path, caplog, monkeypatch, dtype
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="hazard.model.device"):
        model = load_scoring_model(tiny_model_path, dtype)
    params = list(model.parameters())
    assert {p.dtype for p in params} == {getattr(torch, dtype)}
    assert {p.device.type for p in params} == {"cpu"}
    assert not model.training
    # the rotary frequencies stay as from_pretrained keeps them (a cast would round them)
    buffers = dict(model.named_buffers())
    assert buffers["model.language_model.rotary_emb.inv_freq"].dtype == torch.float32
    lines = _fallback_lines(caplog)
    assert len(lines) == 1, lines
    assert lines[0].startswith("no CUDA device (")
    assert f"scoring on CPU in {dtype}" in lines[0]
    assert ("kept as configured" in lines[0]) == (dtype == "bfloat16")


def test_bfloat16_scores_track_float32_on_cpu(tiny_model_path, monkeypatch):
    """The bf16 model really computes in bf16: its label probabilities are close to, but not
    bit-equal with, fp32's on the same images."""
    from PIL import Image

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    processor = load_processor(tiny_model_path)
    images = [[Image.new("RGB", (56, 56), c)] for c in ((200, 30, 30), (30, 30, 200))]
    labels = ("red", "blue", "green")
    p32, p16 = (
        label_probabilities(load_scoring_model(tiny_model_path, d), processor, images, "?", labels)
        for d in ("float32", "bfloat16")
    )
    assert torch.allclose(p32, p16, atol=0.05)
    assert not torch.equal(p32, p16)


def test_reason_names_an_empty_cuda_visible_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert "CUDA_VISIBLE_DEVICES is empty" in no_cuda_reason()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert "sees no CUDA device" in no_cuda_reason()
    monkeypatch.setattr(torch.version, "cuda", None)
    assert no_cuda_reason() == "torch is a CPU-only build"
    assert scoring_device() == torch.device("cpu")


def test_a_model_in_another_dtype_is_refused(tiny_model_path):
    model = load_model(tiny_model_path, "float32")
    with pytest.raises(ValueError, match=r"not bfloat16: load it in bfloat16"):
        place_model(model, "bfloat16")


@pytest.mark.gpu
def test_cuda_scoring_uses_the_gpu_in_bfloat16(tiny_model_path, caplog):
    with caplog.at_level(logging.INFO, logger="hazard.model.device"):
        model = load_scoring_model(tiny_model_path, "bfloat16")
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert no_cuda_reason() is None
    assert any("scoring on cuda" in line for line in _fallback_lines(caplog))


def test_every_scoring_loader_goes_through_the_device_helper(tiny_model_path, tmp_path, caplog):
    """The transformers engine (serving, batch scoring, calibration, the consistency filter)
    and the export's Scorer load in the configured dtype, on the device hazard.model.device
    picks."""
    from hazard.model.engines import Scorer, TransformersEngine
    from tests.helpers.serve import make_bundle

    bundle = make_bundle(tiny_model_path, tmp_path / "b", "b", "1", "base")
    with caplog.at_level(logging.INFO, logger="hazard.model.device"):
        engine = TransformersEngine(str(bundle), "bfloat16")
        scorer = Scorer(bundle, "?", ["a"], "bfloat16")  # the export's merged-model scorer
    for model in (engine.model, scorer.model):
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
        assert {p.device for p in model.parameters()} == {scoring_device()}
    assert len(_fallback_lines(caplog)) == 2


@pytest.mark.parametrize(
    ("name", "section", "gpus_key"),
    [
        ("calibrate.yaml", None, "gpus_per_task"),
        ("score.yaml", None, "gpus_per_actor"),
        ("data_corridor.yaml", "consistency", "gpus_per_actor"),
    ],
)
def test_production_scoring_configs_ask_for_gpus_in_bfloat16(name, section, gpus_key):
    """The 7B/3B configs reserve a GPU per scoring task or actor and score in bfloat16; the
    tiny ones stay on CPU in float32."""
    from pathlib import Path

    import yaml

    configs = Path(__file__).resolve().parents[2] / "configs"
    prod = yaml.safe_load((configs / name).read_text())
    prod = prod[section] if section else prod
    assert prod["dtype"] == "bfloat16" and prod[gpus_key] >= 1
    tiny_name = {"data_corridor.yaml": "data.yaml"}.get(name, name)
    tiny = yaml.safe_load((configs / "tiny" / tiny_name).read_text())
    tiny = tiny.get(section, {}) if section else tiny
    assert tiny.get("dtype", "float32") == "float32" and tiny.get(gpus_key, 0) == 0
