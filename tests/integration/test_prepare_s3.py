"""The data job from `s3://` to `s3://` over the real S3 protocol (moto server on loopback).

The same synthetic folder is prepared twice, once from local disk to local disk and once
uploaded to the bucket and prepared from the bucket into the bucket through the CLI module
(`ray_jobs.prepare_data --source s3://… --out s3://…`). Both runs must write the same rows
(ids, splits, content hashes) and the same counts; the outputs are read back with boto3.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hazard.config.data import AugmentConfig, DataConfig, RayConfig, SourceConfig
from hazard.core.schema import SAMPLE_SCHEMA, SPLITS
from hazard.demo.synthetic import write_folder_dataset
from pipelines.prepare import prepare
from ray_jobs import prepare_data

pytestmark = pytest.mark.slow


def _upload(client, bucket: str, root: Path, prefix: str) -> int:
    n = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        client.put_object(
            Bucket=bucket,
            Key=f"{prefix}/{path.relative_to(root).as_posix()}",
            Body=path.read_bytes(),
        )
        n += 1
    return n


def _rows_from_s3(client, bucket: str, prefix: str) -> list[tuple[str, str, str]]:
    rows = []
    for split in SPLITS:
        listing = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/{split}/")
        for obj in listing.get("Contents", []):
            if not obj["Key"].endswith(".parquet"):
                continue  # e.g. a zero-byte folder marker
            body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            table = pq.read_table(io.BytesIO(body))
            assert table.schema.equals(SAMPLE_SCHEMA)
            rows += [(split, r["id"], r["content_hash"]) for r in table.to_pylist()]
    return sorted(rows)


def _rows_from_disk(out: Path) -> list[tuple[str, str, str]]:
    rows = []
    for split in SPLITS:
        table = pq.read_table(sorted((out / split).glob("*.parquet")))
        rows += [(split, r["id"], r["content_hash"]) for r in table.to_pylist()]
    return sorted(rows)


def test_s3_to_s3_matches_local_to_local(ray_local, moto_s3, tmp_path, capsys):
    raw = tmp_path / "raw"
    made = write_folder_dataset(raw, n_per_label=4, seed=3, size=64, corrupt=3)
    local_out = tmp_path / "prepared"
    config = DataConfig(
        source=SourceConfig(uri=str(raw)),
        output_dir=str(local_out),
        augment=AugmentConfig(copies=1, seed=0),
        ray=RayConfig(batch_size=8),
    )
    local = prepare(config)

    client = moto_s3.client()
    root = f"prep-s3-{uuid.uuid4().hex[:8]}"  # the bucket is shared with other test modules
    _upload(client, moto_s3.bucket, raw, f"{root}/raw")
    rc = prepare_data.main(
        [
            "--source",
            f"s3://{moto_s3.bucket}/{root}/raw",
            "--format",
            "folder",
            "--out",
            f"s3://{moto_s3.bucket}/{root}/prepared",
            "--set",
            "augment.copies=1",
            "--set",
            "ray.batch_size=8",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    assert f"s3://{moto_s3.bucket}/{root}/prepared" in capsys.readouterr().out

    assert _rows_from_s3(client, moto_s3.bucket, f"{root}/prepared") == _rows_from_disk(local_out)
    lineage = json.loads(
        client.get_object(Bucket=moto_s3.bucket, Key=f"{root}/prepared/lineage.json")["Body"].read()
    )
    for key in ("listed", "accepted", "rejected", "augmented", "written"):
        assert lineage[key] == local[key], key
    assert lineage["listed"] == made["rows"]
    assert lineage["listed"] == lineage["accepted"] + lineage["rejected"]
    assert lineage["quarantine"]["by_reason"] == local["quarantine"]["by_reason"]
    quarantine = pq.read_table(
        io.BytesIO(
            client.get_object(Bucket=moto_s3.bucket, Key=f"{root}/prepared/quarantine.parquet")[
                "Body"
            ].read()
        )
    )
    assert quarantine.num_rows == lineage["rejected"] == 3
    # under this test's root, only the uploaded source and the job's output
    listing = client.list_objects_v2(Bucket=moto_s3.bucket, Prefix=f"{root}/")["Contents"]
    assert {o["Key"].split("/")[1] for o in listing} == {"raw", "prepared"}
