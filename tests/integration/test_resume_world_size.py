"""Resuming on another worker count, through real Ray Train and DeepSpeed on CPU.

The tiny stage 1 trains 2 steps on 2 workers (ZeRO-2, a checkpoint at step 2). The same run
name is then submitted again with 1 worker: each rank's manifest says the checkpoint was saved
by 2, so the worker refuses before DeepSpeed loads anything, with an error naming both counts
and what to do, and the run's checkpoints stay as they were.
"""

from __future__ import annotations

import json

import pytest

from ray_jobs.train import run
from tests.helpers.train import kept_checkpoints, prepare_small, stage_config

pytestmark = pytest.mark.slow


def test_a_run_saved_on_two_workers_refuses_to_resume_on_one(tmp_path, ray_local):
    prepare_small(tmp_path)
    common = ["checkpoint.every_steps=2", "eval.every_steps=2"]
    cfg = stage_config(tmp_path / "data", tmp_path / "out", 2, common)
    assert cfg.scaling.num_workers == 2 and cfg.deepspeed.zero_stage == 2
    assert run(cfg)["step"] == 2
    run_dir = tmp_path / "out/ray_results" / cfg.run_name
    kept = kept_checkpoints(run_dir)
    assert sorted(kept) == [2]
    manifests = [json.loads((kept[2] / f"manifest.rank{r}.json").read_text()) for r in (0, 1)]
    assert [(m["rank"], m["world_size"]) for m in manifests] == [(0, 2), (1, 2)]
    before = sorted(p.relative_to(run_dir) for p in kept[2].rglob("*"))

    one = stage_config(tmp_path / "data", tmp_path / "out", 4, [*common, "scaling.num_workers=1"])
    with pytest.raises(Exception) as err:  # Ray Train's TrainingFailedError, the worker's cause
        run(one)
    message = str(err.value)
    assert "WorldSizeMismatch" in message, message
    assert "saved by 2 workers, this run has 1" in message
    assert "scaling.num_workers=2" in message and "another run_name" in message
    assert sorted(kept_checkpoints(run_dir)) == [2]  # no step was trained or saved
    assert sorted(p.relative_to(run_dir) for p in kept[2].rglob("*")) == before
