"""The builder of the one-task application: a bundle of any closed-answer task behind
`POST /v1/answer` (`serve.task_ingress`), the cascade's app (`serve.app`) left as it is.

`build_task_app(args) -> Application` takes a `TaskServeConfig` dict, so it runs from Python,
from `serve run serve.task_app:build_task_app`, from a RayService `import_path` and from
`hazard serve --task-config …`. A bundle whose task has no closed answer set is refused here,
before any replica starts (BundleError)."""

from __future__ import annotations

from ray import serve

from hazard.config.serve import TaskServeConfig
from hazard.infra.bundle import pixel_budget, read_meta
from hazard.model.bundle_answerer import closed_task
from serve.app import (
    driver_env,
    in_ray_worker,
    ingress_deployment_options,
    model_deployment_options,
)
from serve.auth import replica_api_key
from serve.task_ingress import TaskAPI
from serve.task_model import TaskModel


def compose_task_app(
    cfg: TaskServeConfig, *, model_options: dict | None = None
) -> serve.Application:
    """The application graph, every deployment option from `cfg` (`model_options` override
    the model deployment's, as `serve.app.compose_app`'s do)."""
    meta = read_meta(cfg.model.model_uri)
    spec = closed_task(meta, cfg.model.model_uri)
    pressure = {"backpressure_config": {"retry_after_s": cfg.retry_after_s}}
    options = {**model_deployment_options(cfg, cfg.replicas), **pressure, **(model_options or {})}
    model = TaskModel.options(name="TaskModel", **options).bind(
        cfg.model.model_dump(),
        cfg.engine,
        cfg.dtype,
        cfg.model_batch_size,
        cfg.model_batch_wait_s,
        cfg.max_images,
        cfg.health_probe_cache_s,
        cfg.vllm.model_dump(),
    )
    ingress = TaskAPI.options(**ingress_deployment_options(cfg), **pressure)
    return ingress.bind(model, cfg.model_dump(), spec.name, pixel_budget((meta,)))


def build_task_app(args: dict) -> serve.Application:
    """The one-task Serve application for a `TaskServeConfig` dict; auth fails closed as
    `serve.app.build_app` says."""
    cfg = TaskServeConfig.model_validate(args)
    if not in_ray_worker():
        replica_api_key(cfg, driver_env())
    return compose_task_app(cfg)
