"""One path from a bundle to label probabilities: serving's engine, calibration's
`score_bundle` and the consistency filter's `score_rows` give the same numbers on the same
bundle and images, and all three follow the bundle's pixel limits."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from hazard.infra.bundle import read_meta
from hazard.model.engines import make_engine
from hazard.model.vlm import label_probabilities, load_model, load_processor, open_stored_image
from pipelines.consistency import score_rows
from ray_jobs.calibrate import score_bundle
from tests.helpers.serve import make_bundle

SMALL = 28 * 28 * 4  # a 112x96 picture shrinks to about 56x56: fewer image tokens


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (96, 112, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _through_each_caller(uri: str, split: str, data: list[bytes], labels) -> dict[str, np.ndarray]:
    """[n, labels] probabilities as serving, calibration and the consistency filter get them."""
    engine = make_engine("transformers", uri)
    served = engine.score([[open_stored_image(d)] for d in data])
    ((calibrated, _),) = score_bundle(uri, [split], batch_size=2)
    rows = [{"id": str(i), "images": [d]} for i, d in enumerate(data)]
    consistency = np.array(
        [score_rows(engine, [dict(r, answer=label) for r in rows]) for label in labels]
    ).T  # p(answer) per row, one label at a time
    return {
        "serving": served,
        "calibration": np.array([[p[label] for label in labels] for p in calibrated]),
        "consistency": consistency,
    }


@pytest.mark.slow
def test_callers_share_one_scorer_and_the_bundle_pixel_limits(tiny_model_path, tmp_path):
    data = [_png(seed) for seed in range(3)]
    split = tmp_path / "val"
    split.mkdir()
    table = pa.table(
        {"images": pa.array([[d] for d in data], pa.list_(pa.binary())), "answer": ["no_risk"] * 3}
    )
    pq.write_table(table, split / "part-0.parquet")
    full = make_bundle(tiny_model_path, tmp_path / "full", "m", "1", "base")
    small = make_bundle(tiny_model_path, tmp_path / "small", "m", "1", "base", max_pixels=SMALL)

    model = load_model(tiny_model_path).eval()
    got = {}
    for name, bundle, max_pixels in (("full", full, None), ("small", small, SMALL)):
        meta = read_meta(bundle)
        labels = tuple(meta.labels)
        # the reference, straight from hazard.model.vlm with the limits this bundle records
        processor = load_processor(tiny_model_path, max_pixels)
        images = [[open_stored_image(d)] for d in data]
        ref = label_probabilities(model, processor, images, meta.prompt, labels).numpy()
        got[name] = _through_each_caller(str(bundle), str(split), data, labels)
        for caller, probs in got[name].items():
            np.testing.assert_allclose(probs, ref, atol=1e-6, err_msg=f"{name}: {caller}")
    for caller in got["full"]:  # the pixel limit reaches every caller
        diff = np.abs(got["full"][caller] - got["small"][caller]).max()
        assert diff > 1e-3, f"{caller} ignores the bundle's max_pixels (diff {diff:.2e})"
