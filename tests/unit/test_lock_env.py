"""scripts/lock_env.py: the lock environments the suite runs in hold the images' versions."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("lock_env", REPO / "scripts/lock_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOCK_ENV = _script()


@pytest.mark.parametrize("variant", ["cpu", "gpu"], ids=["cpu-lock", "gpu-lock"])
def test_the_committed_locks_satisfy_every_project_requirement(variant):
    assert LOCK_ENV.unsatisfied(variant) == []


def test_a_range_the_gpu_image_cannot_satisfy_names_the_package(monkeypatch):
    project = LOCK_ENV.lock_images.project()
    deps = [d for d in project["dependencies"] if not d.startswith("transformers")]
    project = {**project, "dependencies": [*deps, "transformers>=5.22,<6"]}
    monkeypatch.setattr(LOCK_ENV.lock_images, "project", lambda: project)
    gpu_transformers = LOCK_ENV.read_lock("gpu")["transformers"]
    assert LOCK_ENV.unsatisfied("gpu") == [
        f"transformers: pyproject needs transformers<6,>=5.22, the gpu lock has "
        f"transformers=={gpu_transformers}"
    ]
    assert LOCK_ENV.unsatisfied("cpu") == []  # 5.24.0 there
    with pytest.raises(LOCK_ENV.LockMismatch, match="transformers.*5.20.2"):
        LOCK_ENV.build("gpu", Path("/nonexistent/venv"))  # refused before anything is made
    assert not Path("/nonexistent/venv").exists()


def test_gpu_environment_requirements_leave_out_vllm_and_take_the_locks_torch():
    reqs = LOCK_ENV.env_requirements("gpu")
    names = [canonicalize_name(Requirement(r).name) for r in reqs]
    assert "vllm" not in names
    assert "torch" in reqs and "torchvision" in reqs  # unpinned: the lock says 2.14.0 / 0.29.0
    assert not any(r.startswith("torch==") for r in reqs)
    assert "pytest>=8" in reqs  # the test tools come along
    assert any(r.startswith("torch==2.14.1") for r in LOCK_ENV.env_requirements("cpu"))


def test_off_lock_lists_each_package_whose_version_differs():
    pins = LOCK_ENV.read_lock("gpu")
    have = {"transformers": "5.25.0", "peft": pins["peft"], "pytest": "9.0.0"}
    have[LOCK_ENV.lock_images.PROJECT] = "0.1.0"
    assert LOCK_ENV.off_lock("gpu", have) == [
        f"transformers==5.25.0 (the gpu lock pins {pins['transformers']})"
    ]


def test_this_environment_is_on_its_lock():
    """The environment running the tests holds its image's versions (make setup and
    setup-locks record which lock they built from)."""
    record = Path(sys.prefix) / LOCK_ENV.RECORD
    if not record.is_file():
        pytest.skip(f"{sys.prefix} was not built by scripts/lock_env.py")
    variant = json.loads(record.read_text())["variant"]
    summary = LOCK_ENV.verify(variant, Path(sys.prefix))  # raises on any version off the lock
    direct = {canonicalize_name(Requirement(r).name) for r in LOCK_ENV.env_requirements(variant)}
    assert direct.isdisjoint(summary["left_out"])
    assert ("vllm" in summary["left_out"]) == (variant == "gpu")


def test_each_floor_is_a_version_the_suite_runs():
    """A `>=` floor in pyproject.toml is the version one of the locks installs: the oldest
    allowed version is one the tests ran on."""
    locks = {v: LOCK_ENV.read_lock(v) for v in ("gpu", "cpu")}
    for text in LOCK_ENV.lock_images.project()["dependencies"]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        for spec in req.specifier:
            if spec.operator == ">=":
                assert spec.version in {locks["gpu"][name], locks["cpu"][name]}, (
                    f"{text}: floor {spec.version} is installed by neither lock "
                    f"(gpu {locks['gpu'][name]}, cpu {locks['cpu'][name]})"
                )
