"""The training recipe's pure parts and single-process paths: best tracking and early stop,
run state, checkpoint verification, sample skipping, the answer-position loss on the real
tiny model with and without gradient checkpointing, and configs refused at load time."""

from __future__ import annotations

import io
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hazard.config.train import DeepSpeedSpec, LoraSpec, OptimSpec, TrainConfig
from hazard.core.labels import RISK_LABELS
from hazard.core.tasks import CORRIDOR_RISK_PROMPT
from hazard.infra.storage import sha256_file
from hazard.model.training.checkpoint import (
    CheckpointIntegrityError,
    WorldSizeMismatch,
    current_world_size,
    load_checkpoint,
    verify_checkpoint,
)
from hazard.model.training.state import BestTracker, TrainState
from hazard.model.training.step import encode_batch, micro_batch_loss


# -- best checkpoint and early stopping ------------------------------------------------------
def test_best_tracker_keeps_the_earlier_of_ties_and_counts_evaluations_since():
    t = BestTracker(min_delta=0.01)
    assert t.update(2, 0.50) is True
    assert t.update(4, 0.505) is False  # within min_delta: no improvement
    assert t.update(6, 0.50) is False  # a tie keeps step 2
    assert (t.best_step, t.best_value, t.since_best) == (2, 0.50, 2)
    assert t.should_stop(2) and not t.should_stop(3) and not t.should_stop(None)
    assert t.update(8, 0.60) is True and t.since_best == 0
    assert t.update(10, None) is False  # metric undefined on the split never improves


def test_selection_score_ranks_non_improving_evaluations_below_the_best():
    t = BestTracker()
    t.update(2, 0.5)
    assert t.selection_score(2, 0.5) == 0.5
    t.update(4, 0.5)  # a tie: Ray would keep the later of equal scores, the tracker the earlier
    assert t.selection_score(4, 0.5) < 0.5 and t.selection_score(4, 0.5) == pytest.approx(0.5)
    t.update(6, 0.3)
    assert t.selection_score(6, 0.3) == 0.3
    assert t.selection_score(8, None) == -math.inf


def test_train_state_round_trips_through_json():
    state = TrainState(step=7, epoch=1, batches_in_epoch=3, samples=56, skipped=1)
    state.skipped_ids.append("a.png")
    state.tracker.update(4, 0.7)
    state.evals.append({"step": 4, "macro_f1": 0.7})
    back = TrainState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert back == state and back.tracker.best_step == 4


# -- checkpoint verification -----------------------------------------------------------------
def _fake_checkpoint(root: Path, run: str = "run-a", world_size: int | None = 2) -> Path:
    """A checkpoint folder as two ranks write it: files plus one manifest per rank
    (`world_size` None: as written before manifests recorded it)."""
    files = {
        0: {"deepspeed/ds/model.pt": b"m" * 100, "train_state.json": b"{}"},
        1: {"deepspeed/ds/optim_1.pt": b"o" * 50},
    }
    for rank, content in files.items():
        for rel, data in content.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        manifest = {
            "run_name": run,
            "step": 4,
            "rank": rank,
            "files": {rel: sha256_file(root / rel) for rel in content},
        }
        if world_size is not None:
            manifest["world_size"] = world_size
        (root / f"manifest.rank{rank}.json").write_text(json.dumps(manifest))
    return root


def test_verify_checkpoint_accepts_what_the_run_wrote(tmp_path):
    assert verify_checkpoint(_fake_checkpoint(tmp_path), "run-a") == 4


@pytest.mark.parametrize(
    "damage, named",
    [
        (lambda d: (d / "deepspeed/ds/optim_1.pt").write_bytes(b"o" * 49 + b"X"), "optim_1.pt"),
        (lambda d: (d / "deepspeed/ds/model.pt").unlink(), "model.pt"),
        (lambda d: (d / "deepspeed/ds/extra.pt").write_bytes(b"pickle"), "extra.pt"),
        (lambda d: (d / "manifest.rank0.json").unlink(), "manifest.rank0.json"),
    ],
    ids=["altered", "missing", "unlisted", "no-manifest"],
)
def test_verify_checkpoint_refuses_naming_the_file(tmp_path, damage, named):
    ckpt = _fake_checkpoint(tmp_path)
    damage(ckpt)
    with pytest.raises(CheckpointIntegrityError, match=named):
        verify_checkpoint(ckpt, "run-a")


def test_verify_checkpoint_refuses_another_runs_checkpoint(tmp_path):
    with pytest.raises(CheckpointIntegrityError, match="run-b"):
        verify_checkpoint(_fake_checkpoint(tmp_path, run="run-b"), "run-a")


