"""Augmentation plans: which registered ops (`hazard/augment`) a copy applies, with which
parameters, and applying them; the augment stage (`augment.py`) runs them.

A copy's plan is a list of steps `(name, params)` drawn from (seed, sample id, copy index)
only, in the registry's plan order (`plan_copy`); `step_labels` turns it into the `aug_ops`
provenance strings, `apply_plan` renders it (its geometric steps composed into one affine map,
applied with one resample, then its pixel steps in order) and `plan_answer` gives the copy's
answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from hazard.augment.colour import HueBand
from hazard.augment.geometry import Padding, normalize_mode, warp
from hazard.augment.registry import (
    PlanContext,
    Render,
    Step,
    draw_slots,
    get_op,
    n_draws,
    op_names,
    ops_in_order,
)
from hazard.config.data import AugmentConfig


def copy_rng(seed: int, sample_id: str, copy: int) -> np.random.Generator:
    """The random generator of one augmented copy, from (seed, id, copy index) only."""
    digest = hashlib.sha256(f"{seed}\x1f{sample_id}\x1f{copy}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def plan_copy(
    cfg: AugmentConfig, sample_id: str, copy: int, ops: Sequence[str] | None = None
) -> list[Step]:
    """The steps of copy `copy` of `sample_id` using `ops` (default cfg.ops), in plan order.

    Every copy draws the same uniforms in the same order whatever the ops, so enabling or
    disabling one op (e.g. per label) leaves the other ops' parameters unchanged.
    """
    enabled = set(cfg.ops if ops is None else ops)
    unknown = sorted(enabled - set(op_names()))
    if unknown:
        raise ValueError(f"unknown augmentation op(s) {unknown}; registered: {list(op_names())}")
    chosen = [op for op in ops_in_order() if op.name in enabled]
    u = copy_rng(cfg.seed, sample_id, copy).random(n_draws())
    slots = draw_slots()
    ctx = PlanContext(planned={}, forced=all(op.chance for op in chosen))
    for op in chosen:
        params = op.draw(u[slots[op.name]], op.settings(cfg), ctx)
        if params is not None:
            ctx.planned[op.name] = params
    return list(ctx.planned.items())


def step_labels(steps: Sequence[Step], pad_modes: Sequence[str] = ()) -> list[str]:
    """Provenance strings of a plan, e.g. ["scale:0.93:reflect", "rotate:+6.2:reflect",
    "crop:0.91", "hflip", "hsv:h+8.0,s0.92,v1.05"]; `pad_modes`: one per image."""
    pad = pad_modes[0] if len(set(pad_modes)) == 1 else "/".join(pad_modes)
    suffix = f":{pad}" if pad else ""
    return [get_op(name).describe(params, suffix) for name, params in steps]


def plan_matrix(steps: Sequence[Step], size: tuple[int, int]) -> np.ndarray:
    """Forward map of the plan's geometric steps, composed in order."""
    m = np.eye(3)
    for name, params in steps:
        op = get_op(name)
        if op.geometric:
            m = op.matrix(params, size) @ m
    return m


def apply_plan(
    img: Image.Image,
    steps: Sequence[Step],
    padding: Padding,
    bands: Sequence[HueBand] = (),
    resample: str = "bilinear",
) -> Image.Image:
    """Apply a plan to a decoded image: its geometric steps as one resample, then the others."""
    unknown = [name for name, _ in steps if name not in op_names()]
    if unknown:
        raise ValueError(f"unknown augmentation op(s) {unknown}; known: {list(op_names())}")
    img = normalize_mode(img)
    ops = [(get_op(name), params) for name, params in steps]
    if any(op.geometric for op, _ in ops):
        img = warp(img, plan_matrix(steps, img.size), padding, resample)
    render = Render(padding, tuple(bands), resample)
    for op, params in ops:
        if not op.geometric:
            img = op.apply(img, params, render)
    return img


def plan_answer(steps: Sequence[Step], answer: Any) -> Any:
    """The answer of a copy made by `steps` from a parent whose answer is `answer`."""
    for name, params in steps:
        answer = get_op(name).map_answer(answer, params)
    return answer
