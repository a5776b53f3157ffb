"""The augmentation op registry (hazard/augment/registry.py): an op registered in this test, and
nowhere in product code, goes through config validation, planning and the augment stage."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pydantic import Field, ValidationError

from hazard.augment.registry import AugmentOp, op_names, register, unregister
from hazard.config.data import AugmentConfig, ValidationConfig
from hazard.core.strict import StrictModel
from pipelines.augment import augment_rows
from pipelines.augment_plan import plan_copy
from tests.helpers.augment import stage_row


class BlackoutParams(StrictModel):
    blackout_value: int = Field(0, ge=0, le=255, description="Grey level of the whole frame.")


class Blackout(AugmentOp):
    """Fills the frame with one grey level at a drawn chance: nothing of a corridor is left."""

    # between crop and hflip in plan order, last in draw order
    name, order, draws, params, chance = "blackout", 35, 1, BlackoutParams, True

    def draw(self, u, p, ctx):
        return (float(p.blackout_value),) if u[0] < 0.5 or ctx.forced else None

    def describe(self, params, pad):
        return f"blackout:{params[0]:.0f}"

    def apply(self, img, params, render):
        return Image.new(img.mode, img.size, (int(params[0]),) * len(img.getbands()))

    def map_answer(self, answer, params):
        return "non_corridor"


@pytest.fixture
def blackout():
    op = register(Blackout())
    try:
        yield op
    finally:
        unregister(op.name)


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def test_a_registered_op_is_validated_by_the_config(blackout):
    cfg = AugmentConfig(ops=["rotate", "blackout"], blackout_value=40)
    assert cfg.blackout_value == 40 and cfg.model_dump()["blackout_value"] == 40
    assert AugmentConfig.model_validate(cfg.model_dump(mode="json")) == cfg  # lineage round trip
    assert AugmentConfig(labels={"high_risk": {"ops": ["blackout"]}}).blackout_value == 0
    with pytest.raises(ValidationError, match="blackout_value: Input should be less than"):
        AugmentConfig(ops=["blackout"], blackout_value=300)
    with pytest.raises(ValidationError, match=r"ops must not repeat"):
        AugmentConfig(ops=["blackout", "blackout"])


def test_a_registered_op_runs_through_the_stage(blackout):
    cfg = AugmentConfig(copies=3, ops=["hflip", "blackout"], flip_prob=1.0, blackout_value=40)
    row = stage_row("bb.png", "high_risk")
    copies = augment_rows([row], cfg, ValidationConfig())[1:]
    assert [c["aug_ops"] for c in copies] == [["blackout:40", "hflip"]] * 3  # plan order; always
    for c in copies:
        assert np.array_equal(_pixels(c["images"][0]), np.full((72, 96, 3), 40, np.uint8))
        assert c["answer"] == "non_corridor"  # its label map; the parent's answer stands
    assert row["answer"] == "high_risk"
    mixed = AugmentConfig(copies=40, ops=["rotate", "blackout"])
    answers = [c["answer"] for c in augment_rows([row], mixed, ValidationConfig(), render=False)]
    blacked = [c for c in answers[1:] if c == "non_corridor"]
    assert 8 <= len(blacked) <= 32 and "high_risk" in answers[1:]  # binomial(40, 0.5)


def test_a_new_op_draws_after_the_built_ins_so_their_plans_stay(blackout):
    cfg = AugmentConfig(ops=["scale", "rotate", "crop", "hflip", "vflip", "hsv", "blackout"])
    for k in range(30):
        with_new = [s for s in plan_copy(cfg, "x", k) if s[0] != "blackout"]
        unregister("blackout")
        try:
            assert with_new == plan_copy(cfg, "x", k, ops=list(op_names()))
        finally:
            register(blackout)


def test_an_unknown_op_is_refused_listing_the_registered_names():
    listed = r"unknown augmentation op\(s\) \['blur'\]; registered: \['scale', 'rotate', 'crop', "
    listed += r"'hflip', 'vflip', 'hsv'\]"
    with pytest.raises(ValidationError, match=listed):
        AugmentConfig(ops=["blur"])
    with pytest.raises(ValidationError, match=listed):
        AugmentConfig(labels={"high_risk": {"ops": ["blur"]}})
    with pytest.raises(ValidationError, match=r"unknown key\(s\) \['blur_sigma'\]"):
        AugmentConfig(blur_sigma=2.0)


def test_register_refuses_clashes(blackout):
    class Twin(Blackout):
        name = "twin"

    with pytest.raises(ValueError, match="already registered"):
        register(Blackout())
    with pytest.raises(ValueError, match="order 35 is taken by 'blackout'"):
        register(Twin())
    Twin.order = 36
    with pytest.raises(ValueError, match=r"key\(s\) \['blackout_value'\] belong to 'blackout'"):
        register(type("Other", (Twin,), {"params": type("P", (BlackoutParams,), {})})())
