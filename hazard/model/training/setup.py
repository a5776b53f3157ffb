"""Worker set-up: the model source on local disk, then the model and DeepSpeed engine built
from the pieces of `hazard.model.finetune` (LoRA, gradient checkpointing, the DeepSpeed config)."""

from __future__ import annotations

import hashlib

from hazard.config.storage import StorageConfig
from hazard.config.train import TrainConfig
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


def build_model(cfg: TrainConfig, model_path: str):
    """(PEFT model, processor): the model loaded, LoRA applied, checkpointing as configured."""
    from hazard.model.finetune import apply_lora
    from hazard.model.vlm import load_model, load_processor

    processor = load_processor(model_path, cfg.model.max_pixels, cfg.model.min_pixels)
    model = load_model(model_path, cfg.model.dtype)
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
