"""`hazard deploy`'s parts without any server: the clusters file, KubeRay status, score checks,
the manifest diff, the bundled smoke image and the deployer's RBAC."""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path

import pytest
import yaml

from hazard.config import ConfigError
from hazard.config.serve import ServeConfig
from hazard.deploy.cluster import ServiceState
from hazard.deploy.dryrun import manifest_diff
from hazard.deploy.gates import score_problems
from hazard.deploy.lock import lease_name
from hazard.deploy.plan import load_plan
from hazard.deploy.target import rayservices
from hazard.infra.images import decode_image
from tests.helpers.deploy import rayservice, valid_answer

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- clusters file


def test_the_repository_clusters_file_loads_with_paths_from_the_repo_root():
    plan = load_plan(REPO / "k8s" / "clusters.yaml")
    assert plan.chart == str(REPO / "charts" / "hazard-cascade")
    assert [c.name for c in plan.clusters] == ["staging", "prod-eu", "prod-us"]
    assert [c.values for c in plan.clusters] == [
        REPO / "k8s" / "values" / f"{name}.yaml" for name in ("staging", "prod-eu", "prod-us")
    ]
    assert [(w.name, [c.name for c in w.clusters], w.max_parallel) for w in plan.waves] == [
        ("canary", ["staging"], 1),
        ("production", ["prod-eu", "prod-us"], 2),
    ]
    assert plan.analysis is not None and all(c.prometheus_url for c in plan.clusters)
    assert plan.helm_driver == "configmap"
    assert plan.smoke_image == REPO / "hazard" / "deploy" / "smoke.png"
    assert all(not c.service_url.endswith(("/", "/readyz")) for c in plan.clusters)


def _spec(**changes) -> dict:
    spec = {
        "baseDir": "..",
        "chart": "chart",
        "release": "hc",
        "serveRunning": {"timeoutSeconds": 60, "intervalSeconds": 5},
        "healthGate": {"timeoutSeconds": 60, "intervalSeconds": 5, "successesRequired": 2},
        "clusters": [
            {"name": "a", "context": "ctx-a", "namespace": "ns", "serviceUrl": "http://a:8000/"},
            {"name": "b", "context": "ctx-b", "namespace": "ns", "values": "vals/b.yaml",
             "serviceUrl": "https://b.example.com"},
        ],
    }  # fmt: skip
    spec.update(changes)
    return spec


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """tmp/chart/Chart.yaml, tmp/vals/b.yaml and the clusters file in tmp/conf/."""
    (tmp_path / "chart").mkdir()
    (tmp_path / "chart" / "Chart.yaml").write_text("name: x\n")
    (tmp_path / "vals").mkdir()
    (tmp_path / "vals" / "b.yaml").write_text("{}\n")
    (tmp_path / "conf").mkdir()
    return tmp_path / "conf" / "clusters.yaml"


def _write(path: Path, spec) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def test_relative_paths_start_at_base_dir_and_defaults_apply(layout: Path):
    plan = load_plan(_write(layout, _spec()))
    root = layout.parent.parent
    assert plan.chart == str(root / "chart")
    assert [c.values for c in plan.clusters] == [None, root / "vals" / "b.yaml"]
    assert plan.clusters[0].service_url == "http://a:8000"
    assert (plan.smoke.api_key_env, plan.smoke.timeout_seconds) == ("HAZARD_API_KEY", 120)
    assert plan.helm_driver == "configmap"


def test_only_keeps_the_file_order(layout: Path):
    plan = load_plan(_write(layout, _spec()), only=["b", "a"])
    assert [c.name for c in plan.clusters] == ["a", "b"]
    assert [c.name for c in load_plan(layout, only=["b"]).clusters] == ["b"]


def test_an_oci_chart_is_passed_through_with_its_version(layout: Path):
    plan = load_plan(_write(layout, _spec(chart="oci://r.example/hc", chartVersion="1.2.3")))
    assert (plan.chart, plan.chart_version) == ("oci://r.example/hc", "1.2.3")


def _cluster(**changes) -> dict:
    return {"name": "a", "context": "c", "namespace": "ns", "serviceUrl": "http://a", **changes}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"healthUrl": "x"}, "\n  healthUrl: Extra inputs are not permitted"),
        ({"release": "Bad_Name"}, "release: String should match pattern"),
        ({"helmDriver": "sql"}, "helmDriver: Input should be 'configmap' or 'secret'"),
        ({"healthGate": {"timeoutSeconds": 1, "intervalSeconds": 1, "successesRequired": 0}},
         "healthGate.successesRequired: Input should be greater than or equal to 1"),
        ({"clusters": []}, "clusters: List should have at least 1 item"),
        ({"clusters": [_cluster(), _cluster(context="d")]}, "repeated: a"),
        ({"clusters": [_cluster(serviceUrl="a.example.com")]},
         "clusters.0.serviceUrl: String should match pattern"),
        ({"clusters": [_cluster(healthUrl="http://a/readyz")]},
         "clusters.0.healthUrl: Extra inputs are not permitted"),
        ({"chartVersion": "1.0.0"}, "chartVersion applies to an oci:// chart only"),
        ({"chart": "nochart"}, "chart 'nochart' not found"),
        ({"clusters": [_cluster(values="vals/missing.yaml")]},
         "clusters.a.values 'vals/missing.yaml' not found"),
        ({"smoke": {"image": "none.png"}}, "smoke.image 'none.png' not found"),
    ],
)  # fmt: skip
def test_a_bad_clusters_file_names_the_field(layout: Path, changes: dict, message: str):
    with pytest.raises(ConfigError) as exc:
        load_plan(_write(layout, _spec(**changes)))
    assert message in str(exc.value)
    assert str(layout) in str(exc.value)


