"""The probe and decode stages: image files (local and s3://) read, checked, decoded and stored,
or rows rejected."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

from hazard.config.data import DataConfig
from pipelines.common import (
    IMAGE_URIS,
    ORDER,
    REJECT_DETAIL,
    REJECT_REASON,
    REJECT_STAGE,
    reject,
    stage_table,
)
from pipelines.decode import decode_row, decode_stage, probe_row, probe_stage
from pipelines.dedup_split import LIGHT_COLUMNS, apply_decisions, decide
from tests.helpers.images import RED, noise, write_samples

UNCHANGED = ("plain.jpg", "grey.png", "photo.webp")  # stored byte for byte
KEPT_FORMATS = {  # what the other kept samples are re-encoded to ('auto')
    "rotated.jpg": "JPEG",
    "cmyk.jpg": "JPEG",
    "grey16.png": "PNG",
    "palette.png": "PNG",
    "rgba.png": "PNG",
}


def sha_of_shas(*files: bytes) -> str:
    """content_hash computed independently: sha256 over each file's sha256 digest."""
    return hashlib.sha256(b"".join(hashlib.sha256(f).digest() for f in files)).hexdigest()


def make_row(id_: str, uris: list[str], order: int) -> dict:
    return {
        "id": id_,
        "images": [],
        "task": "corridor_risk",
        "prompt": "p",
        "answer": "low",
        "split": "train",
        "source_uri": uris[0] if uris else "",
        "content_hash": "",
        "aug_ops": [],
        ORDER: order,
        IMAGE_URIS: uris,
        REJECT_REASON: None,
    }


def config_for(tmp: Path, **validation) -> DataConfig:
    return DataConfig(
        source={"uri": str(tmp)},
        output_dir=str(tmp / "out"),
        validation=validation,
        ray={"batch_size": 4},
    )


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> tuple[Path, dict[str, str | None]]:
    folder = tmp_path_factory.mktemp("images")
    return folder, write_samples(folder)


def check_kept(row: dict, original: bytes, name: str) -> None:
    assert row[REJECT_REASON] is None, (name, row[REJECT_DETAIL])
    assert row["content_hash"] == sha_of_shas(original)
    (stored,) = row["images"]
    if name in UNCHANGED:
        assert stored == original
    else:
        with Image.open(io.BytesIO(stored)) as img:
            assert img.format == KEPT_FORMATS[name] and img.mode == "RGB"


# --- without Ray -----------------------------------------------------------------------------


def test_decode_row_on_every_sample(samples, tmp_path):
    folder, expected = samples
    config = config_for(tmp_path)
    for i, (name, reason) in enumerate(expected.items()):
        row = decode_row(make_row(name, [(folder / name).as_uri()], i), config)
        if reason is None:
            check_kept(row, (folder / name).read_bytes(), name)
        else:
            assert (row[REJECT_REASON], row[REJECT_STAGE]) == (reason, "decode"), name
            assert row["images"] == []


def test_rotated_photo_is_stored_upright(samples, tmp_path):
    folder, _ = samples
    row = decode_row(make_row("r", [(folder / "rotated.jpg").as_uri()], 0), config_for(tmp_path))
    with Image.open(io.BytesIO(row["images"][0])) as img:
        assert img.size == (32, 64)  # stored 64x32 with orientation 6
        assert all(abs(a - b) <= 16 for a, b in zip(img.getpixel((28, 4)), RED, strict=True))


