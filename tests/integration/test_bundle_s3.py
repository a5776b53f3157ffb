"""Model bundles on S3: moto on loopback (a real S3 protocol endpoint, never AWS)."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest

from hazard.infra.bundle import (
    BUNDLE_FILE,
    NotABundleError,
    attach_fusion,
    default_cache_dir,
    open_bundle,
    read_meta,
    write_bundle,
)
from hazard.infra.storage import ChecksumMismatchError
from tests.helpers.bundle import bundle_fields, checkpoint

FUSION = {
    "correction": {"slope": 2.0, "intercept": 0.25, "k_min": 0.5, "k_max": 2.5},
    "theta": 0.4,
    "fitted_on": "s3://data/val",
}


def files_of(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and p.name != BUNDLE_FILE
    }


@pytest.fixture
def published(moto_s3, tmp_path):
    """(s3 URI, prefix key, local source folder, written meta) of a fresh specialist bundle."""
    prefix = f"bundles-{uuid.uuid4().hex[:8]}/specialist/model"
    uri = f"s3://{moto_s3.bucket}/{prefix}"
    local = checkpoint(tmp_path / "local")
    meta = write_bundle(local, out_uri=uri, **bundle_fields("specialist"))
    return uri, prefix, local, meta


def test_written_to_s3_then_opened_into_a_cache(moto_s3, published, tmp_path):
    uri, prefix, local, meta = published
    source = files_of(local)
    assert moto_s3.keys(prefix + "/") == sorted(f"{prefix}/{rel}" for rel in [*source, BUNDLE_FILE])
    assert meta.manifest == {rel: hashlib.sha256(d).hexdigest() for rel, d in source.items()}
    assert json.loads((local / BUNDLE_FILE).read_text()) == json.loads(meta.model_dump_json())
    assert read_meta(uri) == meta

    opened = open_bundle(uri, cache_dir=tmp_path / "cache")
    assert opened.path == tmp_path / "cache" and opened.uri == uri and opened.meta == meta
    assert files_of(opened.path) == source
    assert open_bundle(opened.path).meta == meta  # the cached copy is a verified local bundle


def test_second_open_reuses_the_cache_and_repairs_a_corrupt_file(published, tmp_path):
    uri, _, local, _ = published
    cache = tmp_path / "cache"
    open_bundle(uri, cache_dir=cache)
    stamp = {rel: (cache / rel).stat().st_mtime_ns for rel in files_of(cache)}
    inode = (cache / "model.safetensors").stat().st_ino

    open_bundle(uri, cache_dir=cache)
    assert {rel: (cache / rel).stat().st_mtime_ns for rel in files_of(cache)} == stamp
    assert (cache / "model.safetensors").stat().st_ino == inode  # not downloaded again

    (cache / "model.safetensors").write_bytes(b"corrupt")
    opened = open_bundle(uri, cache_dir=cache)
    assert files_of(opened.path) == files_of(local)  # fetched again, checked
    assert (cache / "adapter/adapter_model.safetensors").stat().st_mtime_ns == stamp[
        "adapter/adapter_model.safetensors"
    ]


def test_default_cache_is_under_hazard_cache(published, tmp_path, monkeypatch):
    uri, _, _, meta = published
    monkeypatch.setenv("HAZARD_CACHE", str(tmp_path / "hc"))
    listing = hashlib.sha256(json.dumps(meta.manifest, sort_keys=True).encode()).hexdigest()
    key = hashlib.sha256(f"{uri}\n{listing}".encode()).hexdigest()[:16]
    opened = open_bundle(uri)
    assert opened.path == tmp_path / "hc" / "bundles" / key == default_cache_dir(uri, meta.manifest)
    assert open_bundle(uri + "/").path == opened.path  # a trailing slash is the same bundle


def test_a_corrupt_object_is_refused(moto_s3, published, tmp_path):
    uri, prefix, _, _ = published
    key = f"{prefix}/adapter/adapter_model.safetensors"
    moto_s3.client().put_object(Bucket=moto_s3.bucket, Key=key, Body=b"tampered")
    with pytest.raises(ChecksumMismatchError, match="adapter/adapter_model.safetensors"):
        open_bundle(uri, cache_dir=tmp_path / "fresh")
    assert not (tmp_path / "fresh" / "adapter" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "fresh" / BUNDLE_FILE).exists()


def test_attach_fusion_on_s3_reaches_a_cached_copy(moto_s3, published, tmp_path):
    uri, prefix, _, meta = published
    cache = tmp_path / "cache"
    assert open_bundle(uri, cache_dir=cache).meta.fusion is None
    stamp = (cache / "model.safetensors").stat().st_mtime_ns

    updated = attach_fusion(uri, FUSION, scoring_dtype="float32")
    assert updated.fusion == FUSION and updated.manifest == meta.manifest
    stored = moto_s3.client().get_object(Bucket=moto_s3.bucket, Key=f"{prefix}/{BUNDLE_FILE}")
    assert json.loads(stored["Body"].read())["fusion"] == FUSION

    opened = open_bundle(uri, cache_dir=cache)
    assert opened.meta == updated and opened.meta.scoring_dtype == "float32"
    assert json.loads((cache / BUNDLE_FILE).read_text())["fusion"] == FUSION
    assert (cache / "model.safetensors").stat().st_mtime_ns == stamp  # weights not refetched


def test_rewriting_a_bundle_drops_its_old_files(moto_s3, published, tmp_path):
    uri, prefix, _, _ = published
    new = checkpoint(tmp_path / "v2", seed=3)
    (new / "model.safetensors").rename(new / "model-00001-of-00001.safetensors")
    meta = write_bundle(new, out_uri=uri, **bundle_fields("specialist", version="2.0.0"))
    expected = sorted(f"{prefix}/{rel}" for rel in [*files_of(new), BUNDLE_FILE])
    objects = [k for k in moto_s3.keys(prefix + "/") if not k.endswith("/")]  # no dir markers
    assert objects == expected  # model.safetensors of v1 is gone
    opened = open_bundle(uri, cache_dir=tmp_path / "cache")
    assert opened.meta == meta and files_of(opened.path) == files_of(new)


def test_a_prefix_without_metadata_is_not_a_bundle(moto_s3, tmp_path):
    prefix = f"bare-{uuid.uuid4().hex[:8]}"
    moto_s3.client().put_object(Bucket=moto_s3.bucket, Key=f"{prefix}/config.json", Body=b"{}")
    with pytest.raises(NotABundleError, match="point model_uri at <stage output_dir>/model"):
        open_bundle(f"s3://{moto_s3.bucket}/{prefix}", cache_dir=tmp_path / "c")
