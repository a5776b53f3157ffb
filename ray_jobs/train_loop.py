"""The Ray Train worker loop both stages share: DeepSpeed + PEFT LoRA on Qwen2.5-VL.

`train_loop` is the Ray Train entry; `StageRecipe` holds the steps of the recipe
(`hazard.model.training`): set-up, resume, train step, evaluate, checkpoint. Every
`eval.every_steps` and at the end the validation split is scored with serving's read-out and
reported to Ray Train with a checkpoint; `checkpoint.every_steps` adds checkpoints between
evaluations. Decisions (best checkpoint, early stop) are taken on gathered metrics, so every
rank takes them alike and calls `ray.train.report` the same number of times. The bundle is
built after the run by the driver (`ray_jobs/train.py`) from the best checkpoint.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import random
import tempfile
import time

import numpy as np
import torch

from hazard.config.train import TrainConfig
from hazard.core.tasks import MIXED, get_task
from hazard.model.training.checkpoint import load_checkpoint, save_checkpoint
from hazard.model.training.evaluate import (
    CLASSIFICATION_KEYS,
    eval_summary,
    evaluate_split,
)
from hazard.model.training.ingest import Ingest
from hazard.model.training.state import BestTracker, TrainState
from hazard.model.training.step import inputs_loss, prepare_micro_batch
from hazard.model.vlm import SequenceTooLong

MAX_SKIPPED_IDS = 20


class TooManySkipped(RuntimeError):
    """More samples exceeded max_length than optim.max_skip_fraction allows."""


class StageRecipe:
    """One worker's run of a cascade stage."""

    def __init__(self, loop_config: dict):
        import ray.train

        self.cfg = TrainConfig.model_validate(loop_config["config"])
        self.class_weights: dict[str, float] = loop_config["class_weights"]
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.local_rank = ctx.get_local_rank()
        name = self.cfg.optim.task
        self.task = None if name == MIXED else get_task(name)  # None: each row's own task
        self.model_uri = loop_config["model_uri"]
        self.state = TrainState(tracker=BestTracker(self.cfg.eval.min_delta))
        self.start = time.time()

    # -- set-up -------------------------------------------------------------------------
    def setup(self) -> None:
        """Seed, fetch the model source (once per node), build the DeepSpeed engine, resume."""
        import ray.train
        import torch.distributed as dist

        from hazard.model.training.setup import build_engine, local_model_source

        seed = self.cfg.optim.seed + self.rank
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        if self.local_rank == 0:
            path = local_model_source(self.model_uri, self.cfg.storage)
        dist.barrier()  # the node's copy is complete before the other local ranks read it
        if self.local_rank != 0:
            path = local_model_source(self.model_uri, self.cfg.storage)
        self.engine, self.processor, self.n_trainable = build_engine(self.cfg, path)
        checkpoint = ray.train.get_checkpoint()  # the run's latest (after a failure or re-submit)
        if checkpoint:
            with checkpoint.as_directory() as ckpt_dir:
                self.state = load_checkpoint(self.engine, ckpt_dir, self.rank, self.cfg.run_name)
            self.state.resumed_from.append(self.state.step)
            self._log(
                f"resumed from the checkpoint of step {self.state.step} (epoch "
                f"{self.state.epoch}, micro-batch {self.state.batches_in_epoch} of it)"
            )

    # -- the loop -----------------------------------------------------------------------
    def run(self) -> None:
        """Train until max_steps or early stop, evaluating and checkpointing on schedule.

        Micro-batches are prepared (decode, processor, collate) by a loader process
        (`hazard.model.training.ingest.Ingest`, `optim.prefetch_batches` ahead; 0: on this thread)
        in
        the data's order, so resuming by `batches_in_epoch` skips the same batches; losses stay
        on the device and are read once per optimizer step."""
        import ray.train

        cfg = self.cfg
        prepare = functools.partial(
            prepare_micro_batch,
            self.processor,
            prompt=self.task.prompt if self.task else None,
            max_length=cfg.optim.max_length,
            class_weights=self.class_weights,
            from_row=self.task is None or self.task.prompt_source == "row",
            loss_turns=cfg.optim.loss_turns,
        )
        self.engine.train()
        with Ingest(prepare, cfg.optim.prefetch_batches) as ingest:
            self._train(ray.train.get_dataset_shard("train"), ingest)
        self._check_skipped(final=True)

    def _train(self, shard, ingest: Ingest) -> None:
        cfg, state = self.cfg, self.state
        accum, micro, losses = cfg.optim.grad_accum_steps, 0, []
        step_samples, step_skipped, last_good = 0, [], None
        while state.step < cfg.optim.max_steps and not state.stopped_early:
            batches = shard.iter_batches(
                batch_size=cfg.optim.batch_size,
                batch_format="numpy",
                drop_last=True,
                local_shuffle_buffer_size=4 * cfg.optim.batch_size,
                local_shuffle_seed=cfg.optim.seed + state.epoch * 1000 + self.rank,
            )
            # resuming: skip what was already trained on, before anything is decoded
            remaining = itertools.islice(batches, state.batches_in_epoch, None)
            done = False
            for mb in ingest.iterate(remaining):
                state.batches_in_epoch += 1
                step_samples += mb.samples
                step_skipped += mb.skipped
                scale, inputs = 1.0, mb.inputs
                if inputs is not None:
                    last_good = inputs
                elif last_good is not None:  # keep DeepSpeed's collectives in step, no gradient
                    inputs, scale = last_good, 0.0
                else:
                    raise SequenceTooLong(
                        f"every sample of the first micro-batch is over max_length, e.g. "
                        f"{mb.skipped[0]}"
                    )
                loss = inputs_loss(self.engine, inputs, scale)
                self.engine.backward(loss)
                self.lr = float(self.engine.get_lr()[0])  # the rate this step applies
                self.engine.step()
                if scale:
                    losses.append(loss.detach())  # read once per optimizer step
                micro += 1
                if micro % accum:
                    continue
                state.step += 1
                self._count_samples(step_samples, step_skipped)
                step_samples, step_skipped = 0, []
                wait, prepared = ingest.take_times()
                done = self.after_step(losses, {"input_wait_s": wait, "prepare_s": prepared})
                losses = []
                if done:
                    break
            if not done:
                state.epoch += 1
                state.batches_in_epoch = 0

    def after_step(self, losses: list[torch.Tensor], timing: dict | None = None) -> bool:
        """Log; evaluate and checkpoint on schedule; True when the run should end.

        `losses`: this step's micro-batch losses, still on the device (one read here);
        `timing`: the step's input waiting and preparing seconds, kept in its history row."""
        cfg, state = self.cfg, self.state
        step = state.step
        lr = self.lr
        loss = torch.stack(losses).float().mean().item() if losses else math.nan
        state.steps.append(
            {
                "step": step,
                "loss": loss,
                "lr": lr,
                "seconds": round(time.time() - self.start, 3),
                **{k: round(v, 4) for k, v in (timing or {}).items()},
            }
        )
        last = step >= cfg.optim.max_steps
        if step % cfg.optim.log_every == 0 or last:
            recent = [s["loss"] for s in state.steps[-cfg.optim.log_every :]]
            self._log(
                f"{cfg.stage} step {step}/{cfg.optim.max_steps} loss {np.nanmean(recent):.4f} "
                f"lr {lr:.2e} ({time.time() - self.start:.0f}s)"
            )
        evaluate = last or (cfg.eval.every_steps and step % cfg.eval.every_steps == 0)
        stop = False
        summary = None
        if evaluate:
            summary = self.evaluate()
            stop = state.tracker.should_stop(cfg.eval.patience) and not last
            if stop:
                state.stopped_early = True
                self._log(
                    f"early stop at step {step}: {cfg.eval.metric} has not improved on step "
                    f"{state.tracker.best_step}'s {state.tracker.best_value:.4f} for "
                    f"{cfg.eval.patience} evaluations"
                )
        if evaluate or (cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0):
            self.checkpoint(summary, loss, lr)
        return last or stop

    # -- evaluate -----------------------------------------------------------------------
    def evaluate(self) -> dict:
        """Score the validation split (all ranks), record it; returns its summary."""
        cfg, state = self.cfg, self.state
        self.engine.eval()
        report, _, _ = evaluate_split(
            self.engine.module,
            self.processor,
            f"{cfg.data_dir}/val",
            self.task,
            self.task.prompt if self.task else None,
            self.task.labels if self.task else None,
            cfg.optim.eval_batch_size,
            cfg.storage,
        )
        self.engine.train()
        summary = eval_summary(state.step, report)
        improved = state.tracker.update(state.step, summary[cfg.eval.metric])
        state.evals.append(summary)
        head = summary["headline"]
        figures = f"{head['name']} {_figure(head['value'])}"
        if "macro_f1" in summary:
            figures = (
                f"macro-F1 {summary['macro_f1']:.3f} accuracy {summary['accuracy']:.3f} "
                f"balanced {summary['balanced_accuracy']:.3f}"
            )
            if "high_risk" in (self.task.labels if self.task else ()):
                figures += f" high-risk recall {_figure(summary['high_risk_recall'])}"
        self._log(
            f"eval step {state.step}: {figures}"
            + (" (best so far)" if improved else f" (best: step {state.tracker.best_step})")
        )
        return summary

    # -- checkpoint ---------------------------------------------------------------------
    def checkpoint(self, summary: dict | None, loss: float, lr: float) -> None:
        """Save this step's checkpoint on every rank and report it with the metrics."""
        import ray.train

        state, tracker = self.state, self.state.tracker
        metrics = {
            "step": state.step,
            "epoch": state.epoch,
            "loss": loss,
            "lr": lr,
            "evaluated": summary is not None,
            "best_step": tracker.best_step,
            "samples": state.samples,
            "skipped": state.skipped,
            "trainable_parameters": self.n_trainable,
            "resumed_from": list(state.resumed_from),
            "selection_score": math.nan,
        }
        for key in (*CLASSIFICATION_KEYS, "score"):
            value = summary.get(key) if summary else None
            metrics[f"val_{key}"] = math.nan if value is None else value
        if summary is not None:
            metrics["selection_score"] = tracker.selection_score(
                state.step, summary[self.cfg.eval.metric]
            )
        with tempfile.TemporaryDirectory(prefix="hazard-ckpt-") as tmp:
            save_checkpoint(self.engine, tmp, self.rank, self.cfg.run_name, state)
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=f"step_{state.step:08d}",
            )

    # -- bookkeeping --------------------------------------------------------------------
    def _count_samples(self, samples: int, skipped: list[str]) -> None:
        """Add this optimizer step's samples and skips over all ranks; fail once the skipped
        share can no longer stay under max_skip_fraction."""
        import torch.distributed as dist

        parts = [(samples, skipped)]
        if self.world > 1:
            parts = [None] * self.world
            dist.all_gather_object(parts, (samples, skipped))
        self.state.samples += sum(p[0] for p in parts)
        for _, ids in parts:
            self.state.skipped += len(ids)
            room = MAX_SKIPPED_IDS - len(self.state.skipped_ids)
            self.state.skipped_ids.extend(ids[: max(room, 0)])
        self._check_skipped(final=False)

    def _check_skipped(self, final: bool) -> None:
        o, state = self.cfg.optim, self.state
        planned = o.max_steps * o.batch_size * o.grad_accum_steps * self.world
        total = state.samples if final else max(planned, state.samples)
        if state.skipped > o.max_skip_fraction * total:
            raise TooManySkipped(
                f"{state.skipped} of {state.samples} training samples were over max_length "
                f"{o.max_length} (more than optim.max_skip_fraction={o.max_skip_fraction} of "
                f"{total}), e.g. {state.skipped_ids[:5]}; lower model.max_pixels or raise "
                "optim.max_length"
            )

    def _log(self, message: str) -> None:
        if self.rank == 0:
            print(f"[train] {message}", flush=True)


def train_loop(loop_config: dict) -> None:
    """Ray Train entry: `loop_config` holds the TrainConfig dict, the model source URI and
    the per-label loss weights computed by the driver."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported
    recipe = StageRecipe(loop_config)
    recipe.setup()
    recipe.run()


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
