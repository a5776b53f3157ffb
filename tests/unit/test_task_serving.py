"""Serving and batch scoring one task's bundle: the configs' modes, the bundle checks and
`hazard serve --task-config`, without Ray."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from hazard.config.score import ScoreDatasetConfig
from hazard.config.serve import TaskServeConfig
from hazard.infra.bundle import BundleError, read_meta, write_bundle
from hazard.model.bundle_answerer import closed_task, turns_json
from serve.command import main as serve_main
from serve.command import task_preflight
from tests.helpers.bundle import bundle_fields, checkpoint


def _bundle(tmp_path, task: str, labels: list[str]):
    folder = checkpoint(tmp_path / task)
    fields = bundle_fields(task=task, labels=labels, val_predictions=None)
    write_bundle(folder, **fields)
    return folder


def test_score_config_takes_exactly_one_mode():
    common = dict(source="s", output_dir="o")
    assert ScoreDatasetConfig(**common, model_uri="m").task_mode
    assert not ScoreDatasetConfig(**common, base_uri="b", specialist_uri="s").task_mode
    for bad in ({"model_uri": "m", "base_uri": "b"}, {"base_uri": "b"}, {}):
        with pytest.raises(ValidationError, match="model_uri"):
            ScoreDatasetConfig(**common, **bad)
    with pytest.raises(ValidationError, match="gpus_per_actor"):
        ScoreDatasetConfig(**common, model_uri="m", engine="vllm")


def test_a_generated_task_bundle_is_refused_and_a_closed_one_taken(tmp_path):
    score = _bundle(tmp_path, "score", [])
    with pytest.raises(BundleError, match="closed answer set"):
        closed_task(read_meta(score), str(score))
    mcq = _bundle(tmp_path, "multiple_choice", list("ABCD"))
    assert closed_task(read_meta(mcq), str(mcq)).name == "multiple_choice"


def test_task_preflight_names_each_problem(tmp_path):
    score = _bundle(tmp_path, "score", [])
    cfg = TaskServeConfig(model={"name": "n", "version": "1", "model_uri": str(score)})
    problems = task_preflight(cfg, {})
    assert any("HAZARD_API_KEY" in p for p in problems)
    assert any("closed answer set" in p for p in problems)
    mcq = _bundle(tmp_path, "multiple_choice", list("ABCD"))
    vllm = TaskServeConfig(
        model={"name": "n", "version": "1", "model_uri": str(mcq)}, engine="vllm"
    )
    assert task_preflight(vllm, {"HAZARD_API_KEY": "k"}) == [
        "engine vllm scores fixed-prompt tasks; task multiple_choice asks each request its own "
        "prompt: use engine transformers"
    ]


def test_hazard_serve_task_config_prints_the_task_app(tmp_path, capsys):
    assert serve_main(["--task-config", "configs/tiny/serve_task.yaml", "--print"]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    (app,) = doc["applications"]
    assert app["import_path"] == "serve.task_app:build_task_app"
    assert app["args"]["model"]["model_uri"] == "runs/mcq/train/model"
    for argv in ([], ["--config", "a.yaml", "--task-config", "b.yaml"]):
        with pytest.raises(SystemExit) as exc:
            serve_main(argv)
        assert exc.value.code == 2


def test_request_turns_carry_system_then_prompt():
    assert turns_json("<image> Q?", "S") == (
        '[{"role": "system", "content": "S"}, {"role": "user", "content": "<image> Q?"}]'
    )
    assert turns_json("<image> Q?") == '[{"role": "user", "content": "<image> Q?"}]'
