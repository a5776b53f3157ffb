"""read_source on real Ray (local, 2 CPUs): local folders, s3:// prefixes on a moto server, and
a 100k-row CSV that must stream (several blocks, never all rows on the driver).

Expected values are written by hand from the files each test writes or uploads.
"""

from __future__ import annotations

import json
import math
import re
import time
import tracemalloc
from pathlib import Path

import pytest
from ray.data.expressions import col

from hazard.config.data import DataConfig, RayConfig, SourceConfig
from pipelines.common import STAGE_SCHEMA
from pipelines.sources import SourceError, check_source, plan_source, read_source, rows_per_block

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "llamafactory-mllm-demo"
DEMO_FILES = ["dataset_info.json", "mllm_demo.json"] + [
    f"mllm_demo_data/{k}.jpg" for k in (1, 2, 3)
]
LABELS = ("no_risk", "low_risk", "medium_risk", "high_risk", "non_corridor")


def config(
    uri: str, fmt: str = "folder", task: str = "corridor_risk", ray: RayConfig | None = None, **src
) -> DataConfig:
    return DataConfig(
        source=SourceConfig(format=fmt, uri=uri, **src),
        output_dir="/tmp/unused",
        task=task,
        ray=ray or RayConfig(),
    )


def rows_of(cfg: DataConfig) -> list[dict]:
    ds = read_source(cfg).materialize()
    assert ds.schema().base_schema == STAGE_SCHEMA
    return sorted(ds.take_all(), key=lambda r: r["_order"])


def upload(s3, files: dict[str, bytes], prefix: str) -> str:
    client = s3.client()
    for key, data in files.items():
        client.put_object(Bucket=s3.bucket, Key=f"{prefix}/{key}", Body=data)
    return f"s3://{s3.bucket}/{prefix}"


# --- local ------------------------------------------------------------------------------------


def test_folder_through_ray(ray_local, tmp_path: Path):
    root = tmp_path / "src"
    root.mkdir()
    (root / "labels.csv").write_text(
        "image,label,split\n"
        "images/a.jpg,high_risk,train\n"
        "images/b.jpg,no_risk,\n"
        "../up.jpg,no_risk,val\n"
        "images/a\x00.jpg,low_risk,test\n"
        "images/c.jpg,Low_Risk,test\n"
    )
    rows = rows_of(config(str(root), ray=RayConfig(batch_size=2)))
    uri = root.as_uri()
    assert [(r["id"], r["answer"], r["split"], r["_reject_reason"]) for r in rows] == [
        ("images/a.jpg", "high_risk", "train", None),
        ("images/b.jpg", "no_risk", None, None),
        ("labels.csv:2", "no_risk", "val", "outside_source"),
        ("labels.csv:3", "low_risk", "test", "bad_path"),
        ("images/c.jpg", "Low_Risk", "test", "unknown_label"),
    ]
    assert rows[0]["_image_uris"] == [f"{uri}/images/a.jpg"]
    assert rows[0]["source_uri"] == f"{uri}/images/a.jpg"
    assert rows[2]["source_uri"] == f"{uri}/labels.csv#2"
    assert (
        rows[3]["_reject_detail"]
        == "labels.csv line 5: image path 'images/a\\x00.jpg' contains a NUL byte"
    )
    assert {r["_reject_stage"] for r in rows[2:]} == {"import"}


def test_empty_source_gives_no_rows_but_the_schema(ray_local, tmp_path: Path):
    (tmp_path / "labels.csv").write_text("image,label\n")
    ds = read_source(config(str(tmp_path))).materialize()
    assert ds.count() == 0 and ds.schema().base_schema == STAGE_SCHEMA


