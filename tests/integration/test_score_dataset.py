"""The batch scoring job end to end: two different real bundles, a folder with a corrupt file,
the same folder on S3 (moto on loopback) and Parquet shards; every number is checked against
`hazard.model.vlm.label_probabilities` and `hazard.core.cascade.combine` computed here, image by
image."""

from __future__ import annotations

import csv
import io
import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from safetensors.numpy import load_file, save_file

from hazard.config.score import ScoreDatasetConfig
from hazard.core.cascade import FusionSpec, combine, needs_specialist
from hazard.core.labels import HIGH_RISK, RISK_LABELS
from hazard.infra.bundle import attach_fusion
from hazard.infra.storage import read_bytes, read_parquet, upload_dir
from pipelines.score import PROB_COLUMNS, CascadeScorer, score_dataset
from tests.helpers.serve import fusion, image_bytes, make_bundle

pytestmark = [pytest.mark.slow, pytest.mark.image_lock]

N_IMAGES = 8
CORRUPT = "sub/broken.png"


def _images() -> dict[str, bytes]:
    """Noise images of different sizes and tints (PNG), by relative path."""
    rng = np.random.default_rng(7)
    out = {}
    for i in range(N_IMAGES):
        h, w = 40 + 8 * i, 64 - 4 * i
        tint = rng.integers(0, 256, 3)
        arr = (rng.integers(0, 256, (h, w, 3)) // 2 + tint // 2).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG")
        out[f"{'sub/' if i % 2 else ''}img_{i}.png"] = buf.getvalue()
    return out


def _perturbed_checkpoint(src: Path, dest: Path, seed: int = 1) -> Path:
    """A copy of the tiny checkpoint with noise on every float tensor: a different model."""
    shutil.copytree(src, dest)
    rng = np.random.default_rng(seed)
    tensors = load_file(dest / "model.safetensors")
    changed = {
        k: (v + 0.05 * rng.standard_normal(v.shape)).astype(v.dtype) if v.dtype.kind == "f" else v
        for k, v in tensors.items()
    }
    save_file(changed, dest / "model.safetensors")
    return dest


def _probs(path: Path, images: dict[str, bytes]) -> dict[str, dict[str, float]]:
    """label -> p per image, one forward per image, straight from hazard.model.vlm."""
    from hazard.infra.bundle import read_meta
    from hazard.model.vlm import label_probabilities, load_model, load_processor

    meta = read_meta(path)
    model = load_model(path).eval()
    processor = load_processor(path, meta.max_pixels, meta.min_pixels)
    out = {}
    for rel, data in images.items():
        img = Image.open(io.BytesIO(data)).convert("RGB")
        row = label_probabilities(model, processor, [[img]], meta.prompt, tuple(meta.labels))
        out[rel] = dict(zip(meta.labels, row[0].tolist(), strict=True))
    return out


@pytest.fixture(scope="module")
def cascade(tmp_path_factory, tiny_model_path):
    """Two different bundles, a fusion whose θ escalates about half the images, the images and
    the expected result of each, computed independently of the job."""
    root = tmp_path_factory.mktemp("score")
    images = _images()
    base = make_bundle(tiny_model_path, root / "base", "hazard-base-t", "1.0.0", "base")
    spec_ckpt = _perturbed_checkpoint(tiny_model_path, root / "spec_ckpt")
    spec = make_bundle(spec_ckpt, root / "spec", "hazard-spec-t", "2.0.0", "specialist")
    p_base, p_spec = _probs(base, images), _probs(spec, images)
    upper = sorted(p["medium_risk"] + p[HIGH_RISK] for p in p_base.values())
    theta = (upper[N_IMAGES // 2 - 1] + upper[N_IMAGES // 2]) / 2  # half escalate
    fitted = fusion(theta, slope=3.0, intercept=-1.0)
    attach_fusion(spec, fitted)
    fs = FusionSpec.from_dict(fitted)
    expected = {}
    for rel in images:
        esc = needs_specialist(p_base[rel], fs)
        result = combine(p_base[rel], p_spec[rel][HIGH_RISK] if esc else None, fs)
        expected[rel] = (result, p_spec[rel][HIGH_RISK] if esc else None)
    folder = root / "src"
    for rel, data in images.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    (folder / CORRUPT).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    (folder / "notes.txt").write_text("not an image: not listed")
    return {
        "base": str(base),
        "spec": str(spec),
        "folder": folder,
        "images": images,
        "p_base": p_base,
        "p_spec": p_spec,
        "expected": expected,
    }


def _check(out_rows: list[dict], submission: str, summary: dict, cascade: dict, corrupt: bool):
    expected = cascade["expected"]
    ids = sorted([*expected, *([CORRUPT] if corrupt else [])])
    assert [r["id"] for r in out_rows] == ids  # one row per image, in the listing's order
    lines = list(csv.reader(io.StringIO(submission)))
    assert lines[0] == ["id", "label"]
    assert [line[0] for line in lines[1:]] == ids
    sub = dict((line[0], line[1]) for line in lines[1:])
    n_esc = 0
    for row in out_rows:
        if row["id"] == CORRUPT:
            assert row["error"] == "undecodable" and row["label"] is None and sub[CORRUPT] == ""
            continue
        result, p_high = expected[row["id"]]
        assert row["error"] is None
        got = {label: row[c] for label, c in zip(RISK_LABELS, PROB_COLUMNS, strict=True)}
        np.testing.assert_allclose(
            [got[k] for k in RISK_LABELS], [result.probabilities[k] for k in RISK_LABELS], atol=2e-5
        )
        assert row["escalated"] == result.escalated
        assert row["hazard_score"] == pytest.approx(result.hazard_score, abs=1e-4)
        if p_high is None:
            assert row["p_high_specialist"] is None
        else:
            n_esc += 1
            assert row["p_high_specialist"] == pytest.approx(p_high, abs=2e-5)
        label = max(RISK_LABELS, key=result.probabilities.__getitem__)
        assert row["label"] == sub[row["id"]] == label
    assert 0 < n_esc < N_IMAGES  # both paths of the cascade were exercised
    assert summary["escalated"] == n_esc
    assert summary["listed"] == len(ids) == summary["scored"] + summary["failed"]
    assert summary["scored"] == N_IMAGES
    assert summary["failed_by_reason"] == ({"undecodable": 1} if corrupt else {})
    assert summary["models"]["base"]["name"] == "hazard-base-t"
    assert summary["models"]["specialist"]["version"] == "2.0.0"


def test_the_two_bundles_differ_where_it_matters(cascade):
    """Guards the test itself: a swapped model or a skipped fusion would change the numbers."""
    gaps = [
        abs(cascade["p_base"][k][HIGH_RISK] - cascade["p_spec"][k][HIGH_RISK])
        for k in cascade["images"]
    ]
    assert max(gaps) > 1e-3
    fused = [r for r, p in cascade["expected"].values() if p is not None]
    moved = [
        abs(r.probabilities[HIGH_RISK] - cascade["p_base"][k][HIGH_RISK])
        for k, (r, p) in cascade["expected"].items()
        if p is not None
    ]
    assert fused and max(moved) > 1e-3


def test_scores_a_folder_with_a_corrupt_file(cascade, tmp_path, ray_local):
    out = tmp_path / "out"
    cfg = ScoreDatasetConfig(
        source=str(cascade["folder"]),
        base_uri=cascade["base"],
        specialist_uri=cascade["spec"],
        output_dir=str(out),
        batch_size=3,
        cpus_per_actor=1,
    )
    summary = score_dataset(cfg)
    assert summary["format"] == "folder"
    assert json.loads((out / "summary.json").read_text()) == summary
    rows = pq.read_table(out / "predictions.parquet").to_pylist()
    _check(rows, (out / "submission.csv").read_text(), summary, cascade, corrupt=True)
    broken = next(r for r in rows if r["id"] == CORRUPT)
    assert "cannot decode" in broken["error_detail"]


def test_scores_an_s3_prefix_to_s3(cascade, ray_s3):
    prefix = f"s3://{ray_s3.bucket}/score-{uuid.uuid4().hex[:8]}"
    upload_dir(cascade["folder"], f"{prefix}/images")
    cfg = ScoreDatasetConfig(
        source=f"{prefix}/images/",
        base_uri=cascade["base"],
        specialist_uri=cascade["spec"],
        output_dir=f"{prefix}/scored",
        batch_size=4,
        cpus_per_actor=1,
    )
    summary = score_dataset(cfg)
    rows = read_parquet(f"{prefix}/scored/predictions.parquet").to_pylist()
    submission = read_bytes(f"{prefix}/scored/submission.csv").decode()
    _check(rows, submission, summary, cascade, corrupt=True)
    assert json.loads(read_bytes(f"{prefix}/scored/summary.json")) == summary


def test_scores_parquet_shards(cascade, tmp_path, ray_local):
    """Sample-schema shards (ids from the `id` column), two files, read in file order."""
    items = sorted(cascade["images"].items())
    shards = tmp_path / "shards"
    shards.mkdir()
    for n, part in enumerate((items[:3], items[3:])):
        table = pa.table(
            {
                "id": [k for k, _ in part],
                "images": pa.array([[v] for _, v in part], pa.list_(pa.binary())),
                "answer": ["no_risk"] * len(part),
            }
        )
        pq.write_table(table, shards / f"part-{n}.parquet")
    cfg = ScoreDatasetConfig(
        source=str(shards),
        base_uri=cascade["base"],
        specialist_uri=cascade["spec"],
        output_dir=str(tmp_path / "out"),
        batch_size=2,
    )
    summary = score_dataset(cfg)
    assert summary["format"] == "parquet"
    rows = pq.read_table(tmp_path / "out" / "predictions.parquet").to_pylist()
    submission = (tmp_path / "out" / "submission.csv").read_text()
    _check(rows, submission, summary, cascade, corrupt=False)


def test_the_job_decodes_a_large_photo_to_the_serving_pixel_budget(tmp_path, tiny_model_path):
    """Budgets 10,000 (base) and 12,544 (specialist): the job brings a 1600x1200 JPEG to the
    larger, as the serving ingress does, to 129x96 (the ingress's figure for this budget in
    test_serve_operations); before, it scored the photo at full size."""
    base = make_bundle(tiny_model_path, tmp_path / "b", "b", "1", "base", max_pixels=10_000)
    spec = make_bundle(tiny_model_path, tmp_path / "s", "s", "1", "specialist", max_pixels=12_544)
    scorer = CascadeScorer(str(base), str(spec), "float32", 10_000_000, 40_000_000)
    photo = image_bytes((1600, 1200), (90, 140, 200), fmt="JPEG")
    [img] = scorer.decode([photo])
    assert scorer.pixel_budget == 12_544
    assert img.size == (129, 96) and img.mode == "RGB"


def test_the_one_source_planner_lists_batch_scoring_sources(tmp_path):
    from pipelines.sources import SourceError, plan_source

    def cfg(source, fmt="auto"):
        return ScoreDatasetConfig(
            source=str(source), format=fmt, base_uri="b", specialist_uri="s", output_dir="o"
        )

    with pytest.raises(SourceError, match="not found"):
        plan_source(cfg(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="holds no images"):
        plan_source(cfg(tmp_path / "empty"))
    src = tmp_path / "src"
    (src / ".hidden").mkdir(parents=True)
    for rel in ("b.PNG", "a/c.jpg", ".hidden/d.png", "notes.txt"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(b"x")
    source = plan_source(cfg(src))
    assert source.format == "folder"
    assert [rel for rel, _ in source.files] == ["a/c.jpg", "b.PNG"]
    assert source.files[0][1].endswith("src/a/c.jpg")
    (src / "z.parquet").write_bytes(b"x")
    auto = plan_source(cfg(src))
    assert (auto.format, [rel for rel, _ in auto.files]) == ("parquet", ["z.parquet"])
    assert plan_source(cfg(src, "folder")).format == "folder"
    one = plan_source(cfg(src / "z.parquet"))
    assert (one.format, one.files) == ("parquet", (("z.parquet", str(src / "z.parquet")),))
    with pytest.raises(SourceError, match="is a file"):
        plan_source(cfg(src / "z.parquet", "folder"))
    with pytest.raises(SourceError, match="is a file"):
        plan_source(cfg(src / "b.PNG"))
