"""The chart's Serve application: its args are the values' ServeConfig unchanged and pass
Ray Serve's schema, replicas fit the worker group, GPU scenarios serve with vLLM in
bfloat16 on GPU nodes, and a model rollout changes only the Serve config.

Helpers and scenarios: tests/helpers/chart.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from hazard.config.serve import ServeConfig
from tests.helpers.chart import (
    CHART,
    CI_DIR,
    CI_FILES,
    GPU_TOLERATION,
    OVERLAYS,
    RAY_KINDS,
    REPO,
    SCENARIO_IDS,
    SCENARIOS,
    fit,
    gpu_placement_violations,
    merged_values,
    pod_templates,
    ray_resources,
    render,
    render_cached,
    scenario_id,
    under,
)


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


@pytest.mark.parametrize("values_file", SERVE_SCENARIOS, ids=map(scenario_id, SERVE_SCENARIOS))
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
    ServeConfig whose model URIs use a scheme hazard.infra.storage reads."""
    from hazard.infra.storage import SUPPORTED_SCHEMES, parse_uri

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
    from hazard.infra.storage import parse_uri

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


@pytest.mark.parametrize("values_file", SERVE_SCENARIOS, ids=map(scenario_id, SERVE_SCENARIOS))
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


@pytest.mark.parametrize("values_file", SERVE_SCENARIOS, ids=map(scenario_id, SERVE_SCENARIOS))
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


def test_the_deploy_version_gate_reads_the_rendered_model_versions(helm: str) -> None:
    """`hazard deploy` compares /v1/models with what the chart renders: the ServeConfig args'
    base and specialist names and versions (values.yaml), a --set included."""
    from hazard.deploy.target import served_models

    args = yaml.safe_load((CHART / "values.yaml").read_text())["serve"]["app"]["args"]
    want = {r: {"name": args[r]["name"], "version": str(args[r]["version"])} for r in args
            if r in ("base", "specialist")}  # fmt: skip
    assert set(want) == {"base", "specialist"}
    assert served_models(render_cached(helm, None, ())) == want
    bumped = served_models(render_cached(helm, None, ("serve.app.args.base.version=2.0.0",)))
    assert bumped == {**want, "base": {**want["base"], "version": "2.0.0"}}
