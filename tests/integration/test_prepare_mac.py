"""A MAC folder (three dataset_info entries: train, dev, test) prepared in one run on real Ray.

For each MAC task (image2text: one cover per row; text2image: four) the test writes real PNG
covers and alpaca rows (tests/helpers/mac.py), runs `prepare` with
`source.splits={train: <t>_train, val: <t>_dev, test: <t>_test}` and
`source.unlabelled_splits=[test]`, and reads the Parquet output, quarantine and lineage back.
Expected ids, splits and counts are written out from the rows below.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from hazard.config.data import AugmentConfig, DataConfig, RayConfig, SourceConfig
from hazard.core.schema import SAMPLE_SCHEMA, SPLITS
from pipelines.prepare import prepare
from tests.helpers.mac import mac_row, write_mac

N_TRAIN, N_DEV, COPIES = 6, 3, 1


def _mac_folder(root: Path, t: str) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """Write the folder; ({id: (stage, reason)} of the rows to quarantine, the kept test ids)."""
    k = iter(range(100))
    train = [mac_row(root, t, next(k), "ABCD"[i % 4], f"tr-{i}") for i in range(N_TRAIN)]
    dev = [mac_row(root, t, next(k), "DCBA"[i % 4], f"dev-{i}") for i in range(N_DEV)]
    test_ids = [f"{t}_test_{i:04d}" for i in range(4)]
    test = [mac_row(root, t, next(k), "" if i % 2 else None, tid) for i, tid in enumerate(test_ids)]
    dup = next(k)
    test.append(mac_row(root, t, dup, "", f"{t}_test_dup"))
    small = mac_row(root, t, next(k), "", f"{t}_test_small")
    Image.new("RGB", (16, 16), (1, 2, 3)).save(root / small["images"][-1], format="PNG")
    test.append(small)
    train += [
        mac_row(root, t, dup, "B", "tr-dup"),  # the test row read first wins the dedup
        mac_row(root, t, next(k), "E", "tr-bad-label"),
        mac_row(root, t, next(k), "A", "tr-bad-count", placeholders=2 if t == "image2text" else 3),
    ]
    write_mac(root, {f"{t}_train": train, f"{t}_dev": dev, f"{t}_test": test})
    expected = {
        "tr-dup": ("dedup", "duplicate"),
        "tr-bad-label": ("import", "unknown_label"),
        "tr-bad-count": ("import", "image_count_mismatch"),
        f"{t}_test_small": ("decode", "too_small"),
    }
    return expected, [*test_ids, f"{t}_test_dup"]


@pytest.fixture(scope="module", params=["image2text", "text2image"])
def run(request, ray_local, tmp_path_factory):
    t = request.param
    root = tmp_path_factory.mktemp(f"mac_{t}")
    expected, test_ids = _mac_folder(root, t)
    out = tmp_path_factory.mktemp(f"prepared_{t}")
    config = DataConfig(
        source=SourceConfig(
            format="llamafactory",
            uri=str(root),
            splits={"train": f"{t}_train", "val": f"{t}_dev", "test": f"{t}_test"},
            unlabelled_splits=["test"],
        ),
        output_dir=str(out),
        task="multiple_choice",
        augment=AugmentConfig(copies=COPIES, seed=0),
        ray=RayConfig(batch_size=4),
    )
    report = prepare(config)
    rows = {s: pq.read_table(out / s).to_pylist() for s in SPLITS}
    return {
        "task": t,
        "root": root,
        "out": out,
        "report": report,
        "rows": rows,
        "expected": expected,
        "test_ids": test_ids,
    }


def test_each_entry_lands_in_its_split(run):
    rows = run["rows"]
    originals = {s: sorted(r["id"] for r in rows[s] if r["parent_id"] is None) for s in SPLITS}
    assert originals == {
        "train": [f"tr-{i}" for i in range(N_TRAIN)],
        "val": [f"dev-{i}" for i in range(N_DEV)],
        "test": sorted(run["test_ids"]),
    }
    assert [r["answer"] for r in sorted(rows["val"], key=lambda r: r["id"])] == ["D", "C", "B"]
    for s in SPLITS:
        assert pq.read_schema(next((run["out"] / s).glob("*.parquet"))).equals(SAMPLE_SCHEMA)
        assert all(r["split"] == s and r["task"] == "multiple_choice" for r in rows[s])


def test_unlabelled_test_rows_keep_their_ids_and_images(run):
    root, per_row = run["root"], 1 if run["task"] == "image2text" else 4
    source = {r["id"]: r for r in json.loads((root / f"{run['task']}_test.json").read_text())}
    for r in run["rows"]["test"]:
        assert r["answer"] is None and r["parent_id"] is None and r["aug_ops"] == []
        conversation = json.loads(r["conversation"])
        assert [turn["role"] for turn in conversation] == ["user"]
        assert conversation[0]["content"].count("<image>") == per_row
        files = [(root / p).read_bytes() for p in source[r["id"]]["images"]]
        assert len(files) == per_row and r["images"] == files  # PNGs in budget: stored as is


def test_no_augmented_copy_of_a_held_out_row(run):
    rows = run["rows"]
    copies = [r for s in SPLITS for r in rows[s] if r["parent_id"] is not None]
    assert sorted(r["parent_id"] for r in copies) == [f"tr-{i}" for i in range(N_TRAIN)]
    assert all(r["split"] == "train" and r["answer"] is not None for r in copies)
    assert len(rows["train"]) == N_TRAIN * (1 + COPIES)


def test_bad_rows_are_quarantined_with_their_reasons(run):
    table = pq.read_table(run["out"] / "quarantine.parquet").to_pylist()
    assert {r["id"]: (r["stage"], r["reason"]) for r in table} == run["expected"]
    dup = next(r for r in table if r["id"] == "tr-dup")
    assert dup["detail"] == f"same content as {run['task']}_test_dup (split test)"


def test_lineage_counts_unlabelled_rows_per_split(run):
    report = run["report"]
    assert report["invariants"] == {"ok": True, "violations": []}
    splits = report["splits"]
    assert {s: splits[s]["unlabelled"] for s in SPLITS} == {"train": 0, "val": 0, "test": 5}
    assert report["unlabelled"] == 5
    assert {s: (splits[s]["listed"], splits[s]["accepted"]) for s in SPLITS} == {
        "train": (N_TRAIN + 3, N_TRAIN),
        "val": (N_DEV, N_DEV),
        "test": (6, 5),
    }
    assert {s: splits[s]["written"] for s in SPLITS} == {
        "train": N_TRAIN * (1 + COPIES),
        "val": N_DEV,
        "test": 5,
    }
    assert splits["test"]["labels"] == {} and splits["test"]["augmented"] == 0
    assert splits["val"]["labels"] == {"B": 1, "C": 1, "D": 1}
    on_disk = json.loads((run["out"] / "lineage.json").read_text())
    assert on_disk["splits"]["test"]["unlabelled"] == 5
    assert on_disk["config"]["source"]["unlabelled_splits"] == ["test"]
