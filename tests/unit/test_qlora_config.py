"""4-bit QLoRA as a train-config option (`lora.quantize`): what the config accepts and refuses
on a CPU machine, the BitsAndBytesConfig it builds, and the error when bitsandbytes is missing.

Training over a 4-bit base runs on CUDA only: tests/integration/test_qlora_gpu.py (`gpu`).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from hazard.config import ConfigError, load_config
from hazard.config.train import LoraSpec, TrainConfig
from hazard.model.training.setup import build_model, quantization_config
from tests.helpers.train import REPO

RECIPE = REPO / "configs/mcq_7b.yaml"  # bf16, GPU workers, ZeRO-2: QLoRA's requirements met
QLORA = ["lora.quantize=4bit"]


def test_a_gpu_bf16_zero2_recipe_takes_4bit():
    cfg = load_config(RECIPE, TrainConfig, QLORA)
    assert cfg.lora.quantize == "4bit"
    assert load_config(RECIPE, TrainConfig).lora.quantize is None  # off unless asked


@pytest.mark.parametrize(
    ("overrides", "needs"),
    [
        (["scaling.use_gpu=false"], "scaling.use_gpu true"),
        (["model.dtype=float32"], "model.dtype bfloat16"),
        (["deepspeed.bf16=false"], "deepspeed.bf16 true"),
        (["deepspeed.zero_stage=3"], "ZeRO-3 does not shard 4-bit weights"),
        (["deepspeed.zero_stage=3", "deepspeed.offload_params=true"], "zero_stage 0-2"),
    ],
)
def test_4bit_refuses_what_it_cannot_run_on(overrides, needs):
    with pytest.raises(ConfigError, match="lora.quantize '4bit' needs") as err:
        load_config(RECIPE, TrainConfig, [*QLORA, *overrides])
    assert needs in str(err.value)


def test_every_missing_requirement_is_named_at_once():
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "configs/tiny/stage1_base.yaml", TrainConfig, QLORA)
    text = str(err.value)
    assert "scaling.use_gpu true" in text and "model.dtype bfloat16" in text


def test_unknown_quantization_is_a_config_error():
    with pytest.raises(ConfigError, match="quantize"):
        load_config(RECIPE, TrainConfig, ["lora.quantize=8bit"])


def test_bitsandbytes_config_is_nf4_double_quant_bf16_compute():
    bnb = quantization_config(LoraSpec(quantize="4bit"))
    assert (bnb.load_in_4bit, bnb.load_in_8bit) == (True, False)
    assert bnb.bnb_4bit_quant_type == "nf4"
    assert bnb.bnb_4bit_use_double_quant is True
    assert bnb.bnb_4bit_compute_dtype == torch.bfloat16
    assert bnb.quantization_method() == "nf4"
    assert quantization_config(LoraSpec()) is None


@pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed"
)
def test_without_bitsandbytes_build_model_names_the_gpu_extra(tiny_model_path):
    cfg = load_config(RECIPE, TrainConfig, QLORA)
    with pytest.raises(ImportError, match=r"bitsandbytes.*`gpu` extra"):
        build_model(cfg, str(tiny_model_path))
