"""The consistency filter on real Ray (local, 2 CPUs) with the real tiny Qwen2.5-VL.

The in-flight dataset: 10 train originals (2 synthetic scenes per label), each with a genuine
augmented copy and a destroyed one (uniform grey, noise, or a scene of another label), plus
val/test rows, rejected rows and a copy whose parent was rejected. The expected scores and
keep/drop decisions are computed here without Ray: each row scored alone with
hazard.model.vlm.label_probabilities, the margin rule applied by hand.
"""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import ray
from PIL import Image

from hazard.config.data import ConsistencyConfig, RayConfig
from hazard.core.labels import RISK_LABELS
from hazard.core.schema import content_hash
from hazard.core.tasks import get_task
from hazard.demo.synthetic import render_scene
from hazard.infra.bundle import read_meta
from hazard.model.engines import TransformersEngine
from hazard.model.vlm import label_probabilities, load_model, load_processor, open_stored_image
from pipelines.common import REJECT_DETAIL, REJECT_REASON, REJECT_STAGE, stage_table
from pipelines.consistency import consistency_filter, mark_inconsistent, score_rows
from tests.helpers.serve import make_bundle

pytestmark = pytest.mark.usefixtures("ray_local")

TASK = get_task("corridor_risk")
MARGIN = 0.1
RAY_CFG = RayConfig(batch_size=5)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _row(id_: str, data: bytes, answer: str, split: str, order: int, parent=None, ops=None):
    return {
        "id": id_,
        "images": [data],
        "task": TASK.name,
        "prompt": TASK.prompt,
        "answer": answer,
        "split": split,
        "source_uri": f"file:///src/{id_.split('#')[0]}.png",
        "content_hash": content_hash([data]),
        "parent_id": parent,
        "aug_ops": ops,
        "_order": order,
        "_image_uris": [f"file:///src/{id_.split('#')[0]}.png"],
    }


def _flip_rotate(img: Image.Image) -> Image.Image:
    """A genuine augmentation: mirrored and turned 6 degrees (corners filled by a border pixel)."""
    mirrored = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return mirrored.rotate(6.0, resample=Image.Resampling.BICUBIC, fillcolor=img.getpixel((0, 0)))


def _rejected(row: dict, reason: str) -> dict:
    return {
        **row,
        "images": [],
        REJECT_REASON: reason,
        REJECT_DETAIL: "x",
        REJECT_STAGE: "validate",
    }


def _scene(label: str, *seed: int) -> bytes:
    return _png(render_scene(label, np.random.default_rng([*seed]), size=64)[0])


