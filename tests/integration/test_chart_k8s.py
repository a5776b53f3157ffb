"""The plain manifests in k8s/: they load, the samples match the CRDs, the chart and the
restricted standard, RBAC and NetworkPolicy are as narrow as documented, and the staging
canary runs production's values scaled down.

Helpers and scenarios: tests/helpers/chart.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.helpers.chart import (
    K8S,
    NOT_MANIFESTS,
    OVERLAYS,
    RAY_KINDS,
    REPO,
    cluster_spec,
    crd_errors,
    leaves,
    merged_values,
    pod_templates,
    pss_violations,
    ray_resources,
    render,
    secret_literals,
)

K8S_YAML = sorted(K8S.rglob("*.yaml"))


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
        workers = cluster_spec(svc)["workerGroupSpecs"][0]
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
