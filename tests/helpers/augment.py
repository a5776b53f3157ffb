"""Rows as the augment stage receives them: a small synthetic scene, encoded, in a stage row."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from hazard.core.schema import content_hash
from pipelines.common import STAGE_SCHEMA


def scene(seed: int = 0, w: int = 96, h: int = 72) -> np.ndarray:
    """A grey wall with a shading gradient and noise, a red sign and yellow floor tape."""
    rng = np.random.default_rng(seed)
    wall = 120 + 60 * np.arange(w)[None, :] / w + rng.normal(0, 3, (h, w))
    arr = np.clip(np.rint(wall), 0, 255).astype(np.uint8)[..., None].repeat(3, -1)
    arr[15:35, 30:60] = (214, 34, 28)
    arr[55:60, :] = (250, 210, 30)
    return arr


def encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


def stage_row(rid: str, answer: str, split: str = "train", fmt: str = "PNG", **kw) -> dict:
    images = kw.pop("images", None) or [encode(scene(len(rid)), fmt)]
    row = {name: None for name in STAGE_SCHEMA.names}
    row.update(
        id=rid,
        images=images,
        task="corridor_risk",
        prompt="Grade the fire risk.",
        answer=answer,
        split=split,
        source_uri=f"file:///data/{rid}",
        content_hash=content_hash(images),
        aug_ops=[],
        _order=len(rid),
        _image_uris=[f"file:///data/{rid}"],
    )
    row.update(kw)
    return row
