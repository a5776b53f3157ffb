"""The augmentation op registry: each op is one `AugmentOp` object, registered by name.

An op says, in one place, its name, its parameter model (the flat `augment.*` config keys it
owns), how it draws its random parameters, how it transforms the image (an affine matrix for
geometric ops, composed into one resample; `apply` for pixel ops) and what it does to the
label. `AugmentConfig` takes its allowed op names and its op parameter keys from here, and the
planner (`pipelines.augment_plan`) runs whatever is registered, so adding an op is one new object.

Draws. Every copy draws `n_draws()` uniforms from its seeded generator; each op reads its own
`draws` of them at offsets given by registration order (`draw_slots`), so an op registered
after the built-ins never moves their parameters (the same seed still gives the same copies).
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import numpy as np
from PIL import Image

from hazard.augment.geometry import Padding
from hazard.core.strict import StrictModel

Step = tuple[str, tuple[float, ...]]
"""One planned op: (name, parameters), e.g. ("rotate", (6.2,)) or ("crop", (0.91, fx, fy))."""


class NoParams(StrictModel):
    """The parameter model of an op that has no config keys."""


class PlanContext(NamedTuple):
    """What an op may know while it draws: the steps planned before it (name -> parameters, in
    plan order) and whether every enabled op is a chance op (then chance ops always apply)."""

    planned: dict[str, tuple[float, ...]]
    forced: bool


class Render(NamedTuple):
    """Settings of one rendering shared by the ops: the padding of what geometry uncovers, the
    hue bands colour ops leave untouched (`HueBand`s) and the resampling filter."""

    padding: Padding
    bands: tuple[Any, ...] = ()
    resample: str = "bilinear"


class AugmentOp:
    """One augmentation op. Subclass, set the class attributes, override `draw` (and `matrix`
    when `geometric`, else `apply`), then `register(MyOp())`.

    name: its name in `augment.ops` and the first word of its provenance string.
    order: its place in every plan (ops always run in ascending order; geometric ops compose
        into one resample applied before the pixel ops).
    draws: how many of the copy's seeded uniforms it reads.
    params: its parameter model (a StrictModel); its fields are flat keys of `augment`.
    chance: it applies with a probability; when every enabled op is a chance op they always
        apply (else a copy could equal its parent).
    geometric: it moves pixels (`matrix`) rather than changing their values (`apply`).
    """

    name: ClassVar[str]
    order: ClassVar[float]
    draws: ClassVar[int] = 0
    params: ClassVar[type[StrictModel]] = NoParams
    chance: ClassVar[bool] = False
    geometric: ClassVar[bool] = False

    def settings(self, cfg: Any) -> StrictModel:
        """This op's parameters from an (already validated) `AugmentConfig`."""
        return self.params.model_construct(**{k: getattr(cfg, k) for k in self.params.model_fields})

    def draw(self, u: np.ndarray, p: Any, ctx: PlanContext) -> tuple[float, ...] | None:
        """This copy's parameters from its `draws` uniforms `u` and settings `p`; None skips
        the op in this copy."""
        raise NotImplementedError

    def describe(self, params: tuple[float, ...], pad: str) -> str:
        """The provenance string (an `aug_ops` entry); `pad` is ':<padding mode>', for ops
        that may uncover a border."""
        return self.name

    def matrix(self, params: tuple[float, ...], size: tuple[int, int]) -> np.ndarray:
        """Geometric ops: forward map (3x3, input -> output coordinates) on a w x h canvas."""
        raise NotImplementedError(f"{self.name} is not geometric")

    def apply(self, img: Image.Image, params: tuple[float, ...], render: Render) -> Image.Image:
        """Pixel ops: the transformed image (L, RGB or RGBA in, same mode and size out)."""
        raise NotImplementedError(f"{self.name} is geometric: it has a matrix")

    def map_answer(self, answer: Any, params: tuple[float, ...]) -> Any:
        """The copy's answer from its parent's (most ops keep it)."""
        return answer


_OPS: dict[str, AugmentOp] = {}  # in registration order


def register(op: AugmentOp) -> AugmentOp:
    """Add `op` to the registry (ValueError on a name, order or parameter key clash)."""
    name = getattr(op, "name", "")
    if not name.isidentifier():
        raise ValueError(f"an op name must be an identifier, got {name!r}")
    if name in _OPS:
        raise ValueError(f"augmentation op {name!r} is already registered")
    if not (isinstance(op.params, type) and issubclass(op.params, StrictModel)):
        raise ValueError(f"{name}: params must be a StrictModel subclass, got {op.params!r}")
    for other in _OPS.values():
        if other.order == op.order:
            raise ValueError(f"{name}: order {op.order} is taken by {other.name!r}")
        shared = set(other.params.model_fields) & set(op.params.model_fields)
        if shared and other.params is not op.params:
            raise ValueError(f"{name}: parameter key(s) {sorted(shared)} belong to {other.name!r}")
    _OPS[name] = op
    return op


def unregister(name: str) -> None:
    """Remove a registered op (tests register their own and remove them after)."""
    del _OPS[name]


def get_op(name: str) -> AugmentOp:
    """The registered op `name` (ValueError listing the registered names otherwise)."""
    try:
        return _OPS[name]
    except KeyError:
        raise ValueError(
            f"unknown augmentation op {name!r}; registered: {list(op_names())}"
        ) from None


def ops_in_order() -> list[AugmentOp]:
    """The registered ops in plan order."""
    return sorted(_OPS.values(), key=lambda op: op.order)


def op_names() -> tuple[str, ...]:
    """The registered op names in plan order."""
    return tuple(op.name for op in ops_in_order())


def check_names(names: list[str]) -> list[str]:
    """`names` when each is a registered op, unrepeated (ValueError listing them otherwise)."""
    unknown = [n for n in names if n not in _OPS]
    if unknown:
        raise ValueError(f"unknown augmentation op(s) {unknown}; registered: {list(op_names())}")
    if len(set(names)) != len(names):
        raise ValueError(f"ops must not repeat: {names}")
    return names


def draw_slots() -> dict[str, slice]:
    """Each op's slice of a copy's uniforms, by registration order."""
    slots, start = {}, 0
    for name, op in _OPS.items():
        slots[name] = slice(start, start + op.draws)
        start += op.draws
    return slots


def n_draws() -> int:
    """Uniforms each copy draws (all registered ops' `draws`)."""
    return sum(op.draws for op in _OPS.values())


def param_models() -> list[type[StrictModel]]:
    """The distinct parameter models of the registered ops (ops may share one)."""
    return list({op.params: None for op in _OPS.values()})
