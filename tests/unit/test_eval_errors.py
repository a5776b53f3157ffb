"""Eval's bad input: config errors exit 2, an unusable model or split exits 1, each with a
message naming the problem; none of them starts Ray."""

from __future__ import annotations

import pytest

from hazard.config import ConfigError, load_config
from hazard.config.eval import EvalConfig
from hazard.core.tasks import get_task
from hazard.infra.bundle import write_bundle
from ray_jobs.eval import main
from tests.helpers.bundle import bundle_fields, checkpoint
from tests.helpers.eval_data import sample_row, write_split


def _args(model, data, out, *extra: str) -> list[str]:
    return ["--model", str(model), "--data", str(data), "--out", str(out), *extra]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--split", "tset"], "unknown split 'tset'"),
        (["--task", "corridor"], "unknown task 'corridor'"),
        (["--set", "engine=vllm", "--set", "gpus_per_actor=0"], "needs gpus_per_actor >= 1"),
        (
            ["--set", "engine=vllm", "--set", "gpus_per_actor=1", "--baseline", "b"],
            "score the baseline in its own run",
        ),
        (["--set", "batch_sise=2"], "batch_sise"),
    ],
)
def test_config_errors_exit_2(tmp_path, capsys, extra, message):
    assert main(_args(tmp_path / "m", tmp_path / "d", tmp_path / "o", *extra)) == 2
    assert message in capsys.readouterr().err


def test_flags_override_the_config(tmp_path):
    cfg = load_config(
        "configs/tiny/eval.yaml", EvalConfig, ["split=val", 'model="123"', "dataset=image2text"]
    )
    assert (cfg.split, cfg.model, cfg.dataset) == ("val", "123", "image2text")
    with pytest.raises(ConfigError, match="plain file name"):
        load_config(None, EvalConfig, ["model=m", "data=d", "out=o", "dataset=a/b"])


@pytest.fixture
def data(tmp_path):
    rows = [sample_row("r0", "no_risk"), sample_row("r1", None, seed=1)]
    return write_split(tmp_path / "data", "test", [rows])


def test_missing_data_or_split_exits_1(tmp_path, tiny_model_path, data, capsys):
    base = ["--task", "corridor_risk"]
    assert main(_args(tiny_model_path, tmp_path / "nope", tmp_path / "o", *base)) == 1
    assert f"data folder {tmp_path / 'nope'} not found" in capsys.readouterr().err
    assert main(_args(tiny_model_path, data, tmp_path / "o", *base, "--split", "val")) == 1
    assert "holds no val split" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written, no Ray started


def test_split_of_another_task_or_labels_exits_1(tmp_path, tiny_model_path, capsys):
    rows = [sample_row("r0", "high_risk", task="high_risk_binary")]
    data = write_split(tmp_path / "data", "test", [rows])
    assert main(_args(tiny_model_path, data, tmp_path / "o", "--task", "corridor_risk")) == 1
    assert "['high_risk_binary'] rows; the model is asked corridor_risk only" in (
        capsys.readouterr().err
    )
    write_split(data, "val", [[]])
    assert main(_args(tiny_model_path, data, tmp_path / "o", "--task", "high_risk_binary",
                      "--split", "val")) == 1  # fmt: skip
    assert "holds no rows" in capsys.readouterr().err


def test_bad_models_exit_1(tmp_path, tiny_model_path, data, capsys):
    assert main(_args(tmp_path / "none", data, tmp_path / "o")) == 1
    assert f"model {tmp_path / 'none'} not found" in capsys.readouterr().err
    assert main(_args(tmp_path, data, tmp_path / "o")) == 1
    assert "not a local base model (or bundle) folder (no config.json)" in capsys.readouterr().err
    spec = get_task("multiple_choice")
    fields = bundle_fields(task=spec.name, prompt=spec.prompt, labels=list("ABCD"))
    fields.pop("val_predictions")
    write_bundle(checkpoint(tmp_path / "mcq"), **fields)
    assert main(_args(tmp_path / "mcq", data, tmp_path / "o")) == 1  # corridor rows
    assert "holds ['corridor_risk'] rows; the model is asked multiple_choice only" in (
        capsys.readouterr().err
    )
    assert main(_args(tmp_path / "mcq", data, tmp_path / "o", "--task", "corridor_risk")) == 1
    assert "but bundle" in capsys.readouterr().err
    vllm = ["--set", "engine=vllm", "--set", "gpus_per_actor=1"]
    assert main(_args(tmp_path / "mcq", data, tmp_path / "o", *vllm)) == 1
    assert "multiple_choice is not one (use engine transformers)" in capsys.readouterr().err
    assert main(_args(tmp_path / "mcq", data, tmp_path / "o", "--adapter", str(tmp_path))) == 1
    assert "is a bundle (its adapter is merged in)" in capsys.readouterr().err


def test_bad_adapters_exit_1(tmp_path, tiny_model_path, data, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    args = _args(tiny_model_path, data, tmp_path / "o", "--adapter", str(adapter))
    assert main(args) == 1
    assert "not a local LoRA adapter folder (no adapter_config.json)" in capsys.readouterr().err
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.bin").write_bytes(b"pickle")  # never loaded
    assert main(args) == 1
    assert "no adapter_model.safetensors (weights load from safetensors)" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "o").exists()