def test_llamafactory_demo_through_ray(ray_local):
    rows = rows_of(config(str(FIXTURE), "llamafactory", task="vqa"))
    assert len(rows) == 6 and [r["_reject_reason"] for r in rows] == [None] * 6
    assert [len(r["_image_uris"]) for r in rows] == [2, 1, 1, 2, 1, 1]
    assert [len(json.loads(r["conversation"])) for r in rows] == [4] * 6
    assert rows[4]["prompt"] == "他为什么在地上？"
    rejected = rows_of(config(str(FIXTURE), "llamafactory", task="corridor_risk"))
    assert [r["_reject_reason"] for r in rejected] == ["unknown_label"] * 6


def test_broken_json_list_fails_the_read_with_a_source_error(ray_local, tmp_path: Path):
    root = tmp_path / "broken"
    root.mkdir()
    columns = {"prompt": "instruction", "response": "output", "images": "images"}
    (root / "dataset_info.json").write_text(
        json.dumps({"d": {"file_name": "d.json", "columns": columns}})
    )
    good = json.dumps({"instruction": "<image>Q", "output": "A", "images": ["a.jpg"]})
    (root / "d.json").write_text(f'[{good}, {good}, {{"instruction": ]')
    ds = read_source(config(str(root), "llamafactory", task="vqa"))  # lazy: nothing read yet
    with pytest.raises(SourceError, match="invalid JSON in element 2"):
        ds.materialize()


# --- S3 (moto) --------------------------------------------------------------------------------


def test_llamafactory_demo_from_s3(ray_local, moto_s3):
    uri = upload(moto_s3, {f: (FIXTURE / f).read_bytes() for f in DEMO_FILES}, "lf/demo")
    rows = rows_of(config(uri, "llamafactory", task="vqa"))
    img = [f"{uri}/mllm_demo_data/{k}.jpg" for k in (1, 2, 3)]
    assert [r["id"] for r in rows] == [f"mllm_demo.json:{k}" for k in range(6)]
    assert [r["_image_uris"] for r in rows] == [[img[0], img[0]], [img[1]], [img[2]]] * 2
    assert [r["source_uri"] for r in rows] == [f"{uri}/mllm_demo.json#0", img[1], img[2]] + [
        f"{uri}/mllm_demo.json#3",
        img[1],
        img[2],
    ]
    assert (rows[0]["prompt"], rows[0]["answer"]) == (
        "What are they doing?",
        "They are celebrating on the soccer field.",
    )
    assert [r["_reject_reason"] for r in rows] == [None] * 6


def test_folder_from_s3(ray_local, moto_s3):
    csv = (
        "image,label\n"
        "img/1.jpg,high_risk\n"
        "img/../img/2.jpg,medium_risk\n"
        "../../other-prefix/3.jpg,no_risk\n"
        "/img/4.jpg,no_risk\n"
        "img/5.jpg,maybe\n"
        "img/1.jpg,low_risk\n"
    )
    uri = upload(moto_s3, {"meta/labels.csv": csv.encode()}, "folder")
    rows = rows_of(config(uri, labels_file="meta/labels.csv"))
    assert [(r["id"], r["split"], r["_reject_reason"]) for r in rows] == [
        ("img/1.jpg", None, None),
        ("img/2.jpg", None, None),
        ("labels.csv:2", None, "outside_source"),
        ("labels.csv:3", None, "bad_path"),
        ("img/5.jpg", None, "unknown_label"),
        ("img/1.jpg#5", None, None),
    ]
    assert rows[1]["_image_uris"] == [f"{uri}/img/2.jpg"]
    assert rows[2]["source_uri"] == f"{uri}/meta/labels.csv#2"
    assert rows[4]["_reject_detail"] == (
        "labels.csv line 6: 'maybe' is not a label of task corridor_risk; expected one of "
        + ", ".join(LABELS)
    )