class _Refuses:
    """Stands in for the DeepSpeed engine where the load must not be reached."""

    def __init__(self):
        self.loads = []

    def load_checkpoint(self, *args, **kwargs):
        self.loads.append((args, kwargs))
        raise AssertionError("the engine was asked to load")


def test_resume_on_another_worker_count_is_refused_before_loading(tmp_path):
    """Saved by 2 workers, resumed by 1 (torch.distributed not initialised here: 1)."""
    ckpt = _fake_checkpoint(tmp_path)
    engine = _Refuses()
    rng_before = torch.get_rng_state()
    assert current_world_size() == 1
    with pytest.raises(WorldSizeMismatch) as err:
        load_checkpoint(engine, ckpt, 0, "run-a")
    assert (err.value.saved, err.value.current) == (2, 1)
    message = str(err.value)
    assert "saved by 2 workers, this run has 1" in message
    assert "scaling.num_workers=2" in message and "another run_name" in message
    assert engine.loads == [] and torch.equal(torch.get_rng_state(), rng_before)
    back = pickle.loads(pickle.dumps(err.value))  # Ray pickles it from worker to driver
    assert str(back) == message and (back.saved, back.current) == (2, 1)
    with pytest.raises(WorldSizeMismatch, match="saved by 2 workers, this run has 4"):
        verify_checkpoint(ckpt, "run-a", world_size=4)
    assert verify_checkpoint(ckpt, "run-a", world_size=2) == 4


def test_the_mismatch_is_found_before_any_file_is_hashed(tmp_path):
    ckpt = _fake_checkpoint(tmp_path)
    (ckpt / "deepspeed/ds/model.pt").write_bytes(b"altered")
    with pytest.raises(WorldSizeMismatch):
        verify_checkpoint(ckpt, "run-a", world_size=1)
    with pytest.raises(CheckpointIntegrityError, match="model.pt"):
        verify_checkpoint(ckpt, "run-a", world_size=2)


def test_world_size_of_checkpoints_written_before_it_was_recorded(tmp_path):
    """One manifest per rank: their number is the worker count."""
    ckpt = _fake_checkpoint(tmp_path, world_size=None)
    with pytest.raises(WorldSizeMismatch, match="saved by 2 workers, this run has 1"):
        verify_checkpoint(ckpt, "run-a", world_size=1)
    assert verify_checkpoint(ckpt, "run-a", world_size=2) == 4


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda m: m.update(world_size=3), "different world sizes"),
        (lambda m: m.update(rank=2), r"ranks \[0, 2\]"),
    ],
    ids=["sizes-disagree", "rank-missing"],
)
def test_manifests_that_disagree_on_the_worker_count_are_refused(tmp_path, edit, named):
    ckpt = _fake_checkpoint(tmp_path)
    path = ckpt / "manifest.rank1.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointIntegrityError, match=named):
        verify_checkpoint(ckpt, "run-a")


