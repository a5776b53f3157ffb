"""The builder of the served application: base → (escalate?) → specialist → fusion.

`build_app(args) -> Application` builds it from a `ServeConfig` dict, so the same app runs from
Python (`serve.run(build_app(cfg))`), from `serve run serve.app:build_app …` and from a
RayService `import_path: serve.app:build_app`. The parts: `serve.model_deployment` (a model
replica), `serve.ingress` (the HTTP routes), `serve.schemas` (their bodies); the HTTP contract
is docs/architecture.md's.
"""

from __future__ import annotations

import logging
import os

from ray import serve

from hazard.config.serve import ModelReplicas, ServeConfig, ServingCommon
from hazard.core.cascade import FusionSpec
from hazard.core.labels import HIGH_RISK, RISK_LABELS
from hazard.infra.bundle import BundleMeta, check_calibration, pixel_budget, read_meta
from serve.auth import replica_api_key
from serve.ingress import HazardAPI
from serve.model_deployment import ModelScorer, batch_slots

log = logging.getLogger("ray.serve")


def specialist_fusion(cfg: ServeConfig, meta: BundleMeta) -> FusionSpec:
    """The fusion calibrated into the specialist bundle (`meta`, its metadata); the defaults
    (always consult the specialist) when it has none. CalibrationMismatch (the app does not
    start) when it was calibrated with another engine than `cfg.engine`, unless
    `allow_calibration_engine_mismatch`; other differences are logged."""
    for warning in check_calibration(
        meta,
        cfg.specialist.model_uri,
        cfg.engine,
        cfg.dtype,
        cfg.allow_calibration_engine_mismatch,
    ):
        log.warning("%s", warning)
    return meta.fusion_spec()


def model_deployment_options(cfg: ServingCommon, replicas: ModelReplicas) -> dict:
    """A model deployment's Serve options, all from the config."""
    in_flight = batch_slots(cfg, 1)
    return {
        "ray_actor_options": {"num_cpus": replicas.num_cpus, "num_gpus": replicas.num_gpus},
        "autoscaling_config": {
            "min_replicas": replicas.min_replicas,
            "initial_replicas": replicas.min_replicas,
            "max_replicas": replicas.max_replicas,
            "target_ongoing_requests": replicas.target_ongoing_requests,
            "upscale_delay_s": replicas.upscale_delay_s,
            "downscale_delay_s": replicas.downscale_delay_s,
        },
        # Admission keeps a replica's share at `in_flight`; the queue is a safety net (a batch
        # request over capacity, a replica lost) answered 503 by Serve when full.
        "max_ongoing_requests": in_flight,
        "max_queued_requests": 4 * in_flight * replicas.max_replicas,
        "health_check_period_s": cfg.health_check_period_s,
        "health_check_timeout_s": cfg.health_check_timeout_s,
        "logging_config": {"encoding": cfg.log_encoding},
    }


def ingress_deployment_options(cfg: ServingCommon) -> dict:
    """The ingress deployment's Serve options, all from the config."""
    adm = cfg.admission
    return {
        "num_replicas": cfg.ingress.num_replicas,
        "ray_actor_options": {"num_cpus": cfg.ingress.num_cpus},
        # Waiting requests are coroutines held by admission (its queue and deadline); Serve's
        # own limit sits above what admission can hold.
        "max_ongoing_requests": batch_slots(cfg, cfg.scorer_replicas.max_replicas)
        + adm.max_queue_images
        + 16,
        "max_queued_requests": adm.max_queue_images,
        "logging_config": {"encoding": cfg.log_encoding},
    }


def compose_app(
    cfg: ServeConfig, *, scorer_options: dict | None = None, ingress_options: dict | None = None
) -> serve.Application:
    """The application graph, every deployment option from `cfg`; the keyword options override
    them (tests use this to shrink queues and CPUs)."""
    base_meta, spec_meta = read_meta(cfg.base.model_uri), read_meta(cfg.specialist.model_uri)
    fusion = specialist_fusion(cfg, spec_meta)
    common = dict(
        engine=cfg.engine,
        dtype=cfg.dtype,
        batch_size=cfg.model_batch_size,
        batch_wait_s=cfg.model_batch_wait_s,
        health_cache_s=cfg.health_probe_cache_s,
        vllm=cfg.vllm.model_dump(),
    )
    # Requests Serve itself rejects (queue full) get Retry-After too.
    pressure = {"backpressure_config": {"retry_after_s": cfg.retry_after_s}}
    models = {}
    for role, name, replicas, labels in (
        ("base", "BaseScorer", cfg.base_replicas, tuple(RISK_LABELS)),
        ("specialist", "SpecialistScorer", cfg.specialist_replicas, (HIGH_RISK,)),
    ):
        options = {**model_deployment_options(cfg, replicas), **pressure, **(scorer_options or {})}
        models[role] = ModelScorer.options(name=name, **options).bind(
            getattr(cfg, role).model_dump(), role, **common, required_labels=labels
        )
    ingress = {**ingress_deployment_options(cfg), **pressure}
    ingress = HazardAPI.options(**dict(ingress, **(ingress_options or {})))
    return ingress.bind(
        models["base"],
        models["specialist"],
        cfg.model_dump(),
        fusion.to_dict(),
        pixel_budget((base_meta, spec_meta)),
    )


def in_ray_worker() -> bool:
    """Whether this process is a Ray worker (Serve's controller builds apps of a config file,
    `serve deploy`/RayService/`serve run FILE`, in a task), not a driver script."""
    from ray._private.worker import WORKER_MODE, global_worker

    return global_worker.mode == WORKER_MODE


def driver_env() -> dict[str, str]:
    """The env a driver's replicas get: its own, plus its Ray job's runtime_env `env_vars`."""
    import ray

    env = dict(os.environ)
    if ray.is_initialized():
        env.update((ray.get_runtime_context().runtime_env or {}).get("env_vars") or {})
    return env


def build_app(args: dict) -> serve.Application:
    """The Serve application for a `ServeConfig` dict (RayService `args`).

    Auth fails closed in two places. Every ingress replica checks its own env (the only check
    that holds on a cluster: a RayService's key is in the serve pods' env, from a Secret). A
    driver process (`serve run serve.app:build_app`, `serve.run(build_app(cfg))`) also checks
    its env and job runtime_env here, so it stops before starting Serve; inside a Ray worker
    (the controller building a config file's app) this check is skipped: that worker's env is
    not the replicas'."""
    cfg = ServeConfig.model_validate(args)
    if not in_ray_worker():
        replica_api_key(cfg, driver_env())
    return compose_app(cfg)
