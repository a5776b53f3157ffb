"""hazard.infra.bundle on local folders: write, open and verify, attach the fusion."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from hazard.core.cascade import FusionSpec
from hazard.core.fusion import CorrectionParams
from hazard.infra.bundle import (
    BUNDLE_FILE,
    BundleError,
    NotABundleError,
    attach_fusion,
    open_bundle,
    read_meta,
    write_bundle,
)
from hazard.infra.storage import ChecksumMismatchError
from tests.helpers.bundle import bundle_fields, checkpoint

FUSION = {
    "correction": {"slope": 2.5, "intercept": 0.1, "k_min": 0.3, "k_max": 3.0},
    "theta": 0.25,
    "fitted_on": "runs/x/data/val",
}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def bundle(tmp_path) -> Path:
    folder = checkpoint(tmp_path / "model")
    write_bundle(folder, **bundle_fields())
    return folder


def test_written_bundle_opens_with_its_metadata_and_manifest(tmp_path):
    folder = checkpoint(tmp_path / "model")
    written = write_bundle(folder, **bundle_fields())
    opened = open_bundle(folder)
    assert opened.path == folder and opened.uri == str(folder)
    assert opened.meta == written
    assert opened.meta.model_dump(exclude={"manifest", "adapter_sha256", "fusion"}) == dict(
        bundle_fields(), schema_version=1, scoring_engine=None, scoring_dtype=None
    )
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != BUNDLE_FILE]
    assert len(files) == 5
    assert opened.meta.manifest == {p.relative_to(folder).as_posix(): sha(p) for p in files}
    assert opened.meta.adapter_sha256 == sha(folder / "adapter" / "adapter_model.safetensors")
    on_disk = json.loads((folder / BUNDLE_FILE).read_text())
    assert on_disk == json.loads(written.model_dump_json())
    assert open_bundle(f"file://{folder}").meta == written
    assert read_meta(folder) == written


def test_a_changed_byte_names_the_file(bundle):
    weights = bundle / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match="model.safetensors"):
        open_bundle(bundle)
    assert open_bundle(bundle, verify=False).meta.name == "hazard-base"  # opt-out reads no file


def test_a_missing_file_names_it(bundle):
    (bundle / "adapter" / "adapter_config.json").unlink()
    with pytest.raises(BundleError, match="missing: adapter/adapter_config.json"):
        open_bundle(bundle)


def test_an_unlisted_file_names_it(bundle):
    save_file({"x": np.zeros(2, np.float32)}, bundle / "model-00002-of-00002.safetensors")
    with pytest.raises(BundleError, match="not in the manifest: model-00002-of-00002"):
        open_bundle(bundle)


def test_a_folder_without_metadata_says_where_to_point(tmp_path):
    folder = checkpoint(tmp_path / "ckpt")
    with pytest.raises(NotABundleError, match="point model_uri at <stage output_dir>/model"):
        open_bundle(folder)
    with pytest.raises(FileNotFoundError, match="not a hazard-cascade model bundle"):
        read_meta(tmp_path / "nowhere")


def test_old_metadata_names_the_fields(bundle):
    old = {k: v for k, v in json.loads((bundle / BUNDLE_FILE).read_text()).items()}
    del old["schema_version"], old["base_model"]
    old["base_checkpoint"] = "tiny"
    (bundle / BUNDLE_FILE).write_text(json.dumps(old))
    with pytest.raises(BundleError, match="before bundle schema 1") as err:
        open_bundle(bundle)
    assert "base_model: Field required" in str(err.value)
    assert "base_checkpoint: Extra inputs are not permitted" in str(err.value)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"schema_version": 2}, "schema_version"),
        ({"labels": []}, "labels"),
        ({"stage": "expert"}, "stage"),
        ({"val_predictions": {"probabilities": [[1.0]], "labels": []}}, "val_predictions"),
        ({"fusion": {"theta": 1.5}}, "fusion"),
        ({"fusion": {"theta": 0.1, "thetta": 0.1}}, "fusion"),
        ({"adapter_sha256": "0" * 64}, "adapter_sha256"),
        ({"manifest": {"../config.json": "0" * 64}}, "manifest"),
    ],
)
def test_invalid_metadata_names_the_field(bundle, change, field):
    raw = json.loads((bundle / BUNDLE_FILE).read_text()) | change
    (bundle / BUNDLE_FILE).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=field):
        open_bundle(bundle)


def test_val_prediction_rows_need_one_value_per_label(tmp_path):
    preds = {"probabilities": [[0.5, 0.5]], "labels": ["no_risk"]}
    with pytest.raises(ValueError, match="not one per label"):
        write_bundle(checkpoint(tmp_path / "m"), **bundle_fields(val_predictions=preds))
    assert not (tmp_path / "m" / BUNDLE_FILE).exists()


def test_writer_needs_the_adapter_and_computes_the_digests(tmp_path):
    folder = checkpoint(tmp_path / "m")
    (folder / "adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match="adapter/adapter_model.safetensors"):
        write_bundle(folder, **bundle_fields())
    with pytest.raises(TypeError, match="manifest"):
        write_bundle(checkpoint(tmp_path / "n"), **bundle_fields(), manifest={})


def test_copy_to_another_folder_writes_metadata_last_and_replaces_an_old_bundle(tmp_path):
    dest = tmp_path / "published"
    first = checkpoint(tmp_path / "a")
    save_file({"y": np.ones(3, np.float32)}, first / "extra.safetensors")
    write_bundle(first, out_uri=dest, **bundle_fields())
    assert (dest / "extra.safetensors").is_file() and open_bundle(dest).meta.version == "1.2.3"

    second = checkpoint(tmp_path / "b", seed=1)
    meta = write_bundle(second, out_uri=dest, **bundle_fields(version="2"))
    assert not (dest / "extra.safetensors").exists()  # the old bundle's file is gone
    opened = open_bundle(dest)
    assert opened.meta == meta and opened.meta.version == "2"
    assert opened.meta.manifest["model.safetensors"] == sha(tmp_path / "b" / "model.safetensors")
    mtimes = {p.name: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()}
    assert mtimes[BUNDLE_FILE] == max(mtimes.values())


def test_copy_into_a_folder_that_is_not_a_bundle_keeps_its_files(tmp_path):
    dest = tmp_path / "shared"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    write_bundle(checkpoint(tmp_path / "a"), out_uri=dest, **bundle_fields())
    assert (dest / "notes.txt").read_text() == "mine"
    with pytest.raises(BundleError, match="not in the manifest: notes.txt"):
        open_bundle(dest)


def test_attach_fusion_round_trips_and_keeps_the_manifest(tmp_path):
    folder = checkpoint(tmp_path / "spec")
    written = write_bundle(folder, **bundle_fields("specialist"))
    assert written.fusion is None and written.fusion_spec() == FusionSpec()
    updated = attach_fusion(folder, FUSION, scoring_engine="vllm", scoring_dtype="bfloat16")
    opened = open_bundle(folder)  # still verifies: the manifest does not cover the metadata
    assert opened.meta == updated
    assert opened.meta.fusion == FUSION and opened.meta.scoring_dtype == "bfloat16"
    assert opened.meta.scoring_engine == "vllm"
    on_disk = json.loads((folder / BUNDLE_FILE).read_text())
    assert (on_disk["scoring_engine"], on_disk["scoring_dtype"]) == ("vllm", "bfloat16")
    assert opened.meta.manifest == written.manifest
    assert opened.meta.fusion_spec() == FusionSpec(CorrectionParams(2.5, 0.1, 0.3, 3.0), 0.25)
    calibration = {"fusion", "scoring_engine", "scoring_dtype"}
    assert opened.meta.model_dump(exclude=calibration) == written.model_dump(exclude=calibration)
    with pytest.raises(BundleError, match="scoring_engine"):
        attach_fusion(folder, FUSION, scoring_engine="onnx")
    # a partial correction is stored complete, with the defaults filled in
    partial = attach_fusion(folder, {"correction": {"slope": 1.0}, "theta": 0.5})
    assert partial.fusion == {
        "correction": {"slope": 1.0, "intercept": 0.5, "k_min": 0.5, "k_max": 2.0},
        "theta": 0.5,
        "fitted_on": None,
    }


def test_attach_fusion_refuses_a_base_bundle_and_a_bad_spec(tmp_path, bundle):
    with pytest.raises(BundleError, match="base bundle"):
        attach_fusion(bundle, FUSION)
    spec = checkpoint(tmp_path / "spec")
    write_bundle(spec, **bundle_fields("specialist"))
    before = (spec / BUNDLE_FILE).read_bytes()
    with pytest.raises(BundleError, match="theta"):
        attach_fusion(spec, {"theta": 2.0})
    assert (spec / BUNDLE_FILE).read_bytes() == before
