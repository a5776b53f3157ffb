"""Helpers for the Serve app tests: model bundles from the tiny checkpoint, images, ports."""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
from pathlib import Path

from PIL import Image

from hazard.bundle import BUNDLE_FILE
from hazard.labels import RISK_LABELS
from hazard.tasks import get_task


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_bundle(tiny_model: Path, dest: Path, name: str, version: str, stage: str) -> Path:
    """A serving bundle: the tiny checkpoint (real, untrained for the task) + hazard_model.json."""
    shutil.copytree(tiny_model, dest)
    meta = {
        "name": name,
        "version": version,
        "stage": stage,
        "task": "corridor_risk",
        "prompt": get_task("corridor_risk").prompt,
        "labels": list(RISK_LABELS),
    }
    (dest / BUNDLE_FILE).write_text(json.dumps(meta, indent=2))
    return dest


def write_fusion(path: Path, theta: float) -> Path:
    """A fusion.json with the default correction and escalation threshold `theta`."""
    path.write_text(json.dumps({"correction": {"slope": 1.5, "intercept": 0.5}, "theta": theta}))
    return path


def image_bytes(size: tuple[int, int] = (64, 48), color=(200, 30, 30), fmt: str = "PNG") -> bytes:
    """An encoded solid-colour image."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