def test_a_chart_folder_without_chart_yaml_is_refused(layout: Path):
    (layout.parent.parent / "chart" / "Chart.yaml").unlink()
    with pytest.raises(ConfigError, match="has no Chart.yaml"):
        load_plan(_write(layout, _spec()))


@pytest.mark.parametrize(
    "content, message",
    [(None, "clusters file not found"), ("- a\n", "top level must be a mapping, got list"),
     ("a: [\n", "not valid YAML")],
)  # fmt: skip
def test_an_unreadable_clusters_file_is_refused(layout: Path, content, message):
    if content is not None:
        layout.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_plan(layout)


def test_only_an_unknown_cluster_lists_the_known_ones(layout: Path):
    with pytest.raises(ConfigError, match=r"no cluster named z \(clusters: a, b\)"):
        load_plan(_write(layout, _spec()), only=["a", "z"])


# ----------------------------------------------------------------------------- KubeRay status


APPS = ["hazard-cascade"]


@pytest.mark.parametrize(
    "obj, blocker",
    [
        (rayservice(generation=3, observed=2), "operator has not reconciled generation 3 yet"),
        (rayservice(upgrading="True"), "UpgradeInProgress (BothActivePendingClustersExist)"),
        (rayservice(ready="False", ready_reason="Initializing"), "Ready=False (Initializing)"),
        (rayservice(app_status="DEPLOYING"), "app hazard-cascade DEPLOYING"),
        (rayservice(app_status="DEPLOY_FAILED"), "app hazard-cascade DEPLOY_FAILED"),
        (rayservice(), None),
    ],
)
def test_a_rayservice_runs_only_when_reconciled_ready_not_upgrading_and_apps_running(obj, blocker):
    state = ServiceState.from_object(obj)
    assert state.blocker(APPS) == blocker
    assert state.failure() is None


def test_a_missing_app_and_a_rollback_in_progress_block():
    obj = rayservice()
    assert ServiceState.from_object(obj).blocker(["other-app"]) == "app other-app absent"
    obj["status"]["conditions"].append(
        {"type": "RollbackInProgress", "status": "True", "reason": "R", "message": ""}
    )
    assert ServiceState.from_object(obj).blocker(APPS) == "RollbackInProgress (R)"


def test_no_status_yet_blocks_and_a_terminal_ready_reason_fails():
    fresh = {"metadata": {"name": "hc", "generation": 1}}
    expected = "operator has not reconciled generation 1 yet"
    assert ServiceState.from_object(fresh).blocker(APPS) == expected
    timed_out = rayservice(ready="False", ready_reason="InitializingTimeout")
    assert ServiceState.from_object(timed_out).failure() == "Ready=False (InitializingTimeout): "


def test_describe_names_generation_conditions_apps_and_clusters():
    state = ServiceState.from_object(rayservice(upgrading="True", pending="hc-new"))
    assert state.describe() == (
        "generation 2/2 Ready=True(NonZeroServeEndpoints) "
        "UpgradeInProgress=True(BothActivePendingClustersExist); hazard-cascade=RUNNING; "
        "cluster hazard-cascade-abcde (pending hc-new)"
    )


# ----------------------------------------------------------------------------- score answers


def test_a_valid_score_has_no_problem():
    assert score_problems(valid_answer()) == []


def _answer(**changes) -> dict:
    answer = valid_answer()
    answer.update(changes)
    return answer


@pytest.mark.parametrize(
    "answer, problem",
    [
        ([1], "answer is list, not an object"),
        (_answer(probabilities={"no_risk": 1.0}), "probabilities must name exactly"),
        (_answer(probabilities={**valid_answer()["probabilities"], "low_risk": 0.7}),
         "probabilities sum to 1.100000, not 1"),
        (_answer(probabilities={**valid_answer()["probabilities"], "low_risk": 1.6,
                                "no_risk": -0.5}), "probabilities outside [0, 1]"),
        (_answer(risk_level="high_risk"), "risk_level high_risk is not the most probable label"),
        (_answer(risk_level="fire"), "risk_level 'fire' is not one of the labels"),
        (_answer(hazard_score=1.5), "hazard_score 1.5 is not in [0, 1]"),
        (_answer(hazard_score=None), "hazard_score None is not in [0, 1]"),
        (_answer(escalated="no"), "escalated is not a boolean"),
        (_answer(models=[]), "models is empty"),
    ],
)  # fmt: skip
def test_an_invalid_score_is_named(answer, problem):
    assert any(problem in p for p in score_problems(answer)), score_problems(answer)


