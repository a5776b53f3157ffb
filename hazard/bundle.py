"""The model bundle a training stage writes and serving/calibration read.

<output_dir>/model/
    config.json, model.safetensors, processor files   merged standard Qwen2.5-VL
    adapter/                                          the LoRA adapter (PEFT, safetensors)
    hazard_model.json                                 name, version, task, prompt, labels,
                                                      validation metrics
"""

from __future__ import annotations

import json
from pathlib import Path

BUNDLE_FILE = "hazard_model.json"


def read_bundle(model_uri: str | Path) -> dict:
    """The bundle's metadata; FileNotFoundError saying what to point at when it is missing."""
    meta = Path(model_uri) / BUNDLE_FILE
    if not meta.is_file():
        raise FileNotFoundError(
            f"{model_uri} is not a hazard-cascade model bundle (no {BUNDLE_FILE}); "
            "point model_uri at <stage output_dir>/model"
        )
    return json.loads(meta.read_text())
