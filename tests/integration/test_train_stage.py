"""A training stage through real Ray Train: DeepSpeed ZeRO-2 + LoRA on 2 CPU workers.

Small sizes: a few steps on a small prepared folder. Checks the model bundle (a merged standard
Qwen2.5-VL that loads with from_pretrained, the adapter, metrics) and that re-running the same
run name resumes from the Ray Train checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hazard.bundle import read_bundle
from hazard.config import load_config
from hazard.config.data import DataConfig
from hazard.config.train import TrainConfig
from hazard.demo.synthetic import write_folder_dataset
from hazard.labels import RISK_LABELS
from hazard.vlm import label_probabilities, load_model, load_processor
from pipelines.prepare import prepare
from ray_jobs.train import run

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("train")
    write_folder_dataset(root / "raw", n_per_label=6, seed=1, corrupt=0)
    cfg = load_config(
        REPO / "configs/tiny/data.yaml",
        DataConfig,
        [f"source.uri={root / 'raw'}", f"output_dir={root / 'data'}", "augment.copies=1"],
    )
    prepare(cfg)
    return root


def _cfg(root, stage_file: str, steps: int, overrides=()) -> TrainConfig:
    return load_config(
        REPO / stage_file,
        TrainConfig,
        [
            f"data_dir={root / 'data'}",
            f"output_dir={root / stage_file.split('/')[-1][:-5]}",
            f"optim.max_steps={steps}",
            "optim.batch_size=4",
            "optim.log_every=2",
            *overrides,
        ],
    )


def test_stage1_trains_writes_a_standard_bundle_and_resumes(prepared, tiny_model_path):
    cfg = _cfg(prepared, "configs/tiny/stage1_base.yaml", steps=4)
    metrics = run(cfg)
    assert metrics["step"] == 4
    assert metrics["val_n"] == 5  # every validation row scored once across the 2 workers
    assert 0.0 <= metrics["val_macro_f1"] <= 1.0
    bundle = read_bundle(metrics["model_dir"])
    assert bundle["labels"] == list(RISK_LABELS) and bundle["stage"] == "base"
    model_dir = metrics["model_dir"]
    config = json.loads(Path(model_dir, "config.json").read_text())
    assert config["model_type"] == "qwen2_5_vl"
    assert (prepared / "stage1_base/model/adapter/adapter_model.safetensors").is_file()
    # The merged checkpoint is a plain Qwen2.5-VL: loads and scores without PEFT.
    from PIL import Image

    model, processor = load_model(model_dir), load_processor(model_dir)
    probs = label_probabilities(
        model, processor, [[Image.new("RGB", (112, 112))]], bundle["prompt"], RISK_LABELS
    )
    assert abs(probs.sum().item() - 1) < 1e-5
    # LoRA changed the weights: the merged model differs from the tiny base.
    base = load_model(tiny_model_path)
    name = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not base.state_dict()[name].equal(model.state_dict()[name])

    # Same run name, more steps: Ray Train V2 resumes from the step-4 checkpoint.
    resumed = run(_cfg(prepared, "configs/tiny/stage1_base.yaml", steps=6))
    assert resumed["step"] == 6
    assert resumed["resumed_from"] == 4


def test_specialist_uses_enrichment_and_weights(prepared):
    cfg = _cfg(prepared, "configs/tiny/stage2_specialist.yaml", 2, ["scaling.num_workers=1"])
    metrics = run(cfg)
    assert metrics["step"] == 2
    assert metrics["train_rows"]["high_risk"] == 3 * metrics["train_rows"]["no_risk"]
    assert metrics["loss_weights"]["high_risk"] == 2.0
