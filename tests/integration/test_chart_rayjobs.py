"""The chart's RayJobs: one per enabled job, each entrypoint parsed and its config loaded as
the job loads it, the jobs' paths chained and mounted, and each cluster holding what its
config asks of Ray.

Helpers and scenarios: tests/helpers/chart.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.chart import (
    CHART,
    CI_DIR,
    JOBS,
    K8S,
    RAY_KINDS,
    REPO,
    fit,
    pod_templates,
    ray_groups,
    ray_resources,
    render,
    under,
)

EXPECTED_ENTRYPOINTS = {
    "data-prep": "python -m ray_jobs.prepare_data --config configs/data_corridor.yaml",
    "stage1": "python -m ray_jobs.train --config configs/stage1_base_7b.yaml",
    "stage2": "python -m ray_jobs.train --config configs/stage2_specialist_3b.yaml",
    "calibrate": "python -m ray_jobs.calibrate --config configs/calibrate.yaml",
    "score-dataset": "python -m ray_jobs.score_dataset --config configs/score.yaml",
}


# job entrypoints, parsed and loaded as the jobs do


JOB_CONFIG_MODELS = {
    "ray_jobs.prepare_data": ("hazard.config.data", "DataConfig"),
    "ray_jobs.train": ("hazard.config.train", "TrainConfig"),
    "ray_jobs.calibrate": ("ray_jobs.calibrate", "CalibrateConfig"),
    "ray_jobs.score_dataset": ("hazard.config.score", "ScoreDatasetConfig"),
}


def job_config(entrypoint: str) -> tuple[str, Any]:
    """(module, validated config) of a RayJob entrypoint: its `--config` file read and its
    `--set` overrides applied by the project's loader, `hazard.config.load_config`, with the
    options every job declares (`add_config_args`). Raises on anything the job would refuse."""
    import argparse
    import importlib
    import shlex

    from hazard.config import add_config_args, load_config

    words = shlex.split(entrypoint)
    assert words[:2] == ["python", "-m"], entrypoint
    module = words[2]
    assert module in JOB_CONFIG_MODELS, f"{entrypoint}: unknown job module"
    parser = argparse.ArgumentParser(prog=module, exit_on_error=False)
    add_config_args(parser, "key=value")
    args, unknown = parser.parse_known_args(words[3:])
    assert not unknown, f"{entrypoint}: arguments the job does not take: {unknown}"
    where, name = JOB_CONFIG_MODELS[module]
    model = getattr(importlib.import_module(where), name)
    return module, load_config(REPO / args.config, model, args.overrides)


def local_paths(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(field, path) for every string of a config that names a local file or folder by an
    absolute path or a file:// URI (these must exist inside the pods)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from local_paths(value, f"{path}.{key}" if path else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from local_paths(value, f"{path}.{i}")
    elif isinstance(node, str) and (node.startswith("/") or node.startswith("file://")):
        yield path, node.removeprefix("file://")


def _rayjobs(helm: str, values_file: Path | None, *sets: str) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d
        for d in render(helm, values_file, *sets)
        if d["kind"] == "RayJob"
    }


def test_jobs_render_one_rayjob_per_enabled_job(helm: str) -> None:
    assert not _rayjobs(helm, None), "jobs must be opt-in"
    jobs = _rayjobs(helm, CI_DIR / "jobs-values.yaml")
    assert set(jobs) == set(EXPECTED_ENTRYPOINTS)
    assert jobs["data-prep"]["spec"]["entrypoint"] == (
        EXPECTED_ENTRYPOINTS["data-prep"]
        + " --set 'output_dir=/mnt/data/corridor/prepared' --set 'split.seed=3'"
    )
    assert jobs["calibrate"]["spec"]["entrypoint"] == (
        EXPECTED_ENTRYPOINTS["calibrate"] + " --set 'dtype=bfloat16'"
    )
    for stage in ("stage1", "stage2", "score-dataset"):
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
    for key, (component, module) in JOBS.items():
        (job,) = _rayjobs(helm, None, f"jobs.{key}.enabled=true").values()
        assert job["spec"]["entrypoint"] == EXPECTED_ENTRYPOINTS[component]
        assert job["spec"]["entrypoint"].startswith(f"python -m {module} ")


JOB_SCENARIOS = [
    (None, tuple(f"jobs.{key}.enabled=true" for key in JOBS)),
    (CI_DIR / "jobs-values.yaml", ()),
]


@pytest.mark.parametrize(("values_file", "sets"), JOB_SCENARIOS, ids=["defaults", "jobs-values"])
def test_job_entrypoints_load_as_the_jobs_load_them(
    helm: str, values_file: Path | None, sets: tuple[str, ...]
) -> None:
    """Every RayJob's `--config` + `--set` load into its job's config model, and the cluster it
    builds can hold what that config asks Ray for (Train workers, scoring actors, tasks)."""
    jobs = _rayjobs(helm, values_file, *sets)
    assert set(jobs) == set(EXPECTED_ENTRYPOINTS)
    for component, job in jobs.items():
        module, cfg = job_config(job["spec"]["entrypoint"])
        nodes = [ray_resources(g) for g in ray_groups(job)]
        nodes = [nodes[0]] + nodes[1:] * job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0][
            "replicas"
        ]
        if module == "ray_jobs.train":
            s = cfg.scaling
            demands = [{"CPU": s.cpus_per_worker, "GPU": float(s.use_gpu)}] * s.num_workers
        elif module == "ray_jobs.score_dataset":
            demands = [{"CPU": cfg.cpus_per_actor, "GPU": cfg.gpus_per_actor}] * cfg.num_actors
        elif module == "ray_jobs.calibrate":  # one task per bundle, at once
            demands = [{"CPU": cfg.cpus_per_task, "GPU": cfg.gpus_per_task}] * 2
        else:
            demands = [{"CPU": cfg.ray.num_cpus or 1.0}]
            c = cfg.consistency
            if c.enabled:
                demands += [{"CPU": c.cpus_per_actor, "GPU": c.gpus_per_actor}] * c.num_actors
        assert not fit(demands, nodes), f"{component}: {demands} do not fit {nodes}"


def test_job_entrypoint_check_catches_bad_overrides(helm: str) -> None:
    """`--set data.seed=3` (no such DataConfig key) made the data job exit 2; now a test fails."""
    from hazard.config import ConfigError

    for key, setting in (
        ("dataPrep", "data.seed=3"),
        ("stage1", "optim.max_step=10"),
        ("calibrate", "min_high_recall=2"),
        ("scoreDataset", "num_actors=zero"),
    ):
        (job,) = _rayjobs(
            helm, None, f"jobs.{key}.enabled=true", f"jobs.{key}.overrides[0]={setting}"
        ).values()
        with pytest.raises(ConfigError, match="invalid config"):
            job_config(job["spec"]["entrypoint"])


def test_job_paths_chain_and_are_mounted(helm: str) -> None:
    """In the training release the jobs hand their outputs on by the same paths (data ->
    stages -> calibration -> scoring), and every local path a config names is on a volume
    mounted in all of that RayJob's pods."""
    jobs = {
        c: (j, job_config(j["spec"]["entrypoint"])[1])
        for c, j in _rayjobs(helm, CI_DIR / "jobs-values.yaml").items()
    }
    cfg = {component: c for component, (_, c) in jobs.items()}
    data_dir = cfg["data-prep"].output_dir
    assert cfg["stage1"].data_dir == cfg["stage2"].data_dir == cfg["calibrate"].data_dir == data_dir
    base, spec = f"{cfg['stage1'].output_dir}/model", f"{cfg['stage2'].output_dir}/model"
    assert (cfg["calibrate"].base_uri, cfg["calibrate"].specialist_uri) == (base, spec)
    assert (cfg["score-dataset"].base_uri, cfg["score-dataset"].specialist_uri) == (base, spec)
    for component, (job, c) in jobs.items():
        for where, template in pod_templates(job):
            if where.endswith("submitter"):
                continue
            mounts = {
                m["mountPath"]
                for m in template["spec"]["containers"][0]["volumeMounts"]
                if m["mountPath"].startswith("/mnt/") and not m.get("readOnly")
            }
            for field, path in local_paths(c.model_dump(mode="json")):
                assert under(path, mounts), f"{component}: {field}={path} not mounted in {where}"


def test_chart_names_only_files_the_jobs_write() -> None:
    """File names the chart mentions (values, templates) are the ones the code writes or reads,
    or files of the repository (the Grafana dashboard)."""
    sources = "".join(
        p.read_text() for d in ("ray_jobs", "hazard", "serve") for p in (REPO / d).rglob("*.py")
    )
    chart = "".join(
        p.read_text() for p in CHART.rglob("*") if p.suffix in (".yaml", ".txt", ".tpl")
    )
    names = set(re.findall(r"[A-Za-z0-9_.-]+\.(?:json|parquet|csv)\b", chart))
    assert {"fusion.json", "calibration.json"} <= names
    repo_files = {"values.schema.json", *(p.name for p in (K8S / "grafana").glob("*.json"))}
    missing = sorted(n for n in names - repo_files if n not in sources)
    assert not missing, f"the chart names files no job writes or reads: {missing}"
