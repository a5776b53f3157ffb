"""Training with its model source, checkpoints and bundle on `s3://` (moto on loopback), and
serving that bundle from `s3://`.

The tiny checkpoint is uploaded to the bucket and named as `model.path`; `output_dir` is an
`s3://` prefix, so Ray Train persists checkpoints there (`RunConfig.storage_filesystem`) and the
bundle, metrics.json and plots land there too. The serving engine then loads the bundle from
the bucket into a fresh cache and must score the validation images exactly as the exported
model did (the bundle's own val_predictions).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid

import numpy as np
import pyarrow.parquet as pq
import pytest

from hazard.infra.storage import cache_root, list_files, read_bytes, upload_dir
from hazard.model.vlm import open_stored_image
from ray_jobs.train import run
from tests.helpers.train import prepare_small, stage_config

pytestmark = pytest.mark.slow


def test_stage1_from_s3_to_s3_and_served_from_s3(
    tmp_path, ray_s3, tiny_model_path, monkeypatch, request
):
    prefix = f"s3://{ray_s3.bucket}/train-{uuid.uuid4().hex[:8]}"
    upload_dir(tiny_model_path, f"{prefix}/tiny-model")
    prepare_small(tmp_path)
    source = f"{prefix}/tiny-model"
    fetched = cache_root() / "models" / hashlib.sha256(source.encode()).hexdigest()[:16]
    request.addfinalizer(lambda: shutil.rmtree(fetched, ignore_errors=True))
    cfg = stage_config(
        tmp_path / "data",
        f"{prefix}/stage1",
        2,
        [f"model.path={source}", "eval.every_steps=2", "checkpoint.every_steps=1"],
    )
    metrics = run(cfg)
    assert metrics["model_dir"] == f"{prefix}/stage1/model"
    # the workers fetched the model source from the bucket into the cache
    assert (fetched / "model.safetensors").is_file()
    keys = {e.relpath for e in list_files(f"{prefix}/stage1")}
    for step in (1, 2):
        assert f"ray_results/{cfg.run_name}/step_{step:08d}/manifest.rank0.json" in keys
        assert f"ray_results/{cfg.run_name}/step_{step:08d}/manifest.rank1.json" in keys
    assert {"model/hazard_model.json", "model/model.safetensors", "metrics.json"} <= keys
    assert "plots/loss_lr.png" in keys
    written = json.loads(read_bytes(f"{prefix}/stage1/metrics.json"))
    assert written["best_step"] == metrics["best_step"] and written["step"] == 2

    from hazard.model.engines import TransformersEngine

    monkeypatch.setenv("HAZARD_CACHE", str(tmp_path / "cache"))  # a replica with no cache
    engine = TransformersEngine(metrics["model_dir"])
    assert (tmp_path / "cache/bundles").is_dir()
    table = pq.read_table(tmp_path / "data/val", columns=["images"])
    images = [[open_stored_image(b) for b in row] for row in table.column("images").to_pylist()]
    served = engine.score(images)
    from hazard.infra.bundle import read_meta

    exported = np.array(read_meta(metrics["model_dir"]).val_predictions.probabilities)
    assert served.shape == exported.shape == (5, 5)
    assert np.allclose(served, exported, atol=1e-5)
