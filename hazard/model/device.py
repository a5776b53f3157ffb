"""Where a job scores a model: the one place that puts a loaded model on its device.

Every job that scores (the training export's merged model, calibration, the consistency
filter, batch scoring, the transformers serving engine) loads its model with
`load_scoring_model`, so the GPU a Ray task or actor reserved is the one it computes on
(Ray sets CUDA_VISIBLE_DEVICES to the reserved GPUs, so "cuda" is the task's own), in the
dtype its config names. Without CUDA it scores on CPU and says so in one log line.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

log = logging.getLogger("hazard.model.device")


def no_cuda_reason() -> str | None:
    """Why torch cannot use CUDA here, or None when it can."""
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return "torch is a CPU-only build"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return "CUDA_VISIBLE_DEVICES is empty (the task or actor reserved no GPU)"
    return "torch sees no CUDA device (no GPU or driver on this node)"


def scoring_device() -> torch.device:
    """`cuda` (the first visible GPU) when torch.cuda.is_available(), else `cpu`."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def place_model(model, dtype: str):
    """`model` (already loaded in `dtype`) in eval mode on `scoring_device()`.

    The dtype is set at load time (`hazard.model.vlm.load_model`), not cast here: `model.to(dtype)`
    would also cast the rotary `inv_freq` buffers that `from_pretrained` keeps in float32, and
    the scores would differ from the served model's. A model in another dtype is an error.

    On CPU the configured dtype is kept, bfloat16 included, not changed to float32: the dtype
    is part of what a score means (calibration records it, serving compares it with its own),
    so a CPU run of a bfloat16 config gives bfloat16 scores under a record that says so. Torch's
    CPU bfloat16 kernels are exact to bfloat16 and take half the memory, but are slower than
    float32 on CPUs without native bfloat16 (AVX512-BF16/AMX); the log line says so.
    """
    want = getattr(torch, dtype)
    have = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if have != {want}:
        raise ValueError(
            f"model parameters are {sorted(map(str, have))}, not {dtype}: load it in {dtype} "
            "(hazard.model.vlm.load_model) rather than casting after loading"
        )
    device = scoring_device()
    reason = no_cuda_reason() if device.type == "cpu" else None
    if reason:
        slow = " (kept as configured; slower than float32 without native CPU bf16)"
        log.warning(
            "no CUDA device (%s): scoring on CPU in %s%s",
            reason,
            dtype,
            slow if dtype == "bfloat16" else "",
        )
    else:
        log.info("scoring on %s (%s) in %s", device, torch.cuda.get_device_name(device), dtype)
    return model.to(device).eval()


def load_scoring_model(path: str | Path, dtype: str):
    """The Qwen2.5-VL checkpoint at `path`, loaded in `dtype` and placed by `place_model`."""
    from hazard.model.vlm import load_model

    return place_model(load_model(path, dtype), dtype)
