"""The calibration job on Ray: both bundles scored with the configured engine and dtype, the
fusion fitted on val as computed here independently, and the engine and dtype recorded in
calibration.json, fusion.json and the specialist bundle."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from hazard.config.calibrate import CalibrateConfig
from hazard.core.cascade import FusionSpec
from hazard.core.fusion import fit_correction, fit_escalation_threshold
from hazard.core.labels import HIGH_RISK, RISK_LABELS
from hazard.infra.bundle import check_calibration, read_meta
from ray_jobs.calibrate import run
from tests.helpers.serve import image_bytes, make_bundle

pytestmark = [pytest.mark.slow, pytest.mark.image_lock]

BATCH = 3


def _split(folder, n: int, seed: int) -> list[tuple[bytes, str]]:
    """`n` rows of tinted images with labels cycling through the five risk labels."""
    rng = np.random.default_rng(seed)
    rows = [
        (image_bytes((56, 56), tuple(int(c) for c in rng.integers(0, 256, 3))), label)
        for label in [RISK_LABELS[i % len(RISK_LABELS)] for i in range(n)]
    ]
    folder.mkdir(parents=True)
    table = pa.table(
        {
            "images": pa.array([[img] for img, _ in rows], pa.list_(pa.binary())),
            "answer": [label for _, label in rows],
        }
    )
    pq.write_table(table, folder / "part-0.parquet")
    return rows


def _probs(bundle, rows, dtype: str) -> list[dict]:
    """label -> p per row, in batches of BATCH, straight from hazard.model.vlm."""
    import io

    from hazard.model.vlm import label_probabilities, load_model, load_processor

    meta = read_meta(bundle)
    model = load_model(bundle, dtype).eval()
    processor = load_processor(bundle, meta.max_pixels, meta.min_pixels)
    out = []
    for start in range(0, len(rows), BATCH):
        images = [[Image.open(io.BytesIO(img)).convert("RGB")] for img, _ in rows[start:][:BATCH]]
        probs = label_probabilities(model, processor, images, meta.prompt, tuple(meta.labels))
        out.extend(dict(zip(meta.labels, row.tolist(), strict=True)) for row in probs)
    return out


def test_calibration_records_engine_and_dtype(tmp_path, tiny_model_path, ray_local):
    base = make_bundle(tiny_model_path, tmp_path / "base", "b", "1", "base")
    # a specialist that answers differently from the base
    spec = make_bundle(tiny_model_path, tmp_path / "spec", "s", "1", "specialist", perturb_seed=3)
    data = tmp_path / "data"
    val, _ = _split(data / "val", 7, seed=1), _split(data / "test", 5, seed=2)
    cfg = CalibrateConfig(
        data_dir=str(data),
        base_uri=str(base),
        specialist_uri=str(spec),
        output_dir=str(tmp_path / "out"),
        dtype="bfloat16",
        batch_size=BATCH,
        cpus_per_task=1,
        min_high_recall=1.0,
    )
    report = run(cfg)

    # the fusion is the one fitted on the probabilities computed here, in bfloat16
    pb, ps = _probs(base, val, "bfloat16"), _probs(spec, val, "bfloat16")
    truth = [label for _, label in val]
    expected = FusionSpec(
        fit_correction(pb, [p[HIGH_RISK] for p in ps], truth),
        fit_escalation_threshold(pb, truth, min_high_recall=1.0),
    )
    assert report["fusion"] == expected.to_dict()

    recorded = {"scoring_engine": "transformers", "scoring_dtype": "bfloat16"}
    calibration = json.loads((tmp_path / "out" / "calibration.json").read_text())
    fusion = json.loads((tmp_path / "out" / "fusion.json").read_text())
    meta = read_meta(spec)
    assert {k: calibration[k] for k in recorded} == recorded
    assert {k: fusion[k] for k in recorded} == recorded
    assert (meta.scoring_engine, meta.scoring_dtype) == ("transformers", "bfloat16")
    assert meta.fusion_spec() == expected
    assert check_calibration(meta, str(spec), "transformers", "bfloat16") == []