# -- sample skipping ---------------------------------------------------------------------------
def _png(size: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_encode_batch_skips_over_long_samples_by_id(tiny):
    from hazard.model.vlm import encode

    _, processor = tiny
    image = Image.open(io.BytesIO(_png(112))).convert("RGB")
    lengths = {
        label: len(encode(processor, [image], CORRIDOR_RISK_PROMPT, label, 4096).input_ids)
        for label in RISK_LABELS
    }
    short, long_ = min(lengths, key=lengths.get), max(lengths, key=lengths.get)
    assert lengths[short] < lengths[long_]  # the answers' token counts differ
    batch = {
        "id": np.array(["fits", "too-long"]),
        "images": [[_png(112)], [_png(112)]],
        "answer": np.array([short, long_]),
    }
    limit = lengths[short]  # the short answer fits exactly, the long one cannot
    encoded, answers, skipped = encode_batch(processor, batch, CORRIDOR_RISK_PROMPT, limit)
    assert [len(e.input_ids) for e in encoded] == [limit]
    assert answers == [short] and skipped == ["too-long"]


def test_too_many_skipped_samples_fail_the_run_with_their_ids():
    from ray_jobs.train_loop import StageRecipe, TooManySkipped

    recipe = object.__new__(StageRecipe)  # only the bookkeeping, no Ray Train context
    recipe.cfg = TrainConfig.model_validate(
        {
            "stage": "base",
            "data_dir": "d",
            "output_dir": "o",
            "run_name": "r",
            "model": {"name": "m", "path": "tiny"},
            "optim": {"max_steps": 10, "batch_size": 4, "max_skip_fraction": 0.05},
        }
    )
    recipe.world, recipe.state = 2, TrainState(samples=40, skipped=2, skipped_ids=["a", "b"])
    recipe._check_skipped(final=False)  # 2 of the 80 planned: 2.5%, may still pass
    recipe.state.skipped = 5  # 5 of 80 planned: over 5% whatever comes next
    with pytest.raises(TooManySkipped, match=r"5 of 40 .*\['a', 'b'\]"):
        recipe._check_skipped(final=False)
    recipe.state = TrainState(samples=40, skipped=3, skipped_ids=["c"])
    recipe._check_skipped(final=False)  # 3 of 80 planned
    with pytest.raises(TooManySkipped):  # but 3 of the 40 actually seen at the end: 7.5%
        recipe._check_skipped(final=True)


# -- the loss on the real model --------------------------------------------------------------
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_model_path, tiny):
    """The answer-position loss through the PEFT model, with and without recomputation."""
    from hazard.model.finetune import apply_lora
    from hazard.model.vlm import encode, load_model

    _, processor = tiny
    imgs = [Image.open(io.BytesIO(_png(112))).convert("RGB") for _ in range(2)]
    encoded = [
        encode(processor, [im], CORRIDOR_RISK_PROMPT, lab, 4096)
        for im, lab in zip(imgs, ["high_risk", "no_risk"], strict=True)
    ]
    answers = ["high_risk", "no_risk"]
    results = []
    for checkpointing in (False, True):
        model = load_model(tiny_model_path)
        model.config.use_cache = False
        model = apply_lora(
            model, LoraSpec(r=4, alpha=8), seed=0, gradient_checkpointing=checkpointing
        )
        for name, p in model.named_parameters():  # non-zero B so gradients reach A too
            if "lora_B" in name:
                torch.nn.init.constant_(p, 0.01)
        model.train()
        loss = micro_batch_loss(model, processor, encoded, answers, {"high_risk": 2.0})
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss.item(), grads))
    (loss0, g0), (loss1, g1) = results
    assert loss0 == pytest.approx(loss1, rel=1e-6) and loss0 > 0
    assert g0.keys() == g1.keys() and len(g0) > 0
    for name in g0:
        assert torch.allclose(g0[name], g1[name], rtol=1e-4, atol=1e-7), name
    assert any(g.abs().sum() > 0 for g in g0.values())


# -- configs refused when loaded -------------------------------------------------------------
def _train(**over) -> dict:
    raw = {
        "stage": "base",
        "data_dir": "d",
        "output_dir": "o",
        "run_name": "r",
        "model": {"name": "m", "path": "tiny"},
    }
    raw.update(over)
    return raw


def test_a_task_with_an_open_answer_selects_by_score():
    assert TrainConfig.model_validate(_train(optim={"task": "vqa"})).eval.metric == "score"
    closed = TrainConfig.model_validate(_train(optim={"task": "multiple_choice"}))
    assert closed.eval.metric == "macro_f1"
    with pytest.raises(ValueError, match="'counting' is scored by generation: use eval.metric"):
        TrainConfig.model_validate(_train(optim={"task": "counting"}, eval={"metric": "accuracy"}))
    with pytest.raises(ValueError, match="class_weights weigh the labels of a closed answer"):
        TrainConfig.model_validate(_train(optim={"task": "counting", "class_weights": "balanced"}))
    with pytest.raises(ValueError, match="unknown task"):
        OptimSpec(task="nope")
    assert OptimSpec(task="corridor_risk").task == "corridor_risk"


def test_offload_and_metric_combinations_are_refused_at_load():
    with pytest.raises(ValueError, match="offload_params needs zero_stage 3"):
        DeepSpeedSpec(zero_stage=2, offload_params=True)
    with pytest.raises(ValueError, match="offload_optimizer needs"):
        DeepSpeedSpec(zero_stage=0, offload_optimizer=True)
    assert DeepSpeedSpec(zero_stage=3, offload_params=True, offload_optimizer=True)
    with pytest.raises(ValueError, match="high_risk label"):
        TrainConfig.model_validate(
            _train(optim={"task": "multiple_choice"}, eval={"metric": "high_risk_recall"})
        )
    with pytest.raises(ValueError, match="class_weights has unknown labels"):
        OptimSpec(task="high_risk_binary", class_weights={"medium_risk": 2.0})
    assert set(RISK_LABELS) >= {"high_risk"}
