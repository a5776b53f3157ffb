"""Every YAML in configs/ loads into its model.

The chart's values: tests/integration/test_chart_values.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hazard.config import ConfigError, load_config
from hazard.config.calibrate import CalibrateConfig
from hazard.config.data import DataConfig
from hazard.config.eval import EvalConfig
from hazard.config.score import ScoreDatasetConfig
from hazard.config.serve import ServeConfig, TaskServeConfig
from hazard.config.train import TrainConfig

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
TASK_TRAIN_CONFIGS = {
    "tiny/mcq.yaml",
    "tiny/multi_label.yaml",
    "tiny/safety_score.yaml",
    "tiny/counting.yaml",
    "tiny/grounding.yaml",
    "tiny/report.yaml",
    "mcq_7b.yaml",
    "flare_7b.yaml",
}
"""Train configs of the task shapes beyond the cascade (docs/tasks.md, "Configs")."""


def _model_for(path: Path):
    name = path.stem
    if "data" in name:
        return DataConfig
    if name.startswith("stage") or path.relative_to(REPO / "configs").as_posix() in (
        TASK_TRAIN_CONFIGS
    ):
        return TrainConfig
    if name.startswith("calibrate"):
        return CalibrateConfig
    if name.startswith("score"):
        return ScoreDatasetConfig
    if name.startswith("serve_task"):
        return TaskServeConfig
    if name.startswith("serve"):
        return ServeConfig
    if name.startswith("eval"):
        return EvalConfig
    raise AssertionError(f"no config model known for {path}; add it to _model_for")


def test_there_are_configs_for_every_job_and_size():
    names = {p.relative_to(REPO / "configs").as_posix() for p in CONFIGS}
    assert {
        "stage1_base_7b.yaml",
        "stage2_specialist_3b.yaml",
        "tiny/stage1_base.yaml",
        "tiny/stage2_specialist.yaml",
        "tiny/data.yaml",
        "tiny/serve.yaml",
        "tiny/score.yaml",
        "score.yaml",
        "tiny/mcq_data.yaml",
        *TASK_TRAIN_CONFIGS,
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_config_loads_and_says_how_to_launch(path: Path):
    load_config(path, _model_for(path))
    header = path.read_text().split("\n\n")[0]
    assert header.startswith("#") and ("--set" in header), (
        f"{path}: header must show launch+override"
    )


def test_stage_configs_match_their_stage():
    for path in CONFIGS:
        if path.stem.startswith("stage"):
            cfg = load_config(path, TrainConfig)
            assert cfg.stage == ("base" if "stage1" in path.stem else "specialist")
            if cfg.stage == "specialist":
                assert cfg.lora.vision_attention and cfg.lora.vision_merger
                assert cfg.optim.high_risk_oversample > 1 and cfg.optim.class_weights


def test_overrides_apply_and_typos_fail():
    path = REPO / "configs/tiny/stage1_base.yaml"
    cfg = load_config(path, TrainConfig, ["optim.max_steps=7", "scaling.num_workers=1"])
    assert cfg.optim.max_steps == 7 and cfg.scaling.num_workers == 1
    with pytest.raises(ConfigError, match="max_stepz"):
        load_config(path, TrainConfig, ["optim.max_stepz=7"])
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(path, TrainConfig, ["optim.max_steps"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(REPO / "configs/nope.yaml", TrainConfig)


def test_tiny_configs_chain_into_each_other_and_match_the_demo():
    """Each tiny job reads what the one before it writes, and serve.yaml serves what the demo
    trains: `make demo` then `hazard serve --config configs/tiny/serve.yaml` must just work."""
    from hazard.demo.run import DEFAULT_OUT, layout

    tiny = REPO / "configs" / "tiny"
    data = load_config(tiny / "data.yaml", DataConfig)
    s1 = load_config(tiny / "stage1_base.yaml", TrainConfig)
    s2 = load_config(tiny / "stage2_specialist.yaml", TrainConfig)
    cal = load_config(tiny / "calibrate.yaml", CalibrateConfig)
    serve = load_config(tiny / "serve.yaml", ServeConfig)
    score = load_config(tiny / "score.yaml", ScoreDatasetConfig)

    assert s1.data_dir == s2.data_dir == cal.data_dir == data.output_dir
    assert cal.base_uri == serve.base.model_uri == f"{s1.output_dir}/model"
    assert cal.specialist_uri == serve.specialist.model_uri == f"{s2.output_dir}/model"
    assert (score.base_uri, score.specialist_uri) == (cal.base_uri, cal.specialist_uri)

    demo = {k: v.as_posix() for k, v in layout(DEFAULT_OUT).items()}
    assert data.source.uri == demo["raw"]
    assert data.output_dir == demo["data"]
    assert s1.output_dir == demo["stage1"]
    assert s2.output_dir == demo["stage2"]
    assert cal.output_dir == demo["calibration"]


def test_mcq_configs_chain_from_a_mac_folder():
    """configs/tiny/mcq.yaml trains on what configs/tiny/mcq_data.yaml writes: MAC's alpaca
    entries, one per split, the test split unlabelled, the row's own prompt, loss on the
    answer letter, the bundle picked by accuracy; the 7B recipe trains the same task."""
    tiny = REPO / "configs" / "tiny"
    data = load_config(tiny / "mcq_data.yaml", DataConfig)
    train = load_config(tiny / "mcq.yaml", TrainConfig)
    recipe = load_config(REPO / "configs" / "mcq_7b.yaml", TrainConfig)
    assert data.source.format == "llamafactory" and data.source.unlabelled_splits == ["test"]
    assert set(data.source.splits) == {"train", "val", "test"}
    assert data.task == train.optim.task == recipe.optim.task == "multiple_choice"
    assert train.data_dir == data.output_dir and train.model.path == "tiny"
    assert train.optim.loss_turns == recipe.optim.loss_turns == "last"
    assert train.eval.metric == recipe.eval.metric == "accuracy"
    assert recipe.optim.grad_accum_steps > 1 and recipe.checkpoint.keep > 1


SHAPES = {
    "multi_label": "multi_label",
    "safety_score": "score",
    "counting": "counting",
    "grounding": "grounding",
    "report": "report",
}


@pytest.mark.parametrize(("name", "task"), sorted(SHAPES.items()))
def test_each_task_shape_has_a_tiny_train_config(name, task):
    """configs/tiny/<shape>.yaml trains its task on the tiny model from runs/<shape>/data and
    picks the checkpoint by the task's own headline figure (eval.metric score)."""
    cfg = load_config(REPO / "configs" / "tiny" / f"{name}.yaml", TrainConfig)
    assert cfg.optim.task == task and cfg.model.path == "tiny"
    assert (cfg.data_dir, cfg.output_dir) == (f"runs/{name}/data", f"runs/{name}/train")
    assert cfg.eval.metric == "score" and cfg.lora.quantize is None


