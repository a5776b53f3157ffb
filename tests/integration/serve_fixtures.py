"""Helpers for the Serve app tests: model bundles from the tiny checkpoint, images, ports."""

from __future__ import annotations

import base64
import io
import shutil
import socket
from pathlib import Path

from PIL import Image

from hazard.bundle import write_bundle
from hazard.tasks import get_task
from tests.bundle_fixtures import add_adapter, bundle_fields


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_bundle(
    tiny_model: Path, dest: Path, name: str, version: str, stage: str, fusion: dict | None = None
) -> Path:
    """A serving bundle written by `write_bundle`: the tiny checkpoint (real, untrained for the
    task), a small stand-in adapter and the metadata, with `fusion` for a specialist."""
    shutil.copytree(tiny_model, dest)
    add_adapter(dest)
    task = get_task("corridor_risk")
    fields = bundle_fields(stage, name=name, version=version, task=task.name, prompt=task.prompt)
    write_bundle(dest, **dict(fields, min_pixels=None, max_pixels=None, fusion=fusion))
    return dest


def fusion(theta: float, **correction: float) -> dict:
    """A fusion spec as the calibration job attaches it (`correction`: CorrectionParams fields,
    the defaults for the others)."""
    params = {"slope": 1.5, "intercept": 0.5, "k_min": 0.5, "k_max": 2.0, **correction}
    return {"correction": params, "theta": theta, "fitted_on": "test"}


def image_bytes(size: tuple[int, int] = (64, 48), color=(200, 30, 30), fmt: str = "PNG") -> bytes:
    """An encoded solid-colour image."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