def build_rows() -> list[dict]:
    """37 in-flight rows (STAGE_SCHEMA keys), copies listed before their parents."""
    grey = _png(Image.new("RGB", (64, 64), (128, 128, 128)))
    noise = _png(
        Image.fromarray(np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    )
    originals, copies = [], []
    for li, label in enumerate(RISK_LABELS):
        for i in range(2):
            k = 2 * li + i
            orig = _row(f"{label}-{i}", _scene(label, 3, li, i), label, "train", k)
            originals.append(orig)
            good = _png(_flip_rotate(open_stored_image(orig["images"][0])))
            copies.append(_row(f"{orig['id']}#aug0", good, label, "train", k, orig["id"], ["r"]))
            other = RISK_LABELS[(li + 2) % len(RISK_LABELS)]
            bad = (grey, noise, _scene(other, 4, li, i))[k % 3]
            copies.append(_row(f"{orig['id']}#aug1", bad, label, "train", k, orig["id"], ["x"]))
    others = [
        # not scored: an answer outside the labels would make scoring fail
        _row("val-0", _scene("high_risk", 6, 0), "not_a_label", "val", 20),
        _row("val-1", _scene("no_risk", 6, 1), "no_risk", "val", 21),
        _row("test-0", _scene("non_corridor", 6, 2), "non_corridor", "test", 22),
        {
            **_row("test-1", _scene("low_risk", 6, 3), "low_risk", "test", 23),
            "consistency_score": 0.5,
        },
    ]
    orphan_parent = _row("orphan", _scene("non_corridor", 7, 0), "non_corridor", "train", 30)
    orphan = _row("orphan#aug0", grey, "non_corridor", "train", 30, "orphan", ["x"])
    failed = _row("medium_risk-0#aug2", grey, "medium_risk", "train", 4, "medium_risk-0", ["x"])
    rejected = [_rejected(orphan_parent, "undecodable"), _rejected(failed, "augment_failed")]
    rows = copies[::-1] + others + rejected + [orphan] + originals
    return [stage_table([r]).to_pylist()[0] for r in rows]  # every STAGE_SCHEMA key present


def _dataset(rows: list[dict]) -> ray.data.Dataset:
    """Several blocks of 6 rows: copies and their parents land in different blocks."""
    return ray.data.from_arrow([stage_table(rows[i : i + 6]) for i in range(0, len(rows), 6)])


@pytest.fixture(scope="module")
def bundle(tiny_model_path, tmp_path_factory):
    return make_bundle(tiny_model_path, tmp_path_factory.mktemp("c") / "model", "m", "1", "base")


@pytest.fixture(scope="module")
def rows():
    return build_rows()


@pytest.fixture(scope="module")
def expected(bundle, rows):
    """({id: p(answer)} of the rows to score, ids to drop), each row scored alone, no Ray."""
    meta = read_meta(bundle)
    model, processor = load_model(bundle).eval(), load_processor(bundle)
    labels = tuple(meta.labels)
    scores = {}
    for r in rows:
        if r["split"] == "train" and r[REJECT_REASON] is None:
            probs = label_probabilities(
                model, processor, [[open_stored_image(r["images"][0])]], meta.prompt, labels
            )
            scores[r["id"]] = float(probs[0, labels.index(r["answer"])])
    drop, gaps = set(), []
    for r in rows:
        parent = r["parent_id"]
        if r["id"] in scores and parent in scores:
            gaps.append(scores[parent] - scores[r["id"]])
            if scores[r["id"]] < scores[parent] - MARGIN:
                drop.add(r["id"])
    # the data must decide clearly on both sides of the margin, or the test proves nothing
    assert min(abs(g - MARGIN) for g in gaps) > 1e-3
    assert len(drop) >= 4 and len(gaps) - len(drop) >= 10
    return scores, drop


def _cfg(bundle, **kw) -> ConsistencyConfig:
    base = {"enabled": True, "model_uri": str(bundle), "margin": MARGIN, "batch_size": 4}
    return ConsistencyConfig(**(base | kw))


@pytest.fixture(scope="module")
def output(bundle, rows):
    return consistency_filter(_dataset(rows), _cfg(bundle), TASK, RAY_CFG).take_all()


@pytest.mark.slow
def test_stage_scores_match_direct_scoring(rows, output, expected):
    scores, _ = expected
    assert len(output) == len(rows)
    by_id = {r["id"]: r for r in output}
    assert set(by_id) == {r["id"] for r in rows}
    assert set(scores) == {i for i, r in by_id.items() if r["consistency_score"] is not None} - {
        "test-1"
    }
    for id_, score in scores.items():
        assert by_id[id_]["consistency_score"] == pytest.approx(score, abs=1e-5), id_


@pytest.mark.slow
def test_stage_rejects_exactly_the_inconsistent_copies(rows, output, expected):
    scores, drop = expected
    by_id = {r["id"]: r for r in output}
    got = {i for i, r in by_id.items() if r[REJECT_REASON] == "inconsistent"}
    assert got == drop
    assert all(i.endswith("#aug1") for i in drop)  # only destroyed copies fall that far
    for id_ in drop:
        r = by_id[id_]
        assert r[REJECT_STAGE] == "consistency" and r["images"] == []
        m = re.fullmatch(r"p\(label\)=([\d.]+) < parent ([\d.]+) - margin 0\.10", r[REJECT_DETAIL])
        assert m, r[REJECT_DETAIL]
        assert float(m[1]) == pytest.approx(scores[id_], abs=1e-3)
        assert float(m[2]) == pytest.approx(scores[r["parent_id"]], abs=1e-3)
    # every other row is the input row, apart from the score on the scored ones
    for row in rows:
        if row["id"] in drop:
            continue
        out = by_id[row["id"]]
        if row["id"] in scores:
            assert out == {**row, "consistency_score": out["consistency_score"]}
            assert out["consistency_score"] == pytest.approx(scores[row["id"]], abs=1e-5)
        else:
            assert out == row


@pytest.mark.slow
def test_val_test_and_rejected_rows_pass_through(rows, output):
    by_id = {r["id"]: r for r in output}
    untouched = [r for r in rows if r["split"] != "train" or r[REJECT_REASON] is not None]
    assert len(untouched) == 6
    for row in untouched:
        assert by_id[row["id"]] == row
    # a copy whose parent was rejected is scored but has nothing to be compared with
    assert by_id["orphan#aug0"][REJECT_REASON] is None
    assert by_id["orphan#aug0"]["consistency_score"] is not None


@pytest.mark.slow
def test_ray_free_path_gives_the_same_result(bundle, rows, expected):
    scores, drop = expected
    todo = [r for r in rows if r["id"] in scores]
    got = score_rows(TransformersEngine(str(bundle)), todo, batch_size=7)
    for row, score in zip(todo, got, strict=True):
        assert score == pytest.approx(scores[row["id"]], abs=1e-5)
    scored = {r["id"]: s for r, s in zip(todo, got, strict=True)}
    marked = mark_inconsistent(
        [{**r, "consistency_score": scored.get(r["id"])} for r in rows], MARGIN
    )
    assert {r["id"] for r in marked if r[REJECT_REASON] == "inconsistent"} == drop
    assert len(marked) == len(rows)


def test_disabled_returns_the_dataset_unchanged(bundle, rows):
    ds = _dataset(rows)
    out = consistency_filter(ds, _cfg(bundle, enabled=False), TASK, RAY_CFG)
    assert out is ds
    assert out.take_all() == rows


def test_task_without_labels_is_an_error(bundle, rows):
    with pytest.raises(ValueError, match="closed label set"):
        consistency_filter(_dataset(rows), _cfg(bundle), get_task("vqa"), RAY_CFG)


@pytest.mark.slow
def test_answer_outside_the_labels_is_an_error(bundle, rows):
    bad = {**rows[-1], "id": "odd", "answer": "very_high_risk"}
    with pytest.raises(ValueError, match="'very_high_risk' is not among the model's labels"):
        score_rows(TransformersEngine(str(bundle)), [bad])
    with pytest.raises(ValueError, match=r"cannot be scored .*'odd' \(answer 'very_high_risk'\)"):
        consistency_filter(_dataset([bad, rows[-1]]), _cfg(bundle), TASK, RAY_CFG)


def test_bundle_without_the_task_labels_is_an_error(bundle, rows):
    with pytest.raises(ValueError, match=r"labels \['other'\] of task 'high_risk_binary'"):
        consistency_filter(_dataset(rows), _cfg(bundle), get_task("high_risk_binary"), RAY_CFG)