def test_flare_recipe_follows_the_flare_baseline():
    """configs/flare_7b.yaml: LoRA r16 over a 4-bit base, cosine with warm-up, early stop
    after 5 evaluations without a gain, gradient checkpointing, bf16 (FLARE 2025's config)."""
    cfg = load_config(REPO / "configs" / "flare_7b.yaml", TrainConfig)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (16, 32, 0.1)
    assert cfg.lora.quantize == "4bit" and cfg.model.gradient_checkpointing
    assert cfg.optim.schedule == "cosine" and cfg.optim.warmup_steps == cfg.optim.max_steps // 10
    assert (cfg.eval.patience, cfg.eval.min_delta) == (5, 0.001)
    assert cfg.deepspeed.bf16 and cfg.deepspeed.gradient_clipping == 0.5
    assert cfg.model.max_pixels == 448 * 448


def test_strictness_is_spelled_once_in_the_product():
    """Every config and metadata model forbids unknown keys through `StrictModel`; an inline
    `extra="forbid"` elsewhere is a second spelling that can drift (say, lose `forbid`)."""
    rooms = ("hazard", "pipelines", "ray_jobs", "serve")
    inline = [
        f"{path.relative_to(REPO)}:{n}"
        for room in rooms
        for path in sorted((REPO / room).rglob("*.py"))
        if path != REPO / "hazard" / "core" / "strict.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "extra=" in line and "ConfigDict" in line
    ]
    assert inline == []
    assert CalibrateConfig.model_config["extra"] == "forbid"
    assert DataConfig.model_config["extra"] == "forbid"