def test_llava_jsonl_from_s3(ray_local, moto_s3):
    samples = [
        {
            "id": "a",
            "image": "x/1.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nRisk?"},
                {"from": "gpt", "value": "low_risk"},
            ],
        },
        {
            "id": "b",
            "image": ["1.jpg", "2.jpg"],
            "conversations": [
                {"from": "human", "value": "<image>Compare"},
                {"from": "gpt", "value": "no_risk"},
            ],
        },
    ]
    body = "\n".join(json.dumps(s) for s in samples) + "\n"
    uri = upload(moto_s3, {"ann.jsonl": body.encode()}, "llava")
    rows = rows_of(config(uri, "llava", annotations="ann.jsonl", image_dir="images"))
    assert [(r["id"], r["_reject_reason"]) for r in rows] == [
        ("a", None),
        ("b", "image_count_mismatch"),
    ]
    assert rows[0]["_image_uris"] == [f"{uri}/images/x/1.jpg"]
    assert (rows[0]["prompt"], rows[0]["answer"]) == ("Risk?", "low_risk")
    assert rows[1]["_reject_detail"] == (
        "ann.jsonl line 2: 1 <image> placeholder(s) in the turns but 2 image(s)"
    )
    assert rows[1]["source_uri"] == f"{uri}/ann.jsonl#1"


def test_s3_source_errors_come_before_any_ray_work(moto_s3):
    with pytest.raises(SourceError, match="not found"):
        read_source(config(f"s3://{moto_s3.bucket}/no/such/prefix"))
    uri = upload(moto_s3, {"x.txt": b"x"}, "nolabels")
    with pytest.raises(SourceError, match="labels file not found"):
        check_source(config(uri))
    uri = upload(moto_s3, {"dataset_info.json": b'{"a": {"file_name": "a.json"}}'}, "lfbad")
    with pytest.raises(SourceError, match="no entry 'b'; its entries: a"):
        check_source(config(uri, "llamafactory", dataset="b"))


# --- streaming --------------------------------------------------------------------------------

N = 100_000


@pytest.mark.slow
def test_100k_row_csv_streams_in_blocks(ray_local, tmp_path: Path):
    """100k rows come out in 214 blocks of at most 468 rows from one streaming read task; the
    driver's Python allocations stay far below what 100k row dicts take (~150 MB)."""
    root = tmp_path / "big"
    root.mkdir()
    lines = ["image,label,split"]
    for i in range(N):
        label = "Bad_Label" if i % 1000 == 7 else LABELS[i % 5]
        lines.append(f"images/img_{i:06d}.jpg,{label},{('train', 'val', 'test')[i % 3]}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    cfg = config(str(root))

    t0 = time.perf_counter()
    ds = read_source(cfg).materialize()
    seconds = time.perf_counter() - t0
    print(
        f"\n100k-row folder CSV: read_source + materialize {seconds:.2f}s, {ds.num_blocks()} blocks"
    )

    tracemalloc.start()
    traced = read_source(cfg).materialize()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"driver peak Python allocation while importing: {peak / 1e6:.1f} MB")
    assert peak < 25e6

    # ~3.7 MB / 40 B a row = ~94k estimated rows over 200 target blocks: 468 rows a block
    block_rows = rows_per_block(plan_source(cfg), cfg.ray.batch_size)
    assert block_rows == 468
    blocks = math.ceil(N / block_rows)
    assert ds.num_blocks() == traced.num_blocks() == blocks
    # one read task streamed every block (the repartition is fused into it)
    assert re.search(rf"_read_blocks\).*: 1 tasks executed, {blocks} blocks produced", ds.stats())
    assert ds.filter(expr=col("_reject_reason").is_not_null()).count() == N // 1000
    rows = sorted(
        ds.select_columns(["_order", "id", "split"]).take_all(), key=lambda r: r["_order"]
    )
    assert [r["_order"] for r in rows] == list(range(N))
    assert [r["id"] for r in rows] == [f"images/img_{i:06d}.jpg" for i in range(N)]
    assert [r["split"] for r in rows[:4]] == ["train", "val", "test", "train"]
    (bad,) = ds.filter(expr=col("_order") == 7).take_all()
    assert bad["_reject_reason"] == "unknown_label"
    assert bad["_reject_detail"].startswith("labels.csv line 9: 'Bad_Label'")
