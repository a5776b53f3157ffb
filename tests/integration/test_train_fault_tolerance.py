"""Fault tolerance through real Ray Train: a worker killed mid-run, the run resumes.

Two CPU workers train the tiny stage 1 with a checkpoint every 2 steps. Once the first
checkpoint is complete on disk (both ranks' manifests written), a watcher kills one worker
process with SIGKILL. Ray Train restarts the worker group (`scaling.max_failures=1`) from the
latest checkpoint: the step count continues from there, the history holds every step once.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

from ray_jobs.train import run
from tests.integration.train_fixtures import kept_checkpoints, prepare_small, stage_config

pytestmark = pytest.mark.slow


def _kill_a_worker_after_first_checkpoint(run_dir: Path, record: dict, stop: threading.Event):
    """Wait for a complete checkpoint, then SIGKILL one Ray Train worker process."""
    while not stop.is_set():
        done = [
            step
            for step, path in kept_checkpoints(run_dir).items()
            if (path / "manifest.rank0.json").is_file() and (path / "manifest.rank1.json").is_file()
        ]
        workers = [
            p
            for p in psutil.process_iter(["pid", "cmdline"])
            if p.info["cmdline"] and p.info["cmdline"][0].startswith("ray::RayTrainWorker")
        ]
        if done and len(workers) == 2:
            time.sleep(0.5)  # let Ray Train register the checkpoint it just persisted
            record["complete_at_kill"] = sorted(kept_checkpoints(run_dir))
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
    # (the newest checkpoint on disk at the kill, give or take one Ray had not registered yet
    # or one that completed in the half second before the kill)
    assert resumed >= 2 and resumed % 2 == 0
    assert abs(resumed - max(record["complete_at_kill"])) <= 2
    # the history continues from the checkpoint: every step once, none restarted at 1
    assert [s["step"] for s in metrics["history"]["steps"]] == list(range(1, 9))
    assert [e["step"] for e in metrics["history"]["evals"]] == [4, 8]
    assert metrics["step"] == 8
