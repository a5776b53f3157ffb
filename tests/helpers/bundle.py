"""Model bundle pieces for tests: a small real checkpoint folder and valid metadata fields."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from hazard.core.labels import RISK_LABELS


def add_adapter(folder: Path, seed: int = 0) -> Path:
    """A small PEFT-style adapter (real safetensors) under `folder`/adapter."""
    rng = np.random.default_rng(seed)
    (folder / "adapter").mkdir(parents=True, exist_ok=True)
    save_file(
        {"lora_A": rng.standard_normal((2, 4)).astype(np.float32)},
        folder / "adapter" / "adapter_model.safetensors",
    )
    (folder / "adapter" / "adapter_config.json").write_text(json.dumps({"r": 2}))
    return folder


def checkpoint(folder: Path, seed: int = 0) -> Path:
    """A small checkpoint folder: real safetensors weights, config and processor JSON, adapter."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    save_file({"w": rng.standard_normal((8, 4)).astype(np.float32)}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    (folder / "preprocessor_config.json").write_text(json.dumps({"max_pixels": 12544}))
    return add_adapter(folder, seed)


def bundle_fields(stage: str = "base", **overrides) -> dict:
    """Valid `write_bundle` fields (everything but the computed manifest and adapter digest)."""
    return {
        "name": f"hazard-{stage}",
        "version": "1.2.3",
        "stage": stage,
        "task": "corridor_risk",
        "prompt": "Grade the corridor.",
        "labels": list(RISK_LABELS),
        "min_pixels": 3136,
        "max_pixels": 12544,
        "dtype": "float32",
        "base_model": "Qwen/Qwen2.5-VL-3B-Instruct",
        "data_lineage_id": "lin-42",
        "config": {"stage": stage, "optim": {"lr": 0.001}},
        "metrics": {"val_macro_f1": 0.5, "step": 7},
        "val_report": {"accuracy": 0.6, "n": 2},
        "val_predictions": {
            "probabilities": [[0.1, 0.2, 0.3, 0.3, 0.1], [0.5, 0.1, 0.1, 0.2, 0.1]],
            "labels": ["medium_risk", "no_risk"],
        },
        **overrides,
    }
