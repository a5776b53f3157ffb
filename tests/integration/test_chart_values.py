"""The chart's values schema: unknown keys and bad values fail with a clear message, every
values file validates, and every default key is declared and documented.

Helpers and scenarios: tests/helpers/chart.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest
import yaml

from tests.helpers.chart import (
    CHART,
    CI_FILES,
    OVERLAYS,
    deep_merge,
    run_helm,
    scenario_id,
)


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
    proc = run_helm(helm, "template", "t", str(CHART), "--set", setting)
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
    proc = run_helm(helm, "template", "t", str(CHART), *args)
    assert proc.returncode != 0, f"rendered with {settings}"
    assert message in proc.stderr, proc.stderr


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
        assert not errors, f"{scenario_id(path)}:\n" + "\n".join(errors)


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
