"""`hazard eval` end to end on a local Ray: a prepared split (two shards; labelled rows,
unlabelled rows and one undecodable) scored by a bundle and by the base model; every figure is
checked against numbers recomputed here from predictions.parquet, and three rows'
probabilities against `hazard.model.vlm.label_probabilities` computed in the test; the same
split on S3 (moto on loopback) evaluated to an s3:// prefix."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hazard.core.labels import RISK_LABELS
from hazard.core.tasks import get_task
from hazard.infra.storage import read_bytes, upload_dir
from ray_jobs.eval import main
from tests.helpers.eval_data import sample_row, write_split
from tests.helpers.serve import make_bundle

pytestmark = [pytest.mark.slow, pytest.mark.image_lock]

ANSWERS = ["no_risk", "high_risk", "low_risk", "medium_risk", "non_corridor", "high_risk"]
UNLABELLED = ["t0", "t1"]
BROKEN = "broken"  # a labelled row whose image does not decode: failed, a wrong prediction


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_path):
    root = tmp_path_factory.mktemp("eval")
    rows = [sample_row(f"r{i}", a, seed=i) for i, a in enumerate(ANSWERS)]
    rows += [sample_row(t, None, seed=10 + k) for k, t in enumerate(UNLABELLED)]
    broken = dict(sample_row(BROKEN, "low_risk"), images=[b"\x89PNG\r\n\x1a\n garbage"])
    # two shards, unlabelled and broken rows between labelled ones: the order must survive
    shards = [rows[:4], [rows[4], rows[6], broken, rows[5], rows[7]]]
    data = write_split(root / "data", "test", shards)
    bundle = make_bundle(
        tiny_model_path, root / "bundle", "hazard-base-t", "1.0.0", "base", perturb_seed=3
    )
    return {"root": root, "data": data, "rows": [r for s in shards for r in s], "bundle": bundle}


def _run(setup, model: Path, out: str, *extra: str) -> Path:
    out_dir = setup["root"] / out
    args = ["--model", str(model), "--data", str(setup["data"]), "--out", str(out_dir)]
    assert main([*args, "--set", "batch_size=3", *extra]) == 0
    return out_dir


def _expected(path: Path, rows: list[dict], max_pixels=None, min_pixels=None) -> list[list]:
    """label_probabilities of each row, one forward per row, straight from hazard.model.vlm."""
    from hazard.model.vlm import label_probabilities, load_model, load_processor, open_stored_image

    model = load_model(path).eval()
    processor = load_processor(path, max_pixels, min_pixels)
    prompt = get_task("corridor_risk").prompt
    out = []
    for row in rows:
        images = [[open_stored_image(b) for b in row["images"]]]
        out.append(label_probabilities(model, processor, images, prompt, RISK_LABELS)[0].tolist())
    return out


def _check(out_dir: Path, setup: dict, model_path: Path, dataset: str) -> dict:
    rows = setup["rows"]
    preds = pq.read_table(out_dir / "predictions.parquet").to_pylist()
    assert [p["id"] for p in preds] == [r["id"] for r in rows]  # the source's order
    assert [p["reference"] for p in preds] == [r["answer"] for r in rows]
    failed = [p for p in preds if p["id"] == BROKEN]
    assert [(p["error"], p["prediction"], p["correct"]) for p in failed] == [
        ("undecodable", None, False)
    ]
    for p in preds:
        if p["id"] == BROKEN:
            continue
        probs = [p[f"p_{label}"] for label in RISK_LABELS]
        assert sum(probs) == pytest.approx(1.0, abs=1e-6)
        assert p["prediction"] == RISK_LABELS[probs.index(max(probs))]
        assert p["error"] is None and p["task"] == "corridor_risk"
        assert p["correct"] == (
            None if p["reference"] is None else p["prediction"] == p["reference"]
        )
    # probabilities of three rows (one unlabelled) against label_probabilities, to 1e-5
    picked = [0, 5, 7]
    expected = _expected(model_path, [rows[i] for i in picked])
    for i, exp in zip(picked, expected, strict=True):
        got = [preds[i][f"p_{label}"] for label in RISK_LABELS]
        assert got == pytest.approx(exp, abs=1e-5)
    # metrics.json against the labelled rows of predictions.parquet
    report = json.loads((out_dir / "metrics.json").read_text())
    labelled = [p for p in preds if p["reference"] is not None]
    task = report["tasks"]["corridor_risk"]
    m = task["metrics"]
    assert m["n"] == len(ANSWERS) + 1 and m["invalid_predictions"] == 1
    assert m["accuracy"] == pytest.approx(sum(p["correct"] for p in labelled) / len(labelled))
    idx = {label: k for k, label in enumerate(RISK_LABELS)}
    cm = [[0] * len(RISK_LABELS) for _ in RISK_LABELS]
    for p in labelled:
        if p["prediction"] is not None:
            cm[idx[p["reference"]]][idx[p["prediction"]]] += 1
    assert m["confusion_matrix"] == cm
    present = sorted({p["reference"] for p in labelled})
    recall = [
        sum(p["correct"] for p in labelled if p["reference"] == c)
        / sum(p["reference"] == c for p in labelled)
        for c in present
    ]
    assert m["balanced_accuracy"] == pytest.approx(sum(recall) / len(recall))
    counts = {"rows": 9, "scored": 8, "failed": 1, "failed_by_reason": {"undecodable": 1}}
    assert task["counts"] == dict(counts, labelled=7, unlabelled=2) == report["counts"]
    assert report["split"] == "test" and report["date"]
    # the answers file: one valid label per id, every row (unlabelled included), in order
    answers = json.loads((out_dir / "answers" / f"{dataset}.json").read_text())
    assert [a["id"] for a in answers] == [r["id"] for r in rows]
    assert all(a["output"] in RISK_LABELS for a in answers if a["id"] != BROKEN)
    assert [a["output"] for a in answers] == [p["prediction"] or "" for p in preds]
    page = (out_dir / "report.html").read_text()
    assert "data:image/png;base64," in page and f"{m['accuracy']:.4f}" in page
    return report


def test_bundle(setup, ray_local):
    out = _run(setup, setup["bundle"], "bundle_out", "--set", "dataset=corridor_test")
    report = _check(out, setup, setup["bundle"], "corridor_test")
    assert report["model"]["kind"] == "bundle"
    assert (report["model"]["name"], report["model"]["version"]) == ("hazard-base-t", "1.0.0")


def test_base_model(setup, ray_local, tiny_model_path):
    out = _run(setup, tiny_model_path, "base_out", "--task", "corridor_risk")
    report = _check(out, setup, tiny_model_path, "corridor_risk")
    assert report["model"]["kind"] == "base" and report["model"]["uri"] == str(tiny_model_path)
    # the bundle's weights were perturbed: the two runs read two different models
    base = pq.read_table(out / "predictions.parquet", columns=["p_no_risk"]).column(0)
    tuned = pq.read_table(setup["root"] / "bundle_out" / "predictions.parquet").column("p_no_risk")
    pairs = zip(base.to_pylist(), tuned.to_pylist(), strict=True)
    assert max(abs(a - b) for a, b in pairs if a is not None) > 1e-4


def test_s3_data_to_s3_out(setup, ray_s3, tmp_path):
    prefix = f"s3://{ray_s3.bucket}/eval-{uuid.uuid4().hex[:8]}"
    upload_dir(setup["data"], f"{prefix}/data")
    args = ["--model", str(setup["bundle"]), "--data", f"{prefix}/data", "--out", f"{prefix}/out"]
    assert main(args) == 0
    for rel in ("predictions.parquet", "metrics.json", "answers/corridor_risk.json", "report.html"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(read_bytes(f"{prefix}/out/{rel}"))
    report = _check(tmp_path, setup, setup["bundle"], "corridor_risk")
    assert report["data"] == f"{prefix}/data"
