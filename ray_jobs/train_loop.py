"""The Ray Train worker loop both stages share: DeepSpeed + PEFT LoRA on Qwen2.5-VL.

Each worker loads the checkpoint, adds LoRA adapters, wraps it in a DeepSpeed engine (ZeRO-2,
gloo on CPU, NCCL on GPU) and steps through its shard of the training data. At the end every
rank saves its DeepSpeed state (a collective), the shards of the validation set are scored and
gathered, and rank 0 writes the model bundle: the merged checkpoint (a standard Qwen2.5-VL in
safetensors), the LoRA adapter and `hazard_model.json` with the validation metrics.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hazard.bundle import BUNDLE_FILE
from hazard.config.train import TrainConfig
from hazard.finetune import apply_lora, deepspeed_config, weighted_answer_loss
from hazard.metrics import classification_report
from hazard.tasks import get_task
from hazard.vlm import SequenceTooLong, collate, encode, open_stored_image, score_split

DS_TAG = "deepspeed"
STATE_FILE = "train_state.json"


def _encode_batch(processor, batch: dict, prompt: str, max_length: int):
    """Encode a Ray Data numpy batch; returns the encoded samples and their answers.

    A sample over max_length is skipped with a message (never truncated); a batch left empty
    is an error, since every worker must step together.
    """
    encoded, answers, skipped = [], [], []
    for images, answer in zip(batch["images"], batch["answer"], strict=True):
        pics = [open_stored_image(bytes(b)) for b in images]
        try:
            encoded.append(encode(processor, pics, prompt, str(answer), max_length))
        except SequenceTooLong as exc:
            print(f"[train] skipping sample: {exc}", flush=True)
            skipped.append(str(exc))
            continue
        answers.append(str(answer))
    if not encoded:
        raise SequenceTooLong(f"every sample of a batch is too long, e.g. {skipped[0]}")
    return encoded, answers


def train_loop(loop_config: dict) -> None:
    """Ray Train entry: `loop_config` holds the TrainConfig dict, the checkpoint path and
    the per-label loss weights computed by the driver."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported
    import deepspeed
    import ray.train
    import torch.distributed as dist

    from hazard.vlm import load_model, load_processor

    cfg = TrainConfig.model_validate(loop_config["config"])
    weights: dict[str, float] = loop_config["class_weights"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    task = get_task(cfg.optim.task)
    torch.manual_seed(cfg.optim.seed + rank)

    processor = load_processor(loop_config["model_path"], cfg.model.max_pixels)
    model = apply_lora(
        load_model(loop_config["model_path"], cfg.model.dtype), cfg.lora, seed=cfg.optim.seed
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=trainable,
        config=deepspeed_config(cfg.optim, cfg.deepspeed),
    )

    step = resumed_from = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # Ray Train V2 resumes a run with the same name from its latest checkpoint
        with checkpoint.as_directory() as d:
            engine.load_checkpoint(d, tag=DS_TAG)
            step = resumed_from = json.loads((Path(d) / STATE_FILE).read_text())["step"]
        if rank == 0:
            print(f"[train] resumed at step {step}")

    shard = ray.train.get_dataset_shard("train")
    pad_id, image_id = processor.tokenizer.pad_token_id, processor.image_token_id
    losses: list[float] = []
    start = time.time()
    engine.train()
    epoch = 0
    while step < cfg.optim.max_steps:
        for batch in shard.iter_batches(
            batch_size=cfg.optim.batch_size,
            batch_format="numpy",
            drop_last=True,
            local_shuffle_buffer_size=4 * cfg.optim.batch_size,
            local_shuffle_seed=cfg.optim.seed + epoch * 1000 + rank,
        ):
            encoded, answers = _encode_batch(processor, batch, task.prompt, cfg.optim.max_length)
            inputs = {k: v.to(engine.device) for k, v in collate(encoded, pad_id, image_id).items()}
            labels = inputs.pop("labels")
            sample_w = torch.tensor([weights.get(a, 1.0) for a in answers], device=engine.device)
            logits = engine(**inputs).logits
            loss = weighted_answer_loss(logits, labels, sample_w)
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
            step += 1
            if rank == 0 and (step % cfg.optim.log_every == 0 or step == cfg.optim.max_steps):
                print(
                    f"[train] {cfg.stage} step {step}/{cfg.optim.max_steps} "
                    f"loss {np.mean(losses[-cfg.optim.log_every :]):.4f} "
                    f"lr {engine.get_lr()[0]:.2e} ({time.time() - start:.0f}s)",
                    flush=True,
                )
            if step >= cfg.optim.max_steps:
                break
        epoch += 1
    train_seconds = time.time() - start

    # Validation: every rank scores its shard; rank 0 gathers and computes the metrics.
    engine.eval()
    # Read directly, not through a Ray Train dataset shard (which drops rows to equalise
    # shards): every validation row is scored exactly once across the workers.
    probs, truth = score_split(
        engine.module,
        processor,
        f"{cfg.data_dir}/val",
        task.prompt,
        task.labels,
        cfg.optim.eval_batch_size,
        rank=rank,
        world=world,
    )
    gathered: list = [None] * world
    dist.all_gather_object(gathered, (probs, truth))
    probs = [p for part in gathered for p in part[0]]
    truth = [t for part in gathered for t in part[1]]
    preds = [task.labels[int(np.argmax(p))] for p in probs]
    report = classification_report(truth, preds, labels=task.labels)
    metrics = {
        "step": step,
        "resumed_from": resumed_from,
        "train_loss_first": float(np.mean(losses[: cfg.optim.log_every])) if losses else None,
        "train_loss_last": float(np.mean(losses[-cfg.optim.log_every :])) if losses else None,
        "train_seconds": round(train_seconds, 1),
        "trainable_parameters": n_trainable,
        "val_macro_f1": report["macro_f1"],
        "val_accuracy": report["accuracy"],
        "val_high_risk_recall": report.get("high_risk_recall"),
        "val_n": report["n"],
    }

    with tempfile.TemporaryDirectory() as tmp:
        engine.save_checkpoint(tmp, tag=DS_TAG)  # collective: every rank writes its part
        if rank == 0:
            (Path(tmp) / STATE_FILE).write_text(json.dumps({"step": step}))
            _write_bundle(cfg, engine.module, processor, loop_config, metrics, report, probs, truth)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _write_bundle(cfg, peft_model, processor, loop_config, metrics, report, probs, truth):
    """Rank 0: adapter + merged standard checkpoint + metadata into output_dir/model."""
    out = Path(cfg.output_dir) / "model"
    tmp = out.with_name("model.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(tmp / "adapter", safe_serialization=True)
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    task = get_task(cfg.optim.task)
    meta = {
        "name": cfg.model.name,
        "version": cfg.version,
        "stage": cfg.stage,
        "task": task.name,
        "prompt": task.prompt,
        "labels": list(task.labels),
        "base_checkpoint": str(loop_config["model_path"]),
        "metrics": metrics,
        "val_report": report,
        "val_predictions": {"probabilities": probs, "labels": truth},
        "config": cfg.model_dump(),
    }
    (tmp / BUNDLE_FILE).write_text(json.dumps(meta, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    print(f"[train] wrote model bundle {out}", flush=True)
