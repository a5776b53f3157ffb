"""The demo end to end at smaller sizes: synthetic folder → `ray job submit` data, stage 1,
stage 2, calibration → `serve deploy` → HTTP scoring, through a local Ray head it starts.

Checks the report and that nothing the demo started is left running.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hazard.core.labels import RISK_LABELS

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _ray_processes(temp_dir_prefix: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if temp_dir_prefix in line]


def test_demo_runs_end_to_end_and_cleans_up(tmp_path, tiny_model_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hazard.demo.run",
            "--out",
            str(out),
            "--n-per-label",
            "12",
            "--steps",
            "6",
            "--score-limit",
            "6",
        ],
        cwd=REPO,
        capture_output=True,  # bytes: text mode would turn the progress bars' \r into \n
        timeout=1500,
    )
    stdout, stderr = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, stdout[-4000:] + stderr[-4000:]
    assert "hazard-cascade demo summary" in stdout

    # A person can read it: steps, bars and summary in well under 100 lines; the rest in logs.
    printed = stdout + stderr
    assert printed.count("\n") < 100, printed
    assert [f"[{i}/8]" in stdout for i in range(1, 9)] == [True] * 8
    assert "INFO" not in printed and "(RayTrainWorker" not in printed
    logs = {p.name for p in (out / "logs").iterdir()}
    assert {"ray_head.log", "data_job.log", "stage1_job.log", "stage2_job.log"} <= logs
    assert "[train] base step 6/6" in (out / "logs" / "stage1_job.log").read_text()
    assert stdout.rstrip().split("\n")[-1].startswith("  less ")
    assert "hazard serve --config configs/tiny/serve.yaml" in stdout
    # Its Ray head had its own token; the (test session's fresh) home was not touched.
    assert len((out / "ray_auth_token").read_text()) == 64
    assert not (Path.home() / ".ray").exists()

    report = json.loads((out / "report.json").read_text())
    lineage = report["lineage"]
    assert report["dataset"]["corrupt"] == 4
    assert sum(lineage["quarantine"]["by_reason"].values()) == 4
    for stage in ("stage1_base", "stage2_specialist"):
        m = report[stage]["metrics"]
        assert m["step"] == 6 and 0 <= m["val_macro_f1"] <= 1, stage
        assert m["train_seconds"] > 0
    fusion = report["calibration"]["fusion"]
    assert 0 <= fusion["theta"] <= 1 and set(fusion["correction"]) >= {"slope", "intercept"}

    serving = report["serving"]
    assert serving["n"] == 6
    for ex in serving["examples"]:
        assert ex["risk_level"] in RISK_LABELS
        assert set(ex["probabilities"]) == set(RISK_LABELS)
        assert abs(sum(ex["probabilities"].values()) - 1) < 1e-4
        assert 0 <= ex["hazard_score"] <= 1
        assert ex["models"][0]["role"] == "base"
    statuses = {e["request"]: e["status"] for e in serving["error_examples"]}
    assert statuses == {"no API key": 401, "undecodable image": 400}
    assert "detail" in serving["error_examples"][0]["body"]

    # The API key is not left in the saved Serve config.
    assert "<redacted>" in (out / "serve_config.yaml").read_text()
    # The local head's whole process group is gone.
    assert not _ray_processes(report["ray_temp_dir"]), "demo left Ray processes running"
