"""`augment.store: recipes` end to end: the data job writes the same rows as with `images`
but no copy bytes (output within 1.2x the input on photo-sized JPEGs), and the training ingest
(`ray_jobs.train.build_datasets`) rebuilds each copy with the pixels `images` mode stores."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from hazard.config import load_config
from hazard.config.data import DataConfig
from hazard.core.schema import SPLITS
from hazard.demo.synthetic import write_folder_dataset
from tests.helpers.train import REPO, stage_config

pytestmark = pytest.mark.slow


def _photo_folder(root: Path) -> int:
    """Synthetic scenes as 1280x720 JPEGs (quality 90, mild sensor noise), 4 per label; their
    total bytes."""
    write_folder_dataset(root, n_per_label=4, seed=7, size=160)
    rows = list(csv.reader((root / "labels.csv").open()))
    total = 0
    for i, row in enumerate(rows[1:], start=1):
        with Image.open(root / row[0]) as img:
            big = img.convert("RGB").resize((1280, 720), Image.Resampling.BICUBIC)
        noise = np.random.default_rng(i).normal(0, 2.0, (720, 1280, 3))
        arr = np.clip(np.asarray(big, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
        (root / row[0]).unlink()
        row[0] = row[0].rsplit(".", 1)[0] + ".jpg"
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=90)
        (root / row[0]).write_bytes(buf.getvalue())
        total += len(buf.getvalue())
    with (root / "labels.csv").open("w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
    return total


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ray_local) -> dict:
    """The production data config on the same photos, once per `augment.store`."""
    from pipelines.prepare import prepare

    root = tmp_path_factory.mktemp("recipes")
    input_bytes = _photo_folder(root / "raw")
    out = {"root": root, "input_bytes": input_bytes}
    for store in ("images", "recipes"):
        cfg = load_config(
            REPO / "configs/data_corridor.yaml",
            DataConfig,
            [
                f"source.uri={root / 'raw'}",
                f"output_dir={root / store}",
                f"augment.store={store}",
                "ray.batch_size=8",
            ],
        )
        out[store] = prepare(cfg)
    return out


def _train_rows(data_dir: Path) -> dict[str, dict]:
    table = pq.read_table(data_dir / "train", schema=None)
    return {r["id"]: r for r in table.to_pylist()}


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def test_the_production_config_stores_recipes():
    cfg = load_config(REPO / "configs/data_corridor.yaml", DataConfig)
    tiny = load_config(REPO / "configs/tiny/data.yaml", DataConfig)
    assert cfg.augment.store == "recipes" and tiny.augment.store == "images"


def test_recipes_write_the_same_rows_within_1_2x_the_input(runs):
    images, recipes = runs["images"], runs["recipes"]
    assert recipes["augmented"] > 0 and recipes["invariants"]["ok"]
    for key in ("listed", "accepted", "rejected", "augmented", "augment_failed", "written"):
        assert recipes[key] == images[key], key
    assert recipes["stages"] == images["stages"]
    for split in SPLITS:
        mine = {k: v for k, v in recipes["splits"][split].items() if k != "shards"}
        theirs = {k: v for k, v in images["splits"][split].items() if k != "shards"}
        assert mine == theirs, split
    stored = _train_rows(runs["root"] / "images")
    written = _train_rows(runs["root"] / "recipes")
    assert written.keys() == stored.keys()
    for rid, row in written.items():
        if row["parent_id"] is None:
            assert row == stored[rid]
        else:
            assert row["images"] == [] and row["aug_ops"] == stored[rid]["aug_ops"]
    ratio = {
        s: _folder_bytes(runs["root"] / s) / runs["input_bytes"] for s in ("images", "recipes")
    }
    print(f"output / input bytes: {json.dumps({k: round(v, 3) for k, v in ratio.items()})}")
    assert ratio["recipes"] <= 1.2 < ratio["images"]


def test_the_ingest_rebuilds_the_data_jobs_copies_pixel_for_pixel(runs, tmp_path):
    from ray_jobs.train import build_datasets, recipe_configs

    root = runs["root"]
    images_cfg = stage_config(root / "images", tmp_path / "a", 2)
    recipes_cfg = stage_config(root / "recipes", tmp_path / "b", 2)
    assert recipe_configs(images_cfg) is None
    augment_cfg, _ = recipe_configs(recipes_cfg)
    assert augment_cfg.store == "recipes" and augment_cfg.copies == 2

    stored = _train_rows(root / "images")
    ds, counts = build_datasets(recipes_cfg)
    _, stored_counts = build_datasets(images_cfg)
    assert counts == stored_counts
    seen: dict[str, int] = {}
    for row in ds.iter_rows():
        rid = row["id"]
        want = stored[rid]
        got = [bytes(b) for b in row["images"]]
        assert got == want["images"], rid  # the same encoded bytes, so the same pixels
        if rid not in seen and want["parent_id"] is not None:
            parent = _pixels(stored[want["parent_id"]]["images"][0])
            pixels = _pixels(got[0])
            assert np.array_equal(pixels, _pixels(want["images"][0]))
            assert pixels.shape == parent.shape and not np.array_equal(pixels, parent)
        seen[rid] = seen.get(rid, 0) + 1
    assert seen.keys() == stored.keys()
    assert len(set(seen.values())) == 1  # every row, copies included, once per pass


def test_stage1_trains_on_the_rebuilt_copies_like_on_the_stored_ones(ray_local, tmp_path):
    """2 steps of stage 1 on the tiny data prepared both ways: the same micro-batches (same
    block order, one worker) give the same losses, copies included."""
    import ray.data

    from pipelines.prepare import prepare
    from ray_jobs.train import run
    from tests.helpers.train import prepare_small

    prepare_small(tmp_path)  # writes tmp_path/raw and tmp_path/data (store: images)
    recipes = load_config(
        REPO / "configs/tiny/data.yaml",
        DataConfig,
        [
            f"source.uri={tmp_path / 'raw'}",
            f"output_dir={tmp_path / 'recipes'}",
            "augment.copies=1",
            "augment.store=recipes",
        ],
    )
    assert prepare(recipes)["augmented"] > 0
    assert all(
        not r["images"] for r in _train_rows(tmp_path / "recipes").values() if r["parent_id"]
    )
    options = ray.data.DataContext.get_current().execution_options
    preserve, options.preserve_order = options.preserve_order, True
    losses, rows = {}, {}
    try:
        for name in ("data", "recipes"):
            cfg = stage_config(
                tmp_path / name,
                tmp_path / f"out-{name}",
                2,
                ["scaling.num_workers=1", "optim.grad_accum_steps=2", "eval.every_steps=0"],
            )
            metrics = run(cfg)
            losses[name] = [s["loss"] for s in metrics["history"]["steps"]]
            rows[name] = metrics["train_rows"]
    finally:
        options.preserve_order = preserve
    assert rows["recipes"] == rows["data"] and len(losses["data"]) == 2
    assert losses["recipes"] == pytest.approx(losses["data"], rel=1e-6)


def test_the_consistency_filter_scores_the_recipes_pixels(ray_local, tiny_model_path, tmp_path):
    """With the filter on, recipe copies are rendered for scoring and written without images:
    the same scores, the same copies dropped, as the stored copies; the ingest's rebuilt
    copies are the stored ones."""
    from pipelines.prepare import prepare
    from ray_jobs.train import build_datasets
    from tests.helpers.serve import make_bundle

    bundle = make_bundle(tiny_model_path, tmp_path / "model", "m", "1", "base")
    write_folder_dataset(tmp_path / "raw", n_per_label=4, seed=2, corrupt=0)
    reports = {}
    for store in ("images", "recipes"):
        cfg = load_config(
            REPO / "configs/tiny/data.yaml",
            DataConfig,
            [
                f"source.uri={tmp_path / 'raw'}",
                f"output_dir={tmp_path / store}",
                f"augment.store={store}",
                "consistency.enabled=true",
                f"consistency.model_uri={bundle}",
                "consistency.margin=0.01",
            ],
        )
        reports[store] = prepare(cfg)
    assert 0 < reports["recipes"]["filtered"] < reports["recipes"]["augmented"]  # 6 of 20 here
    for key in ("augmented", "filtered", "written"):
        assert reports["recipes"][key] == reports["images"][key], key
    stored = _train_rows(tmp_path / "images")
    written = _train_rows(tmp_path / "recipes")
    assert written.keys() == stored.keys()
    for rid, row in written.items():
        assert row["consistency_score"] == stored[rid]["consistency_score"], rid
        assert (row["images"] == []) == (row["parent_id"] is not None)
    ds, _ = build_datasets(stage_config(tmp_path / "recipes", tmp_path / "out", 1))
    for row in ds.iter_rows():
        assert [bytes(b) for b in row["images"]] == stored[row["id"]]["images"], row["id"]
