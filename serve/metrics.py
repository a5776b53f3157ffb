"""The app's Prometheus metrics, through Ray's metrics API.

Ray's metrics agent on each node exports them (port 8080 by default, where a RayService's
PodMonitor scrapes) as `ray_<name>`, counters with `_total`. Serve's flavour of
`ray.util.metrics` adds the `application`, `deployment` and `replica` labels. One set per
process, created on first use inside the replica (a metric lives where it is recorded).
"""

from __future__ import annotations

import functools

from ray.serve.metrics import Counter, Gauge, Histogram

LATENCY_BOUNDS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
BATCH_BOUNDS = [1, 2, 4, 8, 16, 32, 64]


class IngressMetrics:
    """Recorded by the HTTP ingress."""

    def __init__(self) -> None:
        self.requests = Counter(
            "hazard_requests",
            description="HTTP requests by route template and status code.",
            tag_keys=("route", "status"),
        )
        self.stage_latency = Histogram(
            "hazard_stage_latency_seconds",
            description="Seconds per stage: decode, base, specialist, fusion; total per image.",
            boundaries=LATENCY_BOUNDS_S,
            tag_keys=("stage",),
        )
        self.scored = Counter(
            "hazard_images_scored",
            description="Images scored, by whether the specialist was consulted.",
            tag_keys=("escalated",),
        )
        self.queue_depth = Gauge(
            "hazard_queue_depth",
            description="Images admitted to the models (in_flight) and waiting for admission.",
            tag_keys=("state",),
        )
        self.refused = Counter(
            "hazard_images_refused",
            description="Images refused before scoring, by reason.",
            tag_keys=("reason",),
        )
        self.rejected = Counter(
            "hazard_admission_rejected",
            description="Requests answered 503 by admission: queue_full or deadline.",
            tag_keys=("reason",),
        )

    def stage(self, name: str, seconds: float) -> None:
        self.stage_latency.observe(seconds, tags={"stage": name})

    def queue(self, in_flight: int, waiting: int) -> None:
        self.queue_depth.set(in_flight, tags={"state": "in_flight"})
        self.queue_depth.set(waiting, tags={"state": "waiting"})


class ModelMetrics:
    """Recorded by a model replica."""

    def __init__(self) -> None:
        self.batch_size = Histogram(
            "hazard_model_batch_size",
            description="Images per model forward.",
            boundaries=BATCH_BOUNDS,
            tag_keys=("model",),
        )


@functools.cache
def ingress_metrics() -> IngressMetrics:
    return IngressMetrics()


@functools.cache
def model_metrics() -> ModelMetrics:
    return ModelMetrics()
