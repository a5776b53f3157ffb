"""Fault tolerance through real Ray Train: a worker killed mid-run, the run resumes.

Two CPU workers train the tiny stage 1 with a checkpoint every 2 steps. Once Ray Train's
controller has registered the first checkpoint (its snapshot file lists it), a watcher kills
one worker process with SIGKILL. Ray Train restarts the worker group (`scaling.max_failures=1`)
from the latest checkpoint: the step count continues from there, the history holds every step
once.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from ray_jobs.train import run
from tests.helpers.train import prepare_small, stage_config

pytestmark = pytest.mark.slow


def _registered_steps(run_dir: Path) -> list[int]:
    """Steps of the checkpoints Ray Train's controller has registered (its snapshot file)."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        state = json.loads(snapshot.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or being replaced
        return []
    return sorted(r["metrics"]["step"] for r in state.get("checkpoint_results", []))


def _kill_a_worker_after_first_checkpoint(run_dir: Path, record: dict, stop: threading.Event):
    """Wait until Ray Train has registered a checkpoint, then SIGKILL one worker process."""
    while not stop.is_set():
        registered = _registered_steps(run_dir)
        workers = [
            p
            for p in psutil.process_iter(["pid", "cmdline"])
            if p.info["cmdline"] and p.info["cmdline"][0].startswith("ray::RayTrainWorker")
        ]
        if registered and len(workers) == 2:
            record["registered_at_kill"] = registered
            record["pid"] = workers[-1].pid
            os.kill(workers[-1].pid, signal.SIGKILL)
            return
        time.sleep(0.1)


def test_a_killed_worker_restarts_from_the_latest_checkpoint(tmp_path, ray_local):
    prepare_small(tmp_path)
    cfg = stage_config(
        tmp_path / "data",
        tmp_path / "out",
        8,
        ["checkpoint.every_steps=2", "eval.every_steps=4", "scaling.max_failures=1"],
    )
    record: dict = {}
    stop = threading.Event()
    watcher = threading.Thread(
        target=_kill_a_worker_after_first_checkpoint,
        args=(tmp_path / "out/ray_results" / cfg.run_name, record, stop),
        daemon=True,
    )
    watcher.start()
    try:
        metrics = run(cfg)
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert "pid" in record, "the watcher never saw a complete checkpoint and two workers"
    assert not psutil.pid_exists(record["pid"])
    # resumed once, from a checkpoint that existed when the worker died (not from step 0)
    assert len(metrics["resumed_from"]) == 1
    resumed = metrics["resumed_from"][0]
    # (the newest checkpoint registered at the kill, or one registered while it took effect)
    assert resumed % 2 == 0 and resumed >= max(record["registered_at_kill"]) >= 2
    assert resumed <= max(record["registered_at_kill"]) + 2
    # the history continues from the checkpoint: every step once, none restarted at 1
    assert [s["step"] for s in metrics["history"]["steps"]] == list(range(1, 9))
    assert [e["step"] for e in metrics["history"]["evals"]] == [4, 8]
    assert metrics["step"] == 8
