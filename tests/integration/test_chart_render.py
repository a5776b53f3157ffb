"""The chart renders and lints: every scenario's Ray objects validate against KubeRay's CRDs
of each supported operator version, names fit KubeRay's limits, and the optional objects
(PodDisruptionBudget, Ingress, PodMonitor) and NOTES come out as the values ask.

Helpers and scenarios: tests/helpers/chart.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.helpers.chart import (
    CHART,
    CI_DIR,
    CI_FILES,
    CRD_DIR,
    JOBS,
    K8S,
    KUBERAY_CRDS,
    KUBERAY_VERSIONS,
    NEWEST_KUBERAY,
    RAY_KINDS,
    SCENARIO_IDS,
    SCENARIOS,
    cluster_spec,
    crd_errors,
    pod_templates,
    ray_groups,
    render,
    run_helm,
    values_args,
)

GIB = 1024**3


def memory_bytes(value: str | int) -> int:
    text = str(value)
    units = {"Ki": 1024, "Mi": 1024**2, "Gi": GIB, "Ti": 1024**4, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


@pytest.mark.parametrize("values_file", SCENARIOS, ids=SCENARIO_IDS)
def test_helm_lint(helm: str, values_file: Path | None) -> None:
    proc = run_helm(helm, "lint", "--strict", str(CHART), *values_args(values_file))
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
        if d["kind"] in RAY_KINDS and "authOptions" in cluster_spec(d)
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
        proc = run_helm(helm, "template", "t", str(CHART), "--set-string",
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
    proc = run_helm(
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
