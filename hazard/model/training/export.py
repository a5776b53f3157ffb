"""The model bundle of a run, built from its best checkpoint.

The LoRA adapter is merged into the base in fp32 (small LoRA deltas round away when added in
bf16), the merged model is cast to the configured dtype and saved as a standard Qwen2.5-VL
(safetensors), and that saved model, as it will be served, is scored on the validation split:
the bundle's metrics are those of the model it holds. That scoring loads the saved folder with
`hazard.model.engines.Scorer`, as serving's transformers engine does, on the GPU the export task
reserved (`hazard.model.device`); the merge itself stays on CPU, in fp32.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hazard.config.train import TrainConfig
from hazard.model.training.checkpoint import ADAPTER_DIR, verify_checkpoint
from hazard.model.training.evaluate import eval_summary, evaluate_split


def merge_adapter(base_path: str, adapter_dir: Path, dtype: str):
    """Base + adapter merged in fp32, then cast to `dtype`."""
    import torch
    from peft import PeftModel

    from hazard.model.vlm import load_model

    merged = PeftModel.from_pretrained(load_model(base_path, "float32"), str(adapter_dir))
    return merged.merge_and_unload().to(getattr(torch, dtype))


def export_bundle(
    cfg: TrainConfig,
    model_uri: str,
    checkpoint_dir: Path,
    out_uri: str,
    data_lineage_id: str | None,
    run_summary: dict,
):
    """Write the bundle of `checkpoint_dir` to `out_uri`; returns its BundleMeta."""
    from hazard.core.tasks import MIXED, get_task
    from hazard.infra.bundle import write_bundle
    from hazard.model.engines import Scorer
    from hazard.model.training.setup import local_model_source
    from hazard.model.vlm import load_processor

    verify_checkpoint(checkpoint_dir, cfg.run_name)
    task = None if cfg.optim.task == MIXED else get_task(cfg.optim.task)  # None: each row's
    prompt, labels = (task.prompt, task.labels or ()) if task else ("", ())
    base_path = local_model_source(model_uri, cfg.storage)
    with tempfile.TemporaryDirectory(prefix="hazard-bundle-") as tmp:
        out = Path(tmp) / "model"
        merge_adapter(
            base_path, Path(checkpoint_dir) / ADAPTER_DIR, cfg.model.dtype
        ).save_pretrained(out, safe_serialization=True)
        processor = load_processor(base_path, cfg.model.max_pixels, cfg.model.min_pixels)
        processor.save_pretrained(out)
        shutil.copytree(Path(checkpoint_dir) / ADAPTER_DIR, out / ADAPTER_DIR)
        # scored as serving will score it (`hazard.model.engines.Scorer`: the bundle's pixel
        # limits; on the GPU the export task reserved, or on CPU with a log line)
        served = Scorer(
            out,
            prompt,
            labels,
            cfg.model.dtype,
            cfg.model.max_pixels,
            cfg.model.min_pixels,
        )
        report, probs, truth = evaluate_split(
            served.model,
            served.processor,
            f"{cfg.data_dir}/val",
            task,
            served.prompt,
            served.labels,
            cfg.optim.eval_batch_size,
            cfg.storage,
        )
        summary = eval_summary(run_summary["best_step"], report)
        metrics = {
            **run_summary,
            **{f"val_{k}": v for k, v in summary.items() if k not in ("step",)},
        }
        return write_bundle(
            out,
            name=cfg.model.name,
            version=cfg.version,
            stage=cfg.stage,
            task=cfg.optim.task,
            prompt=prompt,
            labels=list(labels),
            min_pixels=cfg.model.min_pixels,
            max_pixels=cfg.model.max_pixels,
            dtype=cfg.model.dtype,
            base_model=model_uri,
            data_lineage_id=data_lineage_id,
            config=cfg.model_dump(mode="json"),
            metrics=metrics,
            val_report=report,
            val_predictions=None if probs is None else {"probabilities": probs, "labels": truth},
            out_uri=out_uri,
            storage=cfg.storage,
        )
