"""Shared pieces of the chart tests (tests/integration/test_chart_*.py).

What the chart tests check: `helm lint` and `helm template` for the default values and every
scenario in charts/hazard-cascade/ci/ and k8s/values/; every rendered
RayService/RayJob/RayCluster is validated against the `openAPIV3Schema` of KubeRay's CRDs of
every operator version the chart supports (vendored in tests/fixtures/kuberay-crds, one folder
per version, by scripts/vendor_kuberay_crds.py), with fields the API server would silently
prune reported as errors; every core object, and the Pods KubeRay derives from the Ray objects'
templates, against the Kubernetes schemas (`kubernetes-validate`, strict); checkov over all of
them, with accepted findings listed in charts/hazard-cascade/checkov-accepted.yaml; every pod
template is held to the `restricted` Pod Security Standard; values files are scanned for
secret-looking literals; the chart's own guards are exercised. The Serve args are the values'
ServeConfig unchanged and are validated by it; each RayJob's entrypoint is parsed and its
config loaded as the job loads it, and its cluster must hold what the config asks of Ray.

Helm comes from `scripts/install_helm.py` and checkov from `scripts/install_checkov.py` (both
run by `make setup`); without them these tests fail.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

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


def scenario_id(path: Path | None) -> str:
    return "defaults" if path is None else str(path.relative_to(REPO))


SCENARIO_IDS = [scenario_id(s) for s in SCENARIOS]


JOBS = {  # values key -> (RayJob component label, job module)
    "dataPrep": ("data-prep", "ray_jobs.prepare_data"),
    "stage1": ("stage1", "ray_jobs.train"),
    "stage2": ("stage2", "ray_jobs.train"),
    "calibrate": ("calibrate", "ray_jobs.calibrate"),
    "scoreDataset": ("score-dataset", "ray_jobs.score_dataset"),
}


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm, *args], capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )


def values_args(values_file: Path | None, sets: tuple[str, ...] = ()) -> list[str]:
    args: list[str] = []
    if values_file is not None:
        args += ["-f", str(values_file)]
    for s in sets:
        args += ["--set", s]
    return args


@functools.cache
def render_cached(helm: str, values_file: Path | None, sets: tuple[str, ...]) -> str:
    proc = run_helm(
        helm,
        "template",
        "hazard-cascade",
        str(CHART),
        "--namespace",
        "hazard-cascade",
        *values_args(values_file, sets),
    )
    if proc.returncode != 0:
        pytest.fail(
            f"helm template failed for {scenario_id(values_file)} {sets}:\n{proc.stderr}",
            pytrace=False,
        )
    return proc.stdout


def render(helm: str, values_file: Path | None = None, *sets: str) -> list[dict[str, Any]]:
    """Render the chart; return the non-empty documents."""
    text = render_cached(helm, values_file, tuple(sets))
    return [d for d in yaml.safe_load_all(text) if d]


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


# pod templates and restricted Pod Security


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    spec = doc.get("spec", {})
    return {
        "RayService": spec.get("rayClusterConfig"),
        "RayJob": spec.get("rayClusterSpec"),
        "RayCluster": spec,
    }.get(doc["kind"])


def pod_templates(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template) for every pod template inside a Ray resource."""
    name = f"{doc['kind']}/{doc['metadata']['name']}"
    cluster = cluster_spec(doc)
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


def merged_values(values_file: Path | None) -> dict[str, Any]:
    """values.yaml with `values_file` coalesced over it, as Helm does."""
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    return deep_merge(base, yaml.safe_load(values_file.read_text()) if values_file else {})


def cpu_quantity(value: str | int | float) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def ray_resources(group: dict[str, Any]) -> dict[str, float]:
    """CPU and GPU a Ray node of this group offers: `num-cpus`/`num-gpus` of rayStartParams,
    else the container limits (as KubeRay passes them to `ray start`)."""
    params = group.get("rayStartParams") or {}
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    cpu = params.get("num-cpus", limits.get("cpu", 0))
    gpu = params.get("num-gpus", limits.get("nvidia.com/gpu", 0))
    return {"CPU": cpu_quantity(cpu), "GPU": float(gpu)}


def ray_groups(doc: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = cluster_spec(doc)
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


def under(path: str, mounts: set[str]) -> bool:
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)


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


NOT_MANIFESTS = {"kuberay-operator-values.yaml", "clusters.yaml"}
