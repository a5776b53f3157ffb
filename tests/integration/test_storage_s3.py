"""hazard.infra.storage against a real S3 protocol endpoint: moto on loopback (never AWS)."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hazard.config.storage import StorageConfig
from hazard.infra import storage as st
from hazard.infra.storage import ChecksumMismatchError, StorageNotFoundError

DEAD_ENDPOINT = "http://127.0.0.1:1"  # loopback, nothing listens: a wrong choice fails fast


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_env_endpoint_is_the_loopback_moto_server(moto_s3):
    assert moto_s3.endpoint.startswith("http://127.0.0.1:")
    uri = f"s3://{moto_s3.bucket}/probe/hello.txt"
    st.write_bytes(uri, b"hello moto")
    body = moto_s3.client().get_object(Bucket=moto_s3.bucket, Key="probe/hello.txt")["Body"]
    assert body.read() == b"hello moto"  # boto3, talking to moto directly, sees the object
    fs, path = st.filesystem_for(uri)
    assert path == f"{moto_s3.bucket}/probe/hello.txt"
    assert fs.get_file_info(path).size == len(b"hello moto")


def test_endpoint_precedence_against_the_server(moto_s3, monkeypatch):
    moto_s3.client().put_object(Bucket=moto_s3.bucket, Key="prec/x", Body=b"x")
    uri = f"s3://{moto_s3.bucket}/prec/x"
    monkeypatch.setenv("AWS_ENDPOINT_URL", DEAD_ENDPOINT)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_s3.endpoint)  # the S3-specific one wins
    assert st.read_bytes(uri) == b"x"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", DEAD_ENDPOINT)
    assert st.read_bytes(uri, StorageConfig(endpoint_url=moto_s3.endpoint)) == b"x"  # config wins


def test_bytes_listing_and_errors(moto_s3):
    base = f"s3://{moto_s3.bucket}/bytes"
    files = {"a.bin": b"\x00" * 1000, "sub/b.txt": b"b", "sub/deep/c.json": b"{}"}
    for rel, data in files.items():
        st.write_bytes(st.join_uri(base, rel), data)
    st.write_bytes(st.join_uri(base, "a.bin"), b"replaced")
    files["a.bin"] = b"replaced"
    assert moto_s3.keys("bytes/") == sorted(f"bytes/{rel}" for rel in files)
    entries = st.list_files(base + "/")
    assert [(e.relpath, e.size, e.uri) for e in entries] == [
        (rel, len(files[rel]), f"{base}/{rel}") for rel in sorted(files)
    ]
    assert all(st.read_bytes(e.uri) == files[e.relpath] for e in entries)
    with st.open_input(f"{base}/sub/deep/c.json") as fh:
        assert fh.read() == b"{}"
    assert st.exists(base) and st.exists(f"{base}/sub/b.txt")
    assert not st.exists(f"{base}/nope") and not st.exists("s3://no-such-bucket/x")
    for call in (st.read_bytes, st.list_files):
        with pytest.raises(StorageNotFoundError, match=f"{base}/nope"):
            call(f"{base}/nope")


def test_failed_upload_leaves_no_object(moto_s3):
    uri = f"s3://{moto_s3.bucket}/failed/x.bin"
    with pytest.raises(RuntimeError), st.open_output(uri) as fh:
        fh.write(b"half")
        raise RuntimeError("boom")
    assert "failed/x.bin" not in moto_s3.keys("failed/")  # pyarrow may leave a "failed/" marker
    assert not st.exists(uri)


def test_parquet_round_trip(moto_s3):
    table = pa.table({"id": ["a", "b", "c"], "score": [0.1, 0.5, 0.9]})
    uri = f"s3://{moto_s3.bucket}/pq/t.parquet"
    st.write_parquet(uri, table)
    assert st.read_parquet(uri).equals(table)
    fs, path = st.filesystem_for(f"s3://{moto_s3.bucket}/pq/raw.parquet")
    pq.write_table(table, path, filesystem=fs)  # plain pyarrow with our filesystem
    assert pq.read_table(path, filesystem=fs).equals(table)
    assert st.read_parquet(f"s3://{moto_s3.bucket}/pq").num_rows == 6  # a directory of files


def test_upload_then_download_with_manifest(moto_s3, tmp_path):
    src = tmp_path / "bundle"
    files = {"hazard_model.json": b'{"v": 1}', "adapter/w.safetensors": bytes(range(256)) * 99}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    uri = f"s3://{moto_s3.bucket}/runs/r1/model"
    manifest = st.upload_dir(src, uri)
    assert manifest == {rel: sha(data) for rel, data in files.items()}
    assert moto_s3.keys("runs/r1/model/") == sorted(f"runs/r1/model/{rel}" for rel in files)

    cache = st.download_dir(uri, tmp_path / "cache", manifest)
    assert {rel: (cache / rel).read_bytes() for rel in files} == files

    # Tamper with the object: a valid cached copy is still used, a fresh cache is refused.
    key = "runs/r1/model/adapter/w.safetensors"
    moto_s3.client().put_object(Bucket=moto_s3.bucket, Key=key, Body=b"tampered")
    st.download_dir(uri, cache, manifest)
    assert (cache / "adapter/w.safetensors").read_bytes() == files["adapter/w.safetensors"]
    with pytest.raises(ChecksumMismatchError, match="adapter/w.safetensors"):
        st.download_dir(uri, tmp_path / "fresh", manifest)
    assert not (tmp_path / "fresh" / "adapter" / "w.safetensors").exists()


def test_ray_data_parquet_round_trip(ray_s3):
    import ray

    io = st.ray_io(f"s3://{ray_s3.bucket}/ray/train")
    rows = [{"id": i, "label": f"l{i % 3}"} for i in range(20)]
    ray.data.from_items(rows).repartition(2).write_parquet(io.path, filesystem=io.filesystem)
    written = [k for k in ray_s3.keys("ray/train/") if k.endswith(".parquet")]
    assert len(written) == 2
    back = ray.data.read_parquet(io.path, filesystem=io.filesystem).take_all()
    assert sorted(back, key=lambda r: r["id"]) == rows
    assert st.read_parquet(f"s3://{ray_s3.bucket}/ray/train").num_rows == 20
