"""KubeRay compatibility and the server-side dry run (hazard/deploy/compat.py, Helm.dry_run).

The real `kubernetes` client reads the operator Deployment from the stand-in API server
(tests/helpers/deploy.py) over HTTP with the kube context's token; the supported range comes
from the real chart's Chart.yaml through the helm stand-in's `helm show chart`. The expected
verdicts are written out by hand, not computed with the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hazard.deploy.cluster import DeploymentInfo, KubeReader
from hazard.deploy.compat import (
    KubeRayOperator,
    check_operator,
    image_tag,
    operator_version,
    supported_kuberay,
    version_of,
)
from hazard.deploy.helm import Helm, HelmError
from hazard.deploy.plan import load_plan
from hazard.deploy.target import ClusterTarget
from tests.helpers.deploy import (
    NAMESPACE,
    RELEASE,
    KubeStandIn,
    fail_on,
    helm_calls,
    install_helm,
    releases,
    seed_release,
    write_kubeconfig,
)

REPO = Path(__file__).resolve().parents[2]
CHART = str(REPO / "charts" / "hazard-cascade")
CONTEXT = "hazard-staging"
RANGE = ">=1.5.0, <1.8.0"  # charts/hazard-cascade/Chart.yaml, hazard-cascade/kuberay-versions
DEPLOYMENT_PATH = "/apis/apps/v1/namespaces/kuberay-system/deployments/kuberay-operator"


@pytest.fixture
def kube(tmp_path: Path, monkeypatch) -> KubeStandIn:
    server = KubeStandIn(token="token-staging")
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kc", {CONTEXT: server})))
    yield server
    server.close()


@pytest.fixture
def helm_env(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """The helm stand-in on PATH; returns (state file, call log)."""
    state, log = tmp_path / "helm-state.json", tmp_path / "helm-calls.jsonl"
    for var, value in install_helm(tmp_path / "bin", state, log).items():
        monkeypatch.setenv(var, value)
    return state, log


def _check(kube: KubeStandIn, operator: KubeRayOperator | None = None) -> tuple[bool, str]:
    supported = supported_kuberay(Helm(RELEASE, NAMESPACE, CONTEXT, "configmap"), CHART, None)
    return check_operator(KubeReader(CONTEXT, NAMESPACE), operator or KubeRayOperator(), supported)


def test_the_range_is_the_charts_annotation(helm_env) -> None:
    chart = yaml.safe_load((Path(CHART) / "Chart.yaml").read_text())
    assert chart["annotations"]["hazard-cascade/kuberay-versions"] == RANGE
    supported = supported_kuberay(Helm(RELEASE, NAMESPACE, CONTEXT, "configmap"), CHART, None)
    assert str(supported) == "<1.8.0,>=1.5.0"
    assert helm_calls(helm_env[1])[-1]["argv"][1:4] == ["show", "chart", CHART]


def test_a_chart_without_the_annotation_is_an_error(helm_env, tmp_path: Path) -> None:
    chart = tmp_path / "chart"
    chart.mkdir()
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: x\nversion: 0.1.0\n")
    with pytest.raises(HelmError, match="no annotation hazard-cascade/kuberay-versions"):
        supported_kuberay(Helm(RELEASE, NAMESPACE, CONTEXT, "configmap"), str(chart), None)


@pytest.mark.parametrize(
    ("tag", "ok"),
    [
        ("v1.7.0", True),
        ("v1.5.0", True),
        ("v1.6.2", True),
        ("v1.4.2", False),
        ("v1.8.0", False),
        ("v1.7.0-rc.0", False),  # pre-releases are outside the range
    ],
)
def test_operator_version_against_the_range(kube, helm_env, tag: str, ok: bool) -> None:
    kube.operator_image = f"quay.io/kuberay/operator:{tag}"
    passed, detail = _check(kube)
    assert passed is ok, detail
    assert f"image quay.io/kuberay/operator:{tag}" in detail
    assert "deployment kuberay-system/kuberay-operator (context hazard-staging)" in detail
    assert "the chart supports <1.8.0,>=1.5.0" in detail
    # the real client asked the stand-in, with the context's token
    method, path, headers, _ = kube.requests[-1]
    assert (method, path) == ("GET", DEPLOYMENT_PATH)
    assert {k.lower(): v for k, v in headers.items()}["authorization"] == "Bearer token-staging"


def test_an_old_operator_is_refused_naming_version_and_range(kube, helm_env) -> None:
    kube.operator_image = "quay.io/kuberay/operator:v1.4.2"
    ok, detail = _check(kube)
    assert not ok
    assert detail.startswith("KubeRay operator 1.4.2 (image quay.io/kuberay/operator:v1.4.2")
    assert "NOT supported: the chart supports <1.8.0,>=1.5.0" in detail
    assert "hazard-cascade/kuberay-versions" in detail


def test_a_missing_operator_is_a_clear_failure(kube, helm_env) -> None:
    kube.operator_status = 404
    ok, detail = _check(kube)
    assert not ok
    assert "get deployment kuberay-system/kuberay-operator: HTTP 404" in detail
    assert "install it (k8s/README.md) or set kuberayOperator.namespace/deployment" in detail
    ok, detail = _check(kube, KubeRayOperator(namespace="ray-system"))
    assert not ok and "get deployment ray-system/kuberay-operator: HTTP 404" in detail
    assert kube.requests[-1][1] == DEPLOYMENT_PATH.replace("kuberay-system", "ray-system")


def test_a_forbidden_read_names_the_rbac_to_grant(kube, helm_env) -> None:
    kube.operator_status = 403
    ok, detail = _check(kube)
    assert not ok
    assert "HTTP 403" in detail
    assert "needs `get` on deployments.apps kuberay-operator in namespace kuberay-system" in detail
    assert "k8s/rbac-kuberay-operator.yaml" in detail and "no Secrets" in detail
    assert (REPO / "k8s" / "rbac-kuberay-operator.yaml").is_file()


def test_labels_stand_in_for_a_tag_that_is_not_a_version(kube, helm_env) -> None:
    kube.operator_image = "registry.local:5000/kuberay/operator:nightly"
    kube.operator_labels = {"app.kubernetes.io/version": "v1.6.1"}
    ok, detail = _check(kube)
    assert ok and "KubeRay operator 1.6.1 (label app.kubernetes.io/version of deployment" in detail
    kube.operator_labels = {"helm.sh/chart": "kuberay-operator-1.4.0"}
    ok, detail = _check(kube)
    assert not ok and "KubeRay operator 1.4.0 (label helm.sh/chart=kuberay-operator-1.4.0" in detail
    kube.operator_labels = {}
    ok, detail = _check(kube)
    assert not ok
    assert detail.startswith("KubeRay operator version unreadable: deployment kuberay-system/")
    assert "registry.local:5000/kuberay/operator:nightly (tag not a version)" in detail


def test_operator_version_reads_the_operator_container(kube) -> None:
    found = operator_version(KubeReader(CONTEXT, NAMESPACE), KubeRayOperator())
    assert str(found.version) == "1.7.0"
    info = DeploymentInfo(
        images={"sidecar": "envoy:v9.9.9", "kuberay-operator": "quay.io/kuberay/operator:v1.5.2"},
        labels={},
    )
    assert str(version_of(info, "d").version) == "1.5.2"


@pytest.mark.parametrize(
    ("image", "tag"),
    [
        ("quay.io/kuberay/operator:v1.7.0", "v1.7.0"),
        ("localhost:5000/kuberay/operator", ""),
        ("localhost:5000/kuberay/operator:v1.6.0@sha256:" + "a" * 64, "v1.6.0"),
        ("kuberay/operator@sha256:" + "b" * 64, ""),
        ("operator", ""),
    ],
)
def test_image_tag(image: str, tag: str) -> None:
    assert image_tag(image) == tag


# ------------------------------------------------------------------ server-side dry run


def _target(tmp_path: Path) -> ClusterTarget:
    spec = {
        "chart": CHART,
        "release": RELEASE,
        "serveRunning": {"timeoutSeconds": 5, "intervalSeconds": 0.1},
        "healthGate": {"timeoutSeconds": 5, "intervalSeconds": 0.1, "successesRequired": 1},
        "clusters": [
            {
                "name": "staging",
                "context": CONTEXT,
                "namespace": NAMESPACE,
                "serviceUrl": "http://127.0.0.1:9",
            }
        ],
    }
    path = tmp_path / "clusters.yaml"
    path.write_text(yaml.safe_dump(spec))
    plan = load_plan(path)
    return ClusterTarget(plan, plan.clusters[0])


def test_preflight_is_a_server_dry_run_that_records_nothing(helm_env, tmp_path: Path) -> None:
    state, log = helm_env
    seed_release(state, CONTEXT, revisions=3)
    before = json.loads(state.read_text())
    manifest = _target(tmp_path).preflight(["image.tag=0.2.0"])
    assert "image: ghcr.io/hazard-cascade/hazard-cascade:0.2.0" in manifest
    argv = helm_calls(log)[-1]["argv"]
    assert argv[:5] == ["helm", "upgrade", "--install", RELEASE, CHART]
    assert {"--dry-run=server", "--hide-secret", "--output"} <= set(argv)
    assert argv[-4:] == ["--namespace", NAMESPACE, "--kube-context", CONTEXT]
    assert json.loads(state.read_text()) == before  # no revision recorded
    assert [r["revision"] for r in releases(state)[f"{CONTEXT}/{NAMESPACE}/{RELEASE}"]] == [1, 2, 3]


def test_a_refused_dry_run_raises_with_helms_message(helm_env, tmp_path: Path) -> None:
    state, _ = helm_env
    fail_on(state, CONTEXT, "dry-run")
    with pytest.raises(HelmError, match="exited 1: Error: dry-run failed: Unauthorized"):
        _target(tmp_path).preflight([])


def test_real_helm_accepts_the_dry_run_flags(tmp_path: Path, monkeypatch) -> None:
    """Helm 4 itself parses the dry run's command line: with no API server it gets as far as
    connecting (an unknown flag would fail before)."""
    binary = REPO / ".venv" / "bin" / "helm"
    if not binary.is_file():
        pytest.fail("helm not found in .venv/bin: run `make setup` (scripts/install_helm.py)")
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": "c", "user": "u"}}],
        "current-context": CONTEXT,
    }
    (tmp_path / "kc").write_text(yaml.safe_dump(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kc"))
    helm = Helm(RELEASE, NAMESPACE, CONTEXT, "configmap", binary=str(binary))
    with pytest.raises(HelmError) as err:
        helm.dry_run(CHART, None, None, ["image.tag=0.2.0"])
    assert "cluster unreachable" in str(err.value) and "unknown flag" not in str(err.value)
    assert "hazard-cascade/kuberay-versions" in helm.show_chart(CHART, None)
