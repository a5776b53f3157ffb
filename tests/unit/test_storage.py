"""hazard.infra.storage on local paths and file:// URIs; S3 settings resolution (no network)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from pydantic import ValidationError

from hazard.config.storage import StorageConfig
from hazard.infra import storage as st
from hazard.infra.storage import (
    ChecksumMismatchError,
    InvalidURIError,
    StorageError,
    StorageNotFoundError,
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_tree(root: Path) -> dict[str, bytes]:
    files = {"config.json": b'{"a": 1}', "adapter/weights.bin": b"\x00\x01" * 5000, "a b.txt": b""}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


# --- URIs -------------------------------------------------------------------------------------


def test_parse_uri_local_file_and_s3(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert st.parse_uri("data/x.bin") == ("file", str(tmp_path / "data" / "x.bin"))
    assert st.parse_uri(tmp_path / "y") == ("file", str(tmp_path / "y"))
    assert st.parse_uri("file:///tmp/a%20b/c") == ("file", "/tmp/a b/c")
    assert st.parse_uri("file://localhost/tmp/x") == ("file", "/tmp/x")
    assert st.parse_uri((tmp_path / "sp ace").as_uri()) == ("file", str(tmp_path / "sp ace"))
    assert st.parse_uri("s3://bucket/runs/m/") == ("s3", "bucket/runs/m")
    assert st.parse_uri("S3://bucket") == ("s3", "bucket")
    assert st.parse_uri("odd:name") == ("file", str(tmp_path / "odd:name"))  # no '://'


@pytest.mark.parametrize("uri", ["gs://b/k", "http://host/x", "hdfs://nn/x"])
def test_unsupported_scheme_lists_supported(uri):
    with pytest.raises(InvalidURIError) as err:
        st.parse_uri(uri)
    msg = str(err.value)
    assert uri in msg and "file://" in msg and "s3://" in msg and "local paths" in msg
    assert isinstance(err.value, ValueError)
    with pytest.raises(InvalidURIError):
        st.read_bytes(uri)


@pytest.mark.parametrize("uri", ["s3:///key", "s3://", "file://otherhost/x", ""])
def test_malformed_uris(uri):
    with pytest.raises(InvalidURIError):
        st.parse_uri(uri)


def test_nul_byte_is_a_clear_error(tmp_path):
    bad = str(tmp_path / "a\x00b")
    for call in (st.read_bytes, st.exists, st.list_files, lambda u: st.write_bytes(u, b"x")):
        with pytest.raises(InvalidURIError, match="NUL byte"):
            call(bad)
    with pytest.raises(InvalidURIError, match="NUL byte"):
        st.parse_uri("s3://b/a\x00b")


def test_join_uri():
    assert st.join_uri("s3://b/run", "model", "x.json") == "s3://b/run/model/x.json"
    assert st.join_uri("s3://b/run/", "model/x.json") == "s3://b/run/model/x.json"
    assert st.join_uri("s3://b", "k") == "s3://b/k"
    assert st.join_uri("/data", "a b") == "/data/a b"
    assert st.join_uri("runs/demo", "train") == "runs/demo/train"
    joined = st.join_uri("file:///data", "a b/c%d")
    assert joined == "file:///data/a%20b/c%25d"
    assert st.parse_uri(joined) == ("file", "/data/a b/c%d")
    for bad in ("../x", "a/../b", "/abs", "a//b", "", "./a", "a\\b"):
        with pytest.raises(InvalidURIError, match="unsafe relative path"):
            st.join_uri("s3://b/run", bad)


# --- local reads and writes -------------------------------------------------------------------


def test_write_read_bytes_local_and_file_uri(tmp_path):
    target = tmp_path / "new" / "dir" / "x.bin"
    st.write_bytes(str(target), b"one")
    assert target.read_bytes() == b"one"
    st.write_bytes(target.as_uri(), b"two")  # replaces
    assert st.read_bytes(target) == b"two" == st.read_bytes(target.as_uri())
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.bin"]  # no temp files left
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_write_is_atomic_on_failure(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), st.open_output(target) as fh:
        fh.write(b"partial")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_open_input_is_seekable(tmp_path):
    (tmp_path / "f").write_bytes(b"0123456789")
    with st.open_input(tmp_path / "f") as fh:
        fh.seek(4)
        assert fh.read(3) == b"456"
        assert fh.size() == 10


def test_missing_and_wrong_kind_errors(tmp_path):
    missing = tmp_path / "nope.bin"
    for call in (st.read_bytes, st.open_input, st.list_files, st.read_parquet):
        with pytest.raises(StorageNotFoundError) as err:
            call(missing.as_uri())
        assert missing.as_uri() in str(err.value)
        assert isinstance(err.value, FileNotFoundError) and isinstance(err.value, StorageError)
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(StorageError, match="is a directory"):
        st.read_bytes(tmp_path)
    with pytest.raises(StorageError, match="is a file"):
        st.list_files(tmp_path / "f")


def test_exists(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x")
    assert st.exists(tmp_path / "d") and st.exists((tmp_path / "d" / "f").as_uri())
    assert not st.exists(tmp_path / "missing")


def test_list_files_recursive_with_sizes(tmp_path):
    files = make_tree(tmp_path / "m")
    entries = st.list_files(tmp_path / "m")
    assert [(e.relpath, e.size) for e in entries] == sorted(
        (rel, len(data)) for rel, data in files.items()
    )
    assert entries[0].uri == str(tmp_path / "m" / "a b.txt")
    by_uri = st.list_files((tmp_path / "m").as_uri())
    assert [e.relpath for e in by_uri] == [e.relpath for e in entries]
    assert all(st.read_bytes(e.uri) == files[e.relpath] for e in by_uri)  # file:// URIs resolve


def test_parquet_round_trip(tmp_path):
    table = pa.table({"id": ["a", "b"], "n": [1, 2], "img": [b"\x89PNG", b""]})
    st.write_parquet(tmp_path / "t.parquet", table, compression="zstd")
    assert st.read_parquet((tmp_path / "t.parquet").as_uri()).equals(table)
    assert st.read_parquet(tmp_path / "t.parquet", columns=["n"]).column("n").to_pylist() == [1, 2]
    st.write_parquet(tmp_path / "dir" / "part-1.parquet", table.slice(1))
    st.write_parquet(tmp_path / "dir" / "part-0.parquet", table.slice(0, 1))
    assert st.read_parquet(tmp_path / "dir").sort_by("id").equals(table)


# --- directories and the cache ----------------------------------------------------------------


def test_upload_dir_returns_sha256_manifest(tmp_path):
    files = make_tree(tmp_path / "src")
    manifest = st.upload_dir(tmp_path / "src", (tmp_path / "dst").as_uri())
    assert manifest == {rel: sha(data) for rel, data in files.items()}
    assert {e.relpath: st.read_bytes(e.uri) for e in st.list_files(tmp_path / "dst")} == files
    assert st.sha256_file(tmp_path / "dst" / "config.json") == sha(b'{"a": 1}')


def test_download_dir_with_manifest_and_cache_reuse(tmp_path):
    files = make_tree(tmp_path / "remote")
    manifest = {rel: sha(data) for rel, data in files.items()}
    cache = st.download_dir((tmp_path / "remote").as_uri(), tmp_path / "cache", manifest)
    assert cache == tmp_path / "cache"
    got = {e.relpath: st.read_bytes(e.uri) for e in st.list_files(cache)}
    assert got == files
    assert {rel: st.sha256_file(cache / rel) for rel in files} == manifest

    # A valid cached copy is reused: the source is not read again (here it is even gone).
    (tmp_path / "remote" / "config.json").unlink()
    st.download_dir(tmp_path / "remote", cache, manifest)
    assert (cache / "config.json").read_bytes() == files["config.json"]

    # A tampered cached copy is not reused: it is fetched again.
    (tmp_path / "remote" / "config.json").write_bytes(files["config.json"])
    (cache / "adapter" / "weights.bin").write_bytes(b"tampered")
    st.download_dir(tmp_path / "remote", cache, manifest)
    assert (cache / "adapter" / "weights.bin").read_bytes() == files["adapter/weights.bin"]


def test_download_refuses_tampered_source(tmp_path):
    files = make_tree(tmp_path / "remote")
    manifest = {rel: sha(data) for rel, data in files.items()}
    (tmp_path / "remote" / "adapter" / "weights.bin").write_bytes(b"evil")
    with pytest.raises(ChecksumMismatchError) as err:
        st.download_dir(tmp_path / "remote", tmp_path / "cache", manifest)
    msg = str(err.value)
    assert "adapter/weights.bin" in msg and sha(b"evil") in msg
    assert manifest["adapter/weights.bin"] in msg
    assert not (tmp_path / "cache" / "adapter" / "weights.bin").exists()
    assert list((tmp_path / "cache" / "adapter").iterdir()) == []  # no temp file left behind


def test_download_fetches_only_manifest_files_and_checks_them(tmp_path):
    files = make_tree(tmp_path / "remote")
    only = {"config.json": sha(files["config.json"])}
    cache = st.download_dir(tmp_path / "remote", tmp_path / "c1", only)
    assert [e.relpath for e in st.list_files(cache)] == ["config.json"]

    missing = {"gone.bin": sha(b"")}
    with pytest.raises(StorageNotFoundError, match="gone.bin"):
        st.download_dir(tmp_path / "remote", tmp_path / "c2", missing)
    with pytest.raises(InvalidURIError, match="unsafe relative path"):
        st.download_dir(tmp_path / "remote", tmp_path / "c3", {"../escape": sha(b"")})
    assert not (tmp_path / "escape").exists()


def test_download_without_manifest_fetches_everything(tmp_path):
    files = make_tree(tmp_path / "remote")
    cache = st.download_dir(tmp_path / "remote", tmp_path / "cache")
    assert {e.relpath: (cache / e.relpath).read_bytes() for e in st.list_files(cache)} == files
    with pytest.raises(StorageNotFoundError, match="nothing-here"):
        st.download_dir(tmp_path / "nothing-here", tmp_path / "cache2")


# --- S3 settings (resolved from env/config; nothing is contacted) -----------------------------

AWS_VARS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_CA_BUNDLE",
)


@pytest.fixture
def aws_env(monkeypatch):
    for var in AWS_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


def test_s3_options_from_env(aws_env):
    aws_env.setenv("AWS_ENDPOINT_URL", "https://other.example:1")
    aws_env.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000")
    aws_env.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    aws_env.setenv("AWS_ACCESS_KEY_ID", "AKID")
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", "SECRET")
    aws_env.setenv("AWS_SESSION_TOKEN", "TOKEN")
    assert st._s3_options(None) == {
        "endpoint_override": "127.0.0.1:9000",
        "scheme": "http",
        "region": "eu-west-3",
        "access_key": "AKID",
        "secret_key": "SECRET",
        "session_token": "TOKEN",
    }
    aws_env.delenv("AWS_ENDPOINT_URL_S3")
    aws_env.setenv("AWS_REGION", "us-west-2")  # wins over AWS_DEFAULT_REGION
    opts = st._s3_options(None)
    assert (opts["endpoint_override"], opts["scheme"], opts["region"]) == (
        "other.example:1",
        "https",
        "us-west-2",
    )


def test_s3_options_config_overrides_env(aws_env):
    aws_env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    aws_env.setenv("AWS_REGION", "us-east-1")
    aws_env.setenv("MINIO_KEY", "k")
    aws_env.setenv("MINIO_SECRET", "s")
    aws_env.setenv("AWS_CA_BUNDLE", "/etc/ca.pem")
    cfg = StorageConfig(
        endpoint_url="https://minio.internal:9000",
        region="eu-central-1",
        access_key_id_env="MINIO_KEY",
        secret_access_key_env="MINIO_SECRET",
    )
    assert st._s3_options(cfg) == {
        "endpoint_override": "minio.internal:9000",
        "scheme": "https",
        "region": "eu-central-1",
        "tls_ca_file_path": "/etc/ca.pem",
        "access_key": "k",
        "secret_key": "s",
    }
    assert st._s3_options(StorageConfig(anonymous=True))["anonymous"] is True
    # No endpoint and no keys: AWS itself with the SDK's credential chain (IRSA, profile).
    aws_env.delenv("AWS_ENDPOINT_URL")
    assert st._s3_options(None) == {"region": "us-east-1", "tls_ca_file_path": "/etc/ca.pem"}


@pytest.mark.parametrize(
    ("config", "env", "match"),
    [
        (StorageConfig(endpoint_url="minio:9000"), {}, "expected http"),
        (StorageConfig(endpoint_url="ftp://h:1"), {}, "expected http"),
        (StorageConfig(endpoint_url="http://h:1/sub"), {}, "path after host"),
        (StorageConfig(endpoint_url="http://h:1", allow_http=False), {}, "allow_http"),
        (None, {"AWS_ACCESS_KEY_ID": "only-the-id"}, "AWS_SECRET_ACCESS_KEY"),
    ],
)
def test_s3_options_errors(aws_env, config, env, match):
    for key, value in env.items():
        aws_env.setenv(key, value)
    with pytest.raises(StorageError, match=match):
        st.filesystem_for("s3://b/k", config)


def test_filesystem_for(aws_env, tmp_path):
    fs, path = st.filesystem_for(tmp_path / "x")
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "x")
    aws_env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    aws_env.setenv("AWS_REGION", "ap-south-1")
    fs, path = st.filesystem_for("s3://bucket/data/train/")
    assert isinstance(fs, pafs.S3FileSystem) and fs.region == "ap-south-1"
    assert path == "bucket/data/train"
    assert st.filesystem_for("s3://bucket/other")[0] is fs  # one client per settings
    io = st.ray_io("s3://bucket/data/train")
    assert (io.path, io.filesystem) == ("bucket/data/train", fs)


def test_storage_config_is_strict_and_documented():
    with pytest.raises(ValidationError):
        StorageConfig(secret_access_key="x")
    assert all(f.description for f in StorageConfig.model_fields.values())


def test_absolute_resolves_local_paths_from_the_cwd_and_keeps_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert st.absolute("runs/demo/data") == str(tmp_path / "runs" / "demo" / "data")
    assert st.absolute("s3://bucket/runs/demo") == "s3://bucket/runs/demo"
    assert st.absolute("file:///x/y") == "file:///x/y"
    assert st.absolute(str(tmp_path)) == str(tmp_path)