def test_downscaled_to_the_pixel_budget(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(noise((1280, 720)))
    row = decode_row(make_row("b", [path.as_uri()], 0), config_for(tmp_path, pixel_budget=50_000))
    with Image.open(io.BytesIO(row["images"][0])) as img:
        assert img.size == (298, 167)  # see test_images.test_fit_pixels_by_hand
    assert row["content_hash"] == sha_of_shas(path.read_bytes())  # of the original file


def test_storage_failures(samples, tmp_path):
    folder, _ = samples
    config = config_for(tmp_path)
    cases = {
        (folder / "nope.jpg").as_uri(): "missing_file",
        str(folder / "nope.jpg"): "missing_file",  # a plain local path works too
        str(folder / "bad\x00name.jpg"): "unreadable",  # NUL byte in the path
        folder.as_uri(): "unreadable",  # a directory
        "ftp://host/x.jpg": "unreadable",  # unsupported scheme
    }
    for i, (uri, reason) in enumerate(cases.items()):
        row = decode_row(make_row(f"r{i}", [uri], i), config)
        assert (row[REJECT_REASON], row[REJECT_STAGE]) == (reason, "decode"), uri
        assert row[REJECT_DETAIL]


def test_too_many_bytes_judged_from_the_file_size(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(noise((100, 100)))
    size = path.stat().st_size
    row = decode_row(make_row("b", [path.as_uri()], 0), config_for(tmp_path, max_bytes=size - 1))
    assert row[REJECT_REASON] == "too_many_bytes" and f"{size} bytes" in row[REJECT_DETAIL]
    row = decode_row(make_row("b", [path.as_uri()], 0), config_for(tmp_path, max_bytes=size))
    assert row[REJECT_REASON] is None


def test_multi_image_rows(samples, tmp_path):
    folder, _ = samples
    config = config_for(tmp_path)
    a, b = folder / "plain.jpg", folder / "rgba.png"
    row = decode_row(make_row("ab", [a.as_uri(), b.as_uri()], 0), config)
    assert len(row["images"]) == 2 and row["images"][0] == a.read_bytes()
    assert row["content_hash"] == sha_of_shas(a.read_bytes(), b.read_bytes())

    missing = (folder / "gone.jpg").as_uri()
    row = decode_row(make_row("am", [a.as_uri(), missing], 1), config)
    assert row[REJECT_REASON] == "missing_file" and row["images"] == []
    assert row[REJECT_DETAIL].startswith("image 1 of 2") and "gone.jpg" in row[REJECT_DETAIL]

    bad = (folder / "truncated.jpg").as_uri()
    row = decode_row(make_row("ba", [bad, a.as_uri()], 2), config)
    assert row[REJECT_REASON] == "undecodable" and row[REJECT_DETAIL].startswith("image 0 of 2")


def test_rejected_rows_pass_untouched(samples, tmp_path):
    folder, _ = samples
    row = reject(make_row("x", [(folder / "plain.jpg").as_uri()], 0), "bad_split", "d", "import")
    assert decode_row(row, config_for(tmp_path)) == row
    empty = decode_row(make_row("e", [], 1), config_for(tmp_path))
    assert empty[REJECT_REASON] == "undecodable" and empty[REJECT_STAGE] == "decode"


FULL_DECODE_ONLY = {"truncated.jpg"}  # what only the full decode can reject


def test_probe_row_rejects_as_decode_does_and_keeps_no_pixels(samples, tmp_path):
    folder, expected = samples
    config = config_for(tmp_path)
    for i, (name, reason) in enumerate(expected.items()):
        row = probe_row(make_row(name, [(folder / name).as_uri()], i), config)
        assert row["images"] == [], name
        if reason is None or name in FULL_DECODE_ONLY:
            assert row[REJECT_REASON] is None, (name, row[REJECT_DETAIL])
            assert row["content_hash"] == sha_of_shas((folder / name).read_bytes())
        else:
            assert (row[REJECT_REASON], row[REJECT_STAGE]) == (reason, "decode"), name
    row = probe_row(make_row("m", [(folder / "gone.jpg").as_uri()], 0), config)
    assert (row[REJECT_REASON], row[REJECT_STAGE]) == ("missing_file", "decode")


def test_decode_after_probe_keeps_the_probed_hash_and_rejects_changed_files(tmp_path):
    config = config_for(tmp_path)
    path = tmp_path / "a.png"
    path.write_bytes(noise((64, 48)))
    probed = probe_row(make_row("a", [path.as_uri()], 0), config)
    row = decode_row(probed, config)
    assert row[REJECT_REASON] is None and row["content_hash"] == probed["content_hash"]
    assert row["images"] == [path.read_bytes()]  # a plain RGB PNG within budget: stored as is

    path.write_bytes(noise((64, 48), seed=1))  # replaced between the probe and the decode
    row = decode_row(probed, config)
    assert (row[REJECT_REASON], row[REJECT_STAGE]) == ("unreadable", "decode")
    assert "changed while the job ran" in row[REJECT_DETAIL] and row["images"] == []


def test_a_copy_of_a_file_only_the_decode_rejects_is_a_duplicate_of_it(samples, tmp_path):
    """The probe passes a truncated JPEG, so dedup keeps the first of two copies (split train)
    and rejects the second as its duplicate; the decode then rejects the first."""
    folder, _ = samples
    config = config_for(tmp_path)
    uri = (folder / "truncated.jpg").as_uri()
    rows = [probe_row(make_row(f"t{i}", [uri], i), config) for i in range(2)]
    d = decide(
        pa.Table.from_pylist([{c: r.get(c) for c in LIGHT_COLUMNS} for r in rows]), config.split
    )
    first, second = (decode_row(apply_decisions(r, d.duplicates, d.splits), config) for r in rows)
    assert (first[REJECT_REASON], first[REJECT_STAGE]) == ("undecodable", "decode")
    assert (second[REJECT_REASON], second[REJECT_STAGE]) == ("duplicate", "dedup")
    assert second[REJECT_DETAIL] == "same content as t0 (split train)"


# --- on Ray, local and s3:// -----------------------------------------------------------------


def run_stage(rows: list[dict], config: DataConfig, stage=decode_stage) -> dict[str, dict]:
    import ray

    ds = ray.data.from_arrow(stage_table(rows)).repartition(3)
    out = stage(ds, config).take_all()
    assert len(out) == len(rows)  # rows in == rows out
    by_id = {r["id"]: r for r in out}
    assert len(by_id) == len(rows)
    return by_id


def expected_rows(uri_of, names):
    rows = [make_row(n, [uri_of(n)], i) for i, n in enumerate(names)]
    rows.append(make_row("missing.jpg", [uri_of("missing.jpg")], len(rows)))
    rows.append(reject(make_row("pre", [uri_of("plain.jpg")], len(rows)), "bad_row", "x", "import"))
    return rows


def check_stage_output(by_id, reasons, read):
    for name, reason in reasons.items():
        row = by_id[name]
        if reason is None:
            check_kept(row, read(name), name)
        else:
            assert (row[REJECT_REASON], row[REJECT_STAGE]) == (reason, "decode"), name
    assert (by_id["missing.jpg"][REJECT_REASON], by_id["missing.jpg"][REJECT_STAGE]) == (
        "missing_file",
        "decode",
    )
    pre = by_id["pre"]
    assert (pre[REJECT_REASON], pre[REJECT_STAGE], pre["images"]) == ("bad_row", "import", [])


@pytest.mark.slow
def test_stage_on_ray_with_local_files(ray_s3, samples, tmp_path):
    folder, reasons = samples
    rows = expected_rows(lambda n: (folder / n).as_uri(), reasons)
    by_id = run_stage(rows, config_for(tmp_path))
    check_stage_output(by_id, reasons, lambda n: (folder / n).read_bytes())
    assert by_id["plain.jpg"][IMAGE_URIS] == [(folder / "plain.jpg").as_uri()]

    probed = run_stage(rows, config_for(tmp_path), probe_stage)
    for name, reason in reasons.items():
        row, kept = probed[name], reason is None or name in FULL_DECODE_ONLY
        assert row[REJECT_REASON] == (None if kept else reason) and row["images"] == [], name
        if kept:
            assert row["content_hash"] == sha_of_shas((folder / name).read_bytes())


@pytest.mark.slow
def test_stage_on_ray_with_s3_uris(ray_s3, samples, tmp_path):
    folder, reasons = samples
    names = ["plain.jpg", "rotated.jpg", "rgba.png", "truncated.jpg", "anim.gif", "bomb.png"]
    client = ray_s3.client()
    for name in names:
        client.put_object(
            Bucket=ray_s3.bucket, Key=f"decode/{name}", Body=(folder / name).read_bytes()
        )
    rows = expected_rows(lambda n: f"s3://{ray_s3.bucket}/decode/{n}", names)
    assert os.environ["AWS_ENDPOINT_URL"] == ray_s3.endpoint
    by_id = run_stage(rows, config_for(tmp_path))
    check_stage_output(by_id, {n: reasons[n] for n in names}, lambda n: (folder / n).read_bytes())
