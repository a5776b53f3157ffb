"""Every rendered object and k8s/ manifest against the Kubernetes schemas
(`kubernetes-validate`, strict) and checkov, with the accepted findings listed in
charts/hazard-cascade/checkov-accepted.yaml.

Helpers and scenarios: tests/helpers/chart.py.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import tomllib
from typing import Any

import pytest
import yaml

from tests.helpers.chart import (
    CHART,
    CI_DIR,
    K8S,
    NOT_MANIFESTS,
    RAY_KINDS,
    REPO,
    SCENARIOS,
    cluster_spec,
    pod_templates,
    render,
    scenario_id,
)

# tests: every manifest against the Kubernetes schemas, and a static security scan

# The Kubernetes version the manifests are checked against: the newest kubernetes-validate
# (pinned in pyproject's dev extra) carries schemas for; named in docs/chart.md.
KUBERNETES_VERSION = "1.37"


CHECKOV = REPO / ".venv" / "tools" / "checkov" / "bin" / "checkov"


CHECKOV_ACCEPTED = CHART / "checkov-accepted.yaml"


def ray_pods(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The Pods KubeRay creates from a Ray object's templates (one per template), with the
    autoscaler sidecar it adds to an autoscaling head."""
    cluster = cluster_spec(doc)
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
        out[scenario_id(values_file)] = render(helm, values_file)
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