# ----------------------------------------------------------------------------- manifests


MANIFEST = """---
# Source: c/templates/sa.yaml
apiVersion: v1
kind: ServiceAccount
metadata:
  name: hc
---
# Source: c/templates/rayservice.yaml
apiVersion: ray.io/v1
kind: RayService
metadata:
  name: hc
spec:
  serveConfigV2: |
    applications:
      - name: first
        import_path: serve.app:build_app
      - name: second
        import_path: other:app
"""


def test_rayservices_and_their_apps_are_read_from_a_manifest():
    assert rayservices(MANIFEST) == {"hc": ["first", "second"]}
    assert rayservices("") == {}


def test_the_manifest_diff_is_unified_with_named_sides():
    changed = MANIFEST.replace("name: second", "name: third")
    diff = manifest_diff(MANIFEST, changed, "hc", 4)
    assert diff.splitlines()[:2] == ["--- hc revision 4", "+++ hc (would apply)"]
    assert [ln for ln in diff.splitlines() if ln[:1] in "+-" and ln[:3] not in ("---", "+++")] == [
        "-      - name: second",
        "+      - name: third",
    ]
    assert manifest_diff(MANIFEST, MANIFEST, "hc", 4) == ""
    assert manifest_diff("", MANIFEST, "hc", None).startswith("--- hc (not installed)")


# ----------------------------------------------------------------------------- smoke image


def test_the_smoke_image_is_package_data_that_serving_decodes():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "smoke.png" in pyproject["tool"]["setuptools"]["package-data"]["hazard.deploy"]
    image = resources.files("hazard.deploy") / "smoke.png"
    data = image.read_bytes()
    cfg = ServeConfig.model_fields
    decoded = decode_image(
        data,
        max_bytes=cfg["max_image_bytes"].default,
        max_pixels=cfg["max_image_pixels"].default,
        pixel_budget=None,
    )
    assert decoded.image.size == (112, 112) and decoded.image.mode == "RGB"
    assert len(data) < 32_000


# ----------------------------------------------------------------------------- RBAC


# kind -> (API group, resource) of every kind the chart can render
RESOURCES = {
    "ServiceAccount": ("", "serviceaccounts"),
    "NetworkPolicy": ("networking.k8s.io", "networkpolicies"),
    "Ingress": ("networking.k8s.io", "ingresses"),
    "PodDisruptionBudget": ("policy", "poddisruptionbudgets"),
    "PodMonitor": ("monitoring.coreos.com", "podmonitors"),
    "RayService": ("ray.io", "rayservices"),
    "RayJob": ("ray.io", "rayjobs"),
}


def _granted() -> set[tuple[str, str, str]]:
    docs = {d["kind"]: d for d in yaml.safe_load_all((REPO / "k8s" / "rbac.yaml").read_text())}
    return {
        (group, res, verb)
        for rule in docs["Role"]["rules"]
        for group in rule["apiGroups"]
        for res in rule["resources"]
        for verb in rule["verbs"]
    }


def test_the_deployer_may_apply_every_kind_the_chart_renders():
    templates = (REPO / "charts" / "hazard-cascade" / "templates").glob("*.yaml")
    kinds = {k for t in templates for k in re.findall(r"^kind: (\w+)", t.read_text(), re.M)}
    assert kinds <= set(RESOURCES), f"add the new kinds to k8s/rbac.yaml: {kinds - set(RESOURCES)}"
    granted = _granted()
    for kind in kinds:
        group, res = RESOURCES[kind]
        for verb in ("get", "create", "patch", "delete"):  # Helm 4: server-side apply
            assert (group, res, verb) in granted, (kind, verb)


def test_the_deployer_may_do_what_the_rollout_does_and_read_no_secret():
    granted = _granted()
    used = {
        *(("", "configmaps", v) for v in ("get", "list", "create", "update", "delete")),
        ("ray.io", "rayservices", "get"),
        ("", "pods", "list"),
        ("", "events", "list"),
    }
    assert used <= granted, used - granted
    assert not [g for g in granted if g[1].startswith("secrets")]
    assert load_plan(REPO / "k8s" / "clusters.yaml").helm_driver == "configmap"


def test_the_deployer_may_hold_the_rollout_lease_and_no_other():
    """get/update/delete of the one Lease the lock uses (by name); create cannot be limited
    by name in Kubernetes RBAC; no list or watch."""
    docs = {d["kind"]: d for d in yaml.safe_load_all((REPO / "k8s" / "rbac.yaml").read_text())}
    rules = [r for r in docs["Role"]["rules"] if "leases" in r["resources"]]
    assert all(r["apiGroups"] == ["coordination.k8s.io"] for r in rules)
    name = lease_name(load_plan(REPO / "k8s" / "clusters.yaml").release)
    by_verb = {v: r.get("resourceNames") for r in rules for v in r["verbs"]}
    assert by_verb == {"get": [name], "update": [name], "delete": [name], "create": None}
