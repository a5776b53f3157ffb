"""Augmented copies stored as recipes (`augment.store: recipes`): the data job's recipe rows and
the ingest's `apply_recipes`, against the copies `augment.store: images` stores (no Ray)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from tests.helpers.augment import encode, stage_row

from hazard.config.data import AugmentConfig, ValidationConfig
from hazard.core.schema import SAMPLE_SCHEMA, content_hash
from pipelines.augment import RecipeError, apply_recipes, augment_rows, copy_index
from pipelines.common import STAGE_SCHEMA
from pipelines.write import strip_copy_images

VALIDATION = ValidationConfig()
# per-label ops: a re-plan that ignored the label's rule would record different aug_ops
IMAGES = AugmentConfig(
    copies=2,
    labels={"high_risk": {"copies": 3, "ops": ["rotate", "vflip", "hsv"]}},
    seed=4,
)
RECIPES = IMAGES.model_copy(update={"store": "recipes"})


def _photo(seed: int, w: int = 120, h: int = 80) -> np.ndarray:
    """A lit wall (gradient + noise) with a red sign: textured borders, protected pixels."""
    rng = np.random.default_rng(seed)
    wall = 90 + 80 * np.arange(w)[None, :] / w + rng.normal(0, 6, (h, w))
    arr = np.clip(np.rint(wall), 0, 255).astype(np.uint8)[..., None].repeat(3, -1)
    arr[10:30, 20:50] = (210, 30, 25)
    return arr


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def _row(rid: str, answer: str, images: list[bytes]) -> dict:
    """A stage row as the recipes store sees it: no provenance or source URIs yet."""
    return stage_row(rid, answer, images=images, aug_ops=None, _image_uris=None)


def _rows() -> list[dict]:
    return [
        _row("a.jpg", "no_risk", [encode(_photo(1), "JPEG")]),
        _row("b.png", "high_risk", [encode(_photo(2), "PNG")]),
        _row("two.png", "low_risk", [encode(_photo(3), "PNG"), encode(_photo(4), "JPEG")]),
    ]


@pytest.fixture(scope="module")
def both() -> tuple[list[dict], list[dict]]:
    """(rows of store: images, rows of store: recipes) from the same input."""
    return augment_rows(_rows(), IMAGES, VALIDATION), augment_rows(
        _rows(), RECIPES, VALIDATION, render=False
    )


def test_recipe_rows_are_the_stored_copies_without_their_images(both):
    stored, recipes = both
    assert [r["id"] for r in recipes] == [r["id"] for r in stored]
    assert len(recipes) == 3 + 2 + 3 + 2
    parents = {r["id"]: r for r in _rows()}
    for s, r in zip(stored, recipes, strict=True):
        if r["parent_id"] is None:
            assert r == s == parents[r["id"]]
            continue
        assert r["images"] == [] and len(s["images"]) == len(parents[r["parent_id"]]["images"])
        assert r["content_hash"] == parents[r["parent_id"]]["content_hash"]
        assert s["content_hash"] == content_hash(s["images"])
        same = {k: v for k, v in r.items() if k not in ("images", "content_hash")}
        assert same == {k: v for k, v in s.items() if k not in ("images", "content_hash")}
    ops = {r["id"]: r["aug_ops"] for r in recipes if r["parent_id"]}
    assert {o.split(":")[0] for k, v in ops.items() if k.startswith("b.png") for o in v} <= {
        "rotate",
        "vflip",
        "hsv",
    }


def test_apply_recipes_rebuilds_the_stored_copies_byte_for_byte(both):
    stored, recipes = both
    by_id = {r["id"]: r for r in stored}
    parents = {r["id"]: r for r in recipes if r["parent_id"] is None}
    checked = 0
    for pid, parent in parents.items():
        mine = [(r["id"], r["aug_ops"]) for r in recipes if r["parent_id"] == pid]
        for (cid, _), images in zip(
            mine, apply_recipes(parent, mine, RECIPES, VALIDATION), strict=True
        ):
            assert images == by_id[cid]["images"], cid
            for got, want in zip(images, by_id[cid]["images"], strict=True):
                assert np.array_equal(_pixels(got), _pixels(want))
                assert not np.array_equal(_pixels(got), _pixels(parent["images"][0]))
                checked += 1
    assert checked == 2 + 3 + 2 * 2  # the two-image row: both images of each copy


def test_a_recipe_re_planned_under_another_config_is_refused(both):
    _, recipes = both
    parent = recipes[0]
    mine = [(r["id"], r["aug_ops"]) for r in recipes if r["parent_id"] == parent["id"]]
    other = RECIPES.model_copy(update={"seed": 5})
    with pytest.raises(RecipeError, match="re-plans"):
        apply_recipes(parent, mine, other, VALIDATION)
    with pytest.raises(RecipeError, match="not a copy id"):
        apply_recipes(parent, [("b.png#aug0", mine[0][1])], RECIPES, VALIDATION)
    assert copy_index("a.jpg#aug12", "a.jpg") == 12
    with pytest.raises(RecipeError):
        copy_index("a.jpg#augx", "a.jpg")


def test_the_write_stage_strips_the_copies_images_only(both):
    stored, _ = both
    table = pa.Table.from_pylist(stored, schema=STAGE_SCHEMA).select(SAMPLE_SCHEMA.names)
    out = strip_copy_images(table).to_pylist()
    for before, after in zip(stored, out, strict=True):
        expect = [] if before["parent_id"] else before["images"]
        assert after["images"] == expect and after["id"] == before["id"]


def test_a_recipe_row_that_reaches_the_encoder_is_a_clear_error(tiny_model_path):
    from hazard.core.tasks import CORRIDOR_RISK_PROMPT
    from hazard.model.training.step import encode_batch
    from hazard.model.vlm import load_processor

    batch = {
        "id": ["a.jpg", "a.jpg#aug0"],
        "images": [[encode(_photo(1), "JPEG")], []],
        "answer": ["no_risk", "no_risk"],
    }
    with pytest.raises(ValueError, match=r"a.jpg#aug0 has no image bytes.*augment.store"):
        encode_batch(load_processor(tiny_model_path), batch, CORRIDOR_RISK_PROMPT, 512)
