"""The chart's security: every pod template meets the `restricted` Pod Security Standard,
secrets are passed by reference only, images are pinned, GPUs only where asked, the
NetworkPolicy limits ingress, and no values file holds a secret-looking literal.

Helpers and scenarios: tests/helpers/chart.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hazard.config.serve import ServeConfig
from tests.helpers.chart import (
    CHART,
    CI_FILES,
    K8S,
    OVERLAYS,
    RAY_KINDS,
    REPO,
    SCENARIO_IDS,
    SCENARIOS,
    SECRET_KEY_NAME,
    cluster_spec,
    container_pss_violations,
    gpu_placement_violations,
    merged_values,
    pod_templates,
    pss_violations,
    render,
    secret_literals,
)


def values_files() -> list[Path]:
    return [CHART / "values.yaml", *CI_FILES, *OVERLAYS]


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
            cluster = cluster_spec(doc)
            automount = spec.get("automountServiceAccountToken")
            head_autoscales = (
                where.endswith(" head") and cluster and cluster.get("enableInTreeAutoscaling")
            )
            assert automount is bool(head_autoscales), (
                f"{where}: automountServiceAccountToken={automount}; only an autoscaling head "
                "may mount the token"
            )
        cluster = cluster_spec(doc)
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
