"""The demo's console: a failing step shows its name, its log's tail and the log's path."""

from __future__ import annotations

import io
import sys

import pytest

from hazard.demo.console import Console, JobFailed, run_logged


def test_a_failing_command_raises_with_its_log_and_the_console_shows_the_tail(tmp_path):
    log = tmp_path / "logs" / "job.log"
    script = "for i in range(40): print(f'line {i}')\nraise SystemExit(3)"
    seen: list[str] = []
    with pytest.raises(JobFailed) as exc:
        run_logged("the job", [sys.executable, "-c", script], log, seen.append)
    assert exc.value.returncode == 3 and exc.value.log == log
    assert len(seen) == 40 and log.read_text().splitlines()[-1] == "line 39"

    out = io.StringIO()
    con = Console(8, out)
    con.step(4, "data job")
    con.failed(exc.value)
    text = out.getvalue()
    assert "FAILED at step 'data job': the job exited with 3" in text
    assert "    line 39" in text and "    line 15" in text and "    line 14\n" not in text
    assert f"full log: {log}" in text


def test_step_lines_move_the_bar(tmp_path):
    out = io.StringIO()
    con = Console(1, out)
    bar = con.bar("training", total=120)
    follow = con.follow_steps(bar)
    follow("[train] base step 10/120 loss 1.2")
    assert (bar.n, bar.total) == (10, 120)
    follow("(RayTrainWorker) [train] base step 60/120 loss 0.9 lr 1e-3")
    follow("unrelated line with no progress")
    assert bar.n == 60
    bar.close()
