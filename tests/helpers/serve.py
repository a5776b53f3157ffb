"""Helpers for the Serve app tests: model bundles from the tiny checkpoint, images, ports."""

from __future__ import annotations

import base64
import contextlib
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import ray
from PIL import Image
from ray import serve

from hazard.core.tasks import get_task
from hazard.demo.local_ray import free_port
from hazard.infra.bundle import write_bundle
from tests.helpers.bundle import add_adapter, bundle_fields


def make_bundle(
    tiny_model: Path,
    dest: Path,
    name: str,
    version: str,
    stage: str,
    fusion: dict | None = None,
    max_pixels: int | None = None,
    perturb_seed: int | None = None,
    task: str = "corridor_risk",
) -> Path:
    """A serving bundle written by `write_bundle`: the tiny checkpoint (real, untrained for the
    task), a small stand-in adapter and the metadata of `task` (its prompt and closed answer
    set, [] for an open one), with `fusion` for a specialist."""
    shutil.copytree(tiny_model, dest)
    if perturb_seed is not None:
        perturb_weights(dest / "model.safetensors", perturb_seed)
    add_adapter(dest)
    spec = get_task(task)
    fields = bundle_fields(stage, name=name, version=version, task=spec.name, prompt=spec.prompt)
    if task != "corridor_risk":  # the stand-in validation predictions are five-label ones
        fields.update(labels=list(spec.labels or ()), val_predictions=None)
    write_bundle(dest, **dict(fields, min_pixels=None, max_pixels=max_pixels, fusion=fusion))
    return dest


def perturb_weights(path: Path, seed: int, scale: float = 0.5) -> None:
    """Add seeded noise (`scale` x each tensor's std) to every floating weight: a model that
    answers differently from the one it was copied from."""
    import torch
    from safetensors.torch import load_file, save_file

    gen = torch.Generator().manual_seed(seed)
    tensors = load_file(path)
    for name, t in tensors.items():
        if t.is_floating_point() and t.numel() > 1:
            noise = torch.randn(t.shape, generator=gen, dtype=torch.float32)
            tensors[name] = (t.float() + scale * t.float().std() * noise).to(t.dtype)
    save_file(tensors, path, metadata={"format": "pt"})


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


@contextlib.contextmanager
def serve_cluster(env: dict[str, str], metrics_port: int | None = None) -> Iterator[str]:
    """A local Ray (2 CPUs) with Serve on a free loopback port; yields the root URL.

    `env` reaches every replica through the job's runtime_env (serve.run gives the driver's to
    each deployment that has none of its own); `metrics_port` is where Ray's metrics agent
    exports the app's metrics."""
    extra = {} if metrics_port is None else {"_metrics_export_port": metrics_port}
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": env},
        **extra,
    )
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
