"""scripts/gpu_smoke.sh on a machine without a GPU, and its report of pytest's JUnit XML."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_smoke.sh"
REPORT = REPO / "scripts" / "gpu_smoke_report.py"


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")
def test_without_a_gpu_it_says_so_installs_nothing_and_exits_2(tmp_path):
    venv = tmp_path / "venv-gpu"
    env = dict(os.environ, GPU_VENV=str(venv))
    out = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "gpu-smoke: NO GPU: nvidia-smi not found" in out.stdout
    assert "PASS" not in out.stdout
    assert not venv.exists()  # checked before installing anything


CHECKS = """
import pytest

def test_passes(record_property):
    record_property("figure", "max |dp| 0.0040 (tolerance 0.03)")

def test_fails(record_property):
    record_property("figure", "loss nan")
    assert 1 == 2, "loss is not finite"

def test_skips():
    pytest.skip("vLLM is installed on GPU nodes only")
"""


def _junit(tmp_path: Path, test: str) -> Path:
    """The JUnit report of one real pytest run of `test` in a throw-away test file."""
    (tmp_path / "test_checks.py").write_text(CHECKS)
    xml = tmp_path / f"{test}.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o",
         "junit_family=xunit1", f"--junitxml={xml}", f"test_checks.py::{test}"],
        cwd=tmp_path, capture_output=True, timeout=120,
    )  # fmt: skip
    return xml


def _report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPORT), *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("checks")
    return {name: _junit(tmp, name) for name in ("test_passes", "test_fails", "test_skips")}


def test_the_report_prints_one_line_per_check_with_its_figure(reports, tmp_path):
    out = _report(
        f"good={reports['test_passes']}",
        f"bad={reports['test_fails']}",
        f"skipped={reports['test_skips']}",
        f"crashed={tmp_path / 'missing.xml'}",
    )
    lines = out.stdout.splitlines()
    assert lines[0] == "PASS  good  max |dp| 0.0040 (tolerance 0.03)"
    assert lines[1].startswith("FAIL  bad  loss nan; AssertionError: loss is not finite")
    assert lines[2] == "SKIP  skipped  vLLM is installed on GPU nodes only"
    assert lines[3].startswith("FAIL  crashed  no test report")
    assert lines[4] == "gpu-smoke: 1/4 checks passed"
    assert out.returncode == 1


def test_the_report_exits_0_only_when_every_check_passed(reports):
    out = _report(f"good={reports['test_passes']}")
    assert out.returncode == 0, out.stdout
    assert out.stdout.splitlines()[-1] == "gpu-smoke: 1/1 checks passed"
