"""The data preparation pipeline end to end on real Ray (local, 2 CPUs).

A synthetic folder (5 labels x 6 images + 4 corrupt rows from hazard.demo.synthetic) plus extra bad
rows written here goes through prepare(); the outputs are read back from disk.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from hazard.config import ConfigError, load_config
from hazard.config.data import AugmentConfig, DataConfig, RayConfig, ShardConfig, SourceConfig
from hazard.core.schema import QUARANTINE_SCHEMA, SAMPLE_SCHEMA, SPLITS, content_hash
from hazard.core.tasks import get_task
from hazard.demo.synthetic import write_folder_dataset
from pipelines.prepare import prepare
from ray_jobs import prepare_data

REPO = Path(__file__).resolve().parents[2]
SYNTHETIC_REASONS = {
    "truncated": "undecodable",
    "not_an_image": "undecodable",
    "unknown_label": "unknown_label",
    "missing_file": "missing_file",
}
COPIES = 2
ROWS_PER_FILE = 8


def _make_source(root: Path) -> dict[str, tuple[str, str]]:
    """Write the folder; {id: (stage, reason)} of every row that must be quarantined."""
    result = write_folder_dataset(root, n_per_label=6, seed=0, size=64, corrupt=4)
    with open(root / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    expected = {}
    for k, kind in enumerate(result["corrupt_kinds"]):
        (image,) = [r["image"] for r in rows if f"corrupt_{k}_" in r["image"]]
        reason = SYNTHETIC_REASONS[kind]
        stage = "decode" if reason in ("undecodable", "missing_file") else "import"
        expected[image] = (stage, reason)

    first_train = next(r for r in rows if r["split"] == "train" and "corrupt" not in r["image"])
    shutil.copy(root / first_train["image"], root / "images/leak_copy.png")
    Image.new("RGB", (16, 16), (10, 200, 10)).save(root / "images/tiny.png")
    Image.new("RGB", (64, 64), (10, 10, 200)).save(root / "images/anim.gif")
    Image.new("RGB", (64, 64), (200, 10, 10)).save(root / "images/odd_split.png")
    Image.new("RGB", (6400, 32), (200, 200, 10)).save(root / "images/banner.png")
    extra = [
        ("images/leak_copy.png", first_train["label"], "val", "dedup", "duplicate"),
        ("images/tiny.png", "no_risk", "train", "decode", "too_small"),
        ("images/banner.png", "high_risk", "train", "decode", "aspect_ratio"),
        ("images/anim.gif", "low_risk", "test", "decode", "unsupported_format"),
        ("images/odd_split.png", "low_risk", "holdout", "import", "bad_split"),
        ("../outside.png", "low_risk", "train", "import", "outside_source"),
    ]
    with open(root / "labels.csv", "a", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        for k, (image, label, split, stage, reason) in enumerate(extra):
            writer.writerow((image, label, split))
            # a row whose path is unusable is named by its place in the labels file
            row_id = f"labels.csv:{len(rows) + k}" if image.startswith("..") else image
            expected[row_id] = (stage, reason)
    return expected


@pytest.fixture(scope="module")
def run(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    expected = _make_source(root)
    out = tmp_path_factory.mktemp("prepared")
    config = DataConfig(
        source=SourceConfig(uri=str(root)),
        output_dir=str(out),
        augment=AugmentConfig(copies=COPIES, seed=0),
        shards=ShardConfig(rows_per_file=ROWS_PER_FILE),
        ray=RayConfig(batch_size=8),
    )
    report = prepare(config)
    return {"root": root, "out": out, "report": report, "expected": expected, "config": config}


def _read_split(out: Path, split: str) -> list[dict]:
    return pq.read_table(sorted((out / split).glob("*.parquet"))).to_pylist()


def _all_rows(out: Path) -> list[dict]:
    return [r for split in SPLITS for r in _read_split(out, split)]


def _source_rows(root: Path) -> list[dict]:
    with open(root / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_every_stage_balances(run):
    report = run["report"]
    names = [s["name"] for s in report["stages"]]
    assert names == ["import", "decode", "dedup", "augment", "consistency"]
    for s in report["stages"]:
        assert s["rows_in"] + s["rows_added"] == s["rows_out"] + sum(s["rejected"].values())
    for a, b in itertools.pairwise(report["stages"]):
        assert a["rows_out"] == b["rows_in"]
    assert report["invariants"] == {"ok": True, "violations": []}
    assert report["stages"][0]["rows_in"] == len(_source_rows(run["root"])) == report["listed"]
    assert report["listed"] == report["accepted"] + report["rejected"]
    assert report["stages"][-1]["rows_out"] == report["written"] == len(_all_rows(run["out"]))
    for split, c in report["splits"].items():
        assert c["listed"] == c["accepted"] + sum(c["rejected"].values()), split
    on_disk = json.loads((run["out"] / "lineage.json").read_text())
    assert on_disk["stages"] == report["stages"]
    assert on_disk["config"]["shards"]["rows_per_file"] == ROWS_PER_FILE


def test_each_bad_row_is_quarantined_with_its_reason(run):
    table = pq.read_table(run["out"] / "quarantine.parquet")
    assert table.schema.equals(QUARANTINE_SCHEMA)
    got = {r["id"]: (r["stage"], r["reason"]) for r in table.to_pylist()}
    assert got == run["expected"]
    assert all(r["detail"] for r in table.to_pylist())
    assert run["report"]["quarantine"]["rows"] == len(run["expected"])
    by_stage = run["report"]["quarantine"]["by_stage"]
    assert by_stage["import"] == {"bad_split": 1, "outside_source": 1, "unknown_label": 1}
    assert by_stage["decode"] == {
        "aspect_ratio": 1,
        "missing_file": 1,
        "too_small": 1,
        "undecodable": 2,
        "unsupported_format": 1,
    }
    assert by_stage["dedup"] == {"duplicate": 1}


def test_duplicate_keeps_the_first_listed_row(run):
    first_train = next(
        r
        for r in _source_rows(run["root"])
        if r["split"] == "train" and "corrupt" not in r["image"]
    )
    train_ids = {r["id"] for r in _read_split(run["out"], "train")}
    assert first_train["image"] in train_ids
    assert "images/leak_copy.png" not in {r["id"] for r in _all_rows(run["out"])}


def test_shards_read_back_with_exactly_the_sample_schema(run):
    out = run["out"]
    for split in SPLITS:
        files = sorted((out / split).glob("*.parquet"))
        assert files
        for f in files:
            assert pq.read_schema(f).equals(SAMPLE_SCHEMA)
            assert pq.ParquetFile(f).metadata.num_rows <= ROWS_PER_FILE
        assert pq.read_table(files).schema.equals(SAMPLE_SCHEMA)
        listed = run["report"]["splits"][split]["shards"]
        assert [s["file"] for s in listed] == [f.relative_to(out).as_posix() for f in files]
    ids = [r["id"] for r in _all_rows(out)]
    assert len(ids) == len(set(ids)) == run["report"]["stages"][-1]["rows_out"]
    assert len(set(r["content_hash"] for r in _all_rows(out))) == len(ids)


def test_originals_are_the_source_bytes_with_task_prompt(run):
    root, prompt = run["root"], get_task("corridor_risk").prompt
    source = {r["image"]: r for r in _source_rows(root) if not r["image"].startswith("..")}
    originals = [r for r in _all_rows(run["out"]) if r["parent_id"] is None]
    assert {r["id"] for r in originals} == set(source) - set(run["expected"])
    for r in originals:
        data = (root / r["id"]).read_bytes()
        assert r["images"] == [data] and r["content_hash"] == content_hash([data])
        assert (r["answer"], r["split"]) == (source[r["id"]]["label"], source[r["id"]]["split"])
        assert (r["task"], r["prompt"], r["aug_ops"]) == ("corridor_risk", prompt, [])
        assert r["source_uri"] == (root / r["id"]).resolve().as_uri()


def test_augmented_rows_come_only_from_train(run):
    rows = _all_rows(run["out"])
    augmented = [r for r in rows if r["parent_id"] is not None]
    originals = {r["id"]: r for r in rows if r["parent_id"] is None}
    train_originals = [r for r in originals.values() if r["split"] == "train"]
    assert len(augmented) == COPIES * len(train_originals)
    assert run["report"]["augmented"] == len(augmented)
    op = re.compile(
        r"scale:\d\.\d\d(:\w+)?|rotate:[+-]\d+\.\d(:\w+)?|crop:\d\.\d\d|hflip|vflip"
        r"|hsv:h[+-]\d+\.\d,s\d\.\d\d,v\d\.\d\d"
    )
    for r in augmented:
        parent = originals[r["parent_id"]]
        assert parent["split"] == "train" and r["split"] == "train"
        assert re.fullmatch(re.escape(parent["id"]) + r"#aug\d+", r["id"])
        assert r["aug_ops"] and all(op.fullmatch(o) for o in r["aug_ops"])
        assert (r["answer"], r["task"], r["prompt"]) == (
            parent["answer"],
            parent["task"],
            parent["prompt"],
        )
        assert r["content_hash"] == content_hash(r["images"]) != parent["content_hash"]
        with (
            Image.open(io.BytesIO(r["images"][0])) as img,
            Image.open(io.BytesIO(parent["images"][0])) as src,
        ):
            assert img.format == "PNG" and img.size == src.size


def test_val_and_test_are_untouched(run):
    for split in ("val", "test"):
        rows = _read_split(run["out"], split)
        assert rows
        assert all(r["parent_id"] is None and r["aug_ops"] == [] for r in rows)
        assert all(r["images"] == [(run["root"] / r["id"]).read_bytes()] for r in rows)
        assert run["report"]["splits"][split]["augmented"] == 0


def _cli(source: Path, out: Path, *extra: str) -> int:
    args = ["--config", str(REPO / "configs/tiny/data.yaml")]
    for item in (f"source.uri={source}", f"output_dir={out}", *extra):
        args += ["--set", item]
    return prepare_data.main(args)


def _keyed(out: Path) -> list[tuple[str, str, str]]:
    return sorted((r["split"], r["id"], r["content_hash"]) for r in _all_rows(out))


def _counts(stages: list[dict]) -> list[dict]:
    return [{k: v for k, v in s.items() if k != "seconds"} for s in stages]


def test_entrypoint_rerun_is_deterministic(run, capsys):
    """Same data through the CLI with other batch/shard sizes: same ids and hashes."""
    out2 = run["out"].parent / "prepared_again"
    assert _cli(run["root"], out2, "ray.batch_size=5") == 0
    printed = capsys.readouterr().out
    assert "decode" in printed and "duplicate=1" in printed and str(out2) in printed
    assert _keyed(out2) == _keyed(run["out"])
    again = json.loads((out2 / "lineage.json").read_text())
    assert _counts(again["stages"]) == _counts(run["report"]["stages"])

    # a second run into the same folder replaces its shards rather than adding to them
    assert _cli(run["root"], out2) == 0
    assert _keyed(out2) == _keyed(run["out"])


def test_entrypoint_config_errors_exit_2(tmp_path, capsys):
    assert prepare_data.main(["--config", str(tmp_path / "missing.yaml")]) == 2
    tiny = str(REPO / "configs/tiny/data.yaml")
    assert prepare_data.main(["--config", tiny, "--set", "augment.copeis=3"]) == 2
    assert "copeis" in capsys.readouterr().err


def test_data_configs_load_and_reject_typos():
    for path in (REPO / "configs/tiny/data.yaml", REPO / "configs/data_corridor.yaml"):
        cfg = load_config(path, DataConfig)
        assert cfg.source.format == "folder" and cfg.task == "corridor_risk"
    with pytest.raises(ConfigError, match="min_sid"):
        load_config(REPO / "configs/tiny/data.yaml", DataConfig, ["validation.min_sid=3"])
    with pytest.raises(ConfigError, match="ops"):
        load_config(REPO / "configs/tiny/data.yaml", DataConfig, ["augment.ops=[blur]"])
    with pytest.raises(ConfigError, match="unknown task"):
        load_config(REPO / "configs/tiny/data.yaml", DataConfig, ["task=nope"])


def test_the_benchmarks_plain_loop_does_the_same_work(run, tmp_path):
    """bench_data_throughput's loop (the stages' plain functions, one process) writes the same
    rows, quarantine and counts as the pipeline: its speedup compares equal work. Run as the
    benchmark times it: in a fresh (spawned) process, after a warm-up run."""
    from bench.bench_data_throughput import time_loop

    out = tmp_path / "loop"
    config = run["config"].model_copy(update={"output_dir": str(out)})
    warm = run["config"].model_copy(update={"output_dir": str(tmp_path / "warm")})
    seconds, result = time_loop(config, warm, fresh=True)
    assert result["rows_written"] == run["report"]["written"] and seconds > 0
    loop = json.loads((out / "lineage.json").read_text())
    for key in ("listed", "accepted", "rejected", "augmented", "written", "stages"):
        assert loop[key] == run["report"][key], key
    for split in (*SPLITS, "unassigned"):
        mine = {k: v for k, v in loop["splits"][split].items() if k != "shards"}
        theirs = {k: v for k, v in run["report"]["splits"][split].items() if k != "shards"}
        assert mine == theirs, split

    def rows(folder: Path) -> list[tuple]:
        return sorted(
            (r["id"], r["split"], r["content_hash"], tuple(r["aug_ops"])) for r in _all_rows(folder)
        )

    assert rows(out) == rows(run["out"])
    assert (
        pq.read_table(out / "quarantine.parquet").to_pylist()
        == pq.read_table(run["out"] / "quarantine.parquet").to_pylist()
    )
