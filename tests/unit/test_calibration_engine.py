"""The fusion records the engine and dtype it was calibrated with; serving and batch scoring
refuse a fusion fitted on another engine's scores unless explicitly allowed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from hazard.config.score import ScoreDatasetConfig
from hazard.config.serve import ServeConfig
from hazard.infra.bundle import (
    BUNDLE_FILE,
    CalibrationMismatch,
    attach_fusion,
    check_calibration,
    read_meta,
    write_bundle,
)
from serve.command import preflight
from tests.helpers.bundle import bundle_fields, checkpoint

FUSION = {"correction": {"slope": 2.0}, "theta": 0.3, "fitted_on": "data/val"}


@pytest.fixture
def pair(tmp_path) -> tuple[Path, Path]:
    """(base, specialist) bundles; the specialist's fusion fitted on transformers float32."""
    base, spec = checkpoint(tmp_path / "base"), checkpoint(tmp_path / "spec", seed=1)
    write_bundle(base, **bundle_fields("base"))
    write_bundle(spec, **bundle_fields("specialist"))
    attach_fusion(spec, FUSION, scoring_engine="transformers", scoring_dtype="float32")
    return base, spec


def serve_cfg(pair, **fields) -> ServeConfig:
    base, spec = pair
    return ServeConfig(
        base={"name": "b", "version": "1", "model_uri": str(base)},
        specialist={"name": "s", "version": "1", "model_uri": str(spec)},
        auth="disabled",
        **fields,
    )


def test_same_engine_passes_and_a_dtype_difference_is_a_warning(pair):
    meta = read_meta(pair[1])
    assert check_calibration(meta, "spec", "transformers", "float32") == []
    (warning,) = check_calibration(meta, "spec", "transformers", "bfloat16")
    assert "calibrated on float32 scores; scoring in bfloat16" in warning


def test_another_engine_is_refused_naming_both(pair):
    meta = read_meta(pair[1])
    with pytest.raises(CalibrationMismatch) as err:
        check_calibration(meta, "spec", "vllm", "float32")
    msg = str(err.value)
    assert "calibrated on transformers engine scores" in msg
    assert "come from the vllm engine" in msg
    assert "allow_calibration_engine_mismatch: true" in msg
    (warning,) = check_calibration(meta, "spec", "vllm", "float32", allow_engine_mismatch=True)
    assert "transformers" in warning and "vllm" in warning and "accepted" in warning


def test_old_metadata_without_an_engine_is_accepted_with_a_warning(pair):
    spec = pair[1]
    raw = json.loads((spec / BUNDLE_FILE).read_text())
    del raw["scoring_engine"], raw["scoring_dtype"]  # as written before they were recorded
    (spec / BUNDLE_FILE).write_text(json.dumps(raw))
    meta = read_meta(spec)
    assert meta.scoring_engine is None and meta.fusion is not None
    for engine in ("transformers", "vllm"):
        (warning,) = check_calibration(meta, "spec", engine, "float32")
        assert "does not record the engine" in warning and engine in warning


def test_serving_start_up_refuses_a_mismatch_unless_allowed(pair, caplog):
    from serve.app import compose_app

    with pytest.raises(CalibrationMismatch, match="transformers engine scores.*vllm engine"):
        compose_app(serve_cfg(pair, engine="vllm", dtype="float32"))
    serve_log = logging.getLogger("ray.serve")  # Ray's own handlers; it does not propagate
    serve_log.addHandler(caplog.handler)
    try:
        app = compose_app(
            serve_cfg(pair, engine="vllm", dtype="float32", allow_calibration_engine_mismatch=True)
        )
    finally:
        serve_log.removeHandler(caplog.handler)
    assert app is not None
    assert any(
        "accepted: allow_calibration_engine_mismatch" in r.getMessage() for r in caplog.records
    )
    compose_app(serve_cfg(pair))  # transformers, as calibrated


def test_hazard_serve_preflight_reports_the_mismatch(pair):
    (problem,) = preflight(serve_cfg(pair, engine="vllm"), {})
    assert problem.startswith("the fusion of") and "vllm" in problem
    assert (
        preflight(serve_cfg(pair, engine="vllm", allow_calibration_engine_mismatch=True), {}) == []
    )
    assert preflight(serve_cfg(pair), {}) == []


def test_batch_scoring_checks_the_engine_before_scoring(pair, tmp_path):
    from pipelines.score import check_bundles

    base, spec = pair
    fields = dict(
        source=str(tmp_path), base_uri=str(base), specialist_uri=str(spec), output_dir="out"
    )
    models = check_bundles(ScoreDatasetConfig(**fields))
    assert models["fusion_scoring"] == {"engine": "transformers", "dtype": "float32"}
    vllm = dict(fields, engine="vllm", gpus_per_actor=1)
    with pytest.raises(CalibrationMismatch, match="vllm"):
        check_bundles(ScoreDatasetConfig(**vllm))
    check_bundles(ScoreDatasetConfig(**vllm, allow_calibration_engine_mismatch=True))


def test_vllm_scoring_configs_need_a_gpu(pair):
    from hazard.config.calibrate import CalibrateConfig

    with pytest.raises(ValueError, match="gpus_per_task"):
        CalibrateConfig(
            data_dir="d", base_uri="b", specialist_uri="s", output_dir="o", engine="vllm"
        )
    common = dict(source="x", base_uri="b", specialist_uri="s", output_dir="o", engine="vllm")
    with pytest.raises(ValueError, match="gpus_per_actor"):
        ScoreDatasetConfig(**common)
    with pytest.raises(ValueError, match="share one GPU"):
        ScoreDatasetConfig(**common, gpus_per_actor=1, vllm={"gpu_memory_utilization": 0.8})
