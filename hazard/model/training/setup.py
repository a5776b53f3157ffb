"""Worker set-up: the model source on local disk, then the model and DeepSpeed engine built
from the pieces of `hazard.model.finetune` (LoRA, gradient checkpointing, the DeepSpeed config),
over a 4-bit base for QLoRA (`lora.quantize`)."""

from __future__ import annotations

import hashlib
import os

from hazard.config.storage import StorageConfig
from hazard.config.train import LoraSpec, TrainConfig
from hazard.infra.storage import cache_root, download_dir, parse_uri


def local_model_source(uri: str, storage: StorageConfig | None = None) -> str:
    """A checkpoint `from_pretrained` can read: `s3://` sources are fetched into the cache
    (`models/<hash of the URI>`), local folders and hub ids are returned as given.

    A bundle (a folder with hazard_model.json) is opened through `hazard.infra.bundle`, verified
    against its manifest; a bare checkpoint on S3 has no manifest, so it is fetched whole."""
    scheme, _ = parse_uri(uri)
    if scheme != "s3":
        return uri
    from hazard.infra.bundle import BUNDLE_FILE, open_bundle
    from hazard.infra.storage import exists, join_uri

    if exists(join_uri(uri, BUNDLE_FILE), storage):
        return str(open_bundle(uri, storage=storage).path)
    dest = cache_root() / "models" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    return str(download_dir(uri, dest, config=storage))


def quantization_config(spec: LoraSpec):
    """The `BitsAndBytesConfig` of `spec.quantize` ('4bit': NF4, double quantization, bf16
    compute), or None without quantization. Builds without bitsandbytes installed."""
    if spec.quantize is None:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def load_quantized_model(model_path: str, spec: LoraSpec):
    """The checkpoint loaded in 4 bits on this worker's GPU (LOCAL_RANK, the device DeepSpeed
    picks), prepared for k-bit training (base frozen, the unquantized rest in fp32).

    ImportError naming the `gpu` extra when bitsandbytes is missing; RuntimeError without CUDA."""
    import torch

    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"lora.quantize={spec.quantize!r} needs bitsandbytes, which is in the project's "
            "`gpu` extra: pip install 'hazard-cascade[gpu]'"
        ) from exc
    if not torch.cuda.is_available():
        raise RuntimeError(f"lora.quantize={spec.quantize!r} needs a CUDA GPU; torch sees none")
    from peft import prepare_model_for_kbit_training
    from transformers import Qwen2_5_VLForConditionalGeneration

    device = int(os.environ.get("LOCAL_RANK", "0"))
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        model_path,
        dtype=torch.bfloat16,
        use_safetensors=True,
        quantization_config=quantization_config(spec),
        device_map={"": device},
    )
    # checkpointing is apply_lora's to turn on, after the wrap
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def build_model(cfg: TrainConfig, model_path: str):
    """(PEFT model, processor): the model loaded (in 4 bits for QLoRA), LoRA applied,
    checkpointing as configured."""
    from hazard.model.finetune import apply_lora
    from hazard.model.vlm import load_model, load_processor

    processor = load_processor(model_path, cfg.model.max_pixels, cfg.model.min_pixels)
    if cfg.lora.quantize is None:
        model = load_model(model_path, cfg.model.dtype)
    else:
        model = load_quantized_model(model_path, cfg.lora)
    model.config.use_cache = False
    model = apply_lora(
        model,
        cfg.lora,
        seed=cfg.optim.seed,
        gradient_checkpointing=cfg.model.gradient_checkpointing,
    )
    return model, processor


def build_engine(cfg: TrainConfig, model_path: str):
    """(DeepSpeed engine, processor, trainable parameter count) for one worker."""
    import deepspeed

    from hazard.model.finetune import deepspeed_config, lr_scheduler

    model, processor = build_model(cfg, model_path)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)  # before ZeRO-3 partitions them
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=trainable,
        config=deepspeed_config(cfg.optim, cfg.deepspeed),
        lr_scheduler=lr_scheduler(cfg.optim),
    )
    return engine, processor, n_trainable
