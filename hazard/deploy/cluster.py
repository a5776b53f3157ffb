"""Cluster state through the Kubernetes API (the `kubernetes` client): read only.

What a rollout reads: the RayService's status (KubeRay 1.7 conditions `Ready`,
`UpgradeInProgress`, `RollbackInProgress`; `status.activeServiceStatus.applicationStatuses`),
the Ray pods of its clusters and the namespace's Warning events. The kube context comes from
the clusters file, the kubeconfig from `$KUBECONFIG` (default `~/.kube/config`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

RAY_GROUP, RAY_VERSION, RAYSERVICES = "ray.io", "v1", "rayservices"
RAY_CLUSTER_LABEL = "ray.io/cluster"  # set by KubeRay on every pod of a RayCluster
# Ready=False for these reasons stays so until the spec changes (KubeRay 1.7).
TERMINAL_REASONS = {"InitializingTimeout", "ValidationFailed"}
# Serve application states that only a config change or a replica recovery ends.
FAILING_APP_STATES = {"DEPLOY_FAILED", "UNHEALTHY"}
# Kubelet Warning events of a pod that cannot start: (reason, words one of which the message has).
POD_FAILURE_EVENTS = {
    "BackOff": ("restarting failed container", "back-off restarting", "pulling image"),
    "Failed": ("",),  # "Failed to pull image", "Error: secret ... not found", "Error: ..."
    "ErrImagePull": ("",),
    "ImagePullBackOff": ("",),
    "InspectFailed": ("",),
    "ErrImageNeverPull": ("",),
}
REQUEST_TIMEOUT_S = 15


class KubeError(RuntimeError):
    """A Kubernetes API call failed; `status` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status

    @property
    def denied(self) -> bool:
        """401/403: retrying will not help (see k8s/rbac.yaml)."""
        return self.status in (401, 403)


def kubeconfig() -> str:
    """The kubeconfig path list the kubernetes client and helm both read."""
    return os.environ.get("KUBECONFIG") or "~/.kube/config"


def contexts() -> set[str]:
    """Context names in the kubeconfig (empty when there is none)."""
    try:
        listed, _ = config.list_kube_config_contexts(config_file=kubeconfig())
    except config.ConfigException:
        return set()
    return {c["name"] for c in listed or []}


@dataclass(frozen=True)
class Condition:
    status: str
    reason: str
    message: str


@dataclass(frozen=True)
class ServiceState:
    """What KubeRay reports about one RayService."""

    name: str
    generation: int
    observed_generation: int
    conditions: dict[str, Condition]
    apps: dict[str, tuple[str, str]]  # app name -> (status, message), on the active cluster
    active_cluster: str
    pending_cluster: str
    endpoints: int
    pending_apps: dict[str, tuple[str, str]] = field(default_factory=dict)  # on the pending one

    @classmethod
    def from_object(cls, obj: dict) -> ServiceState:
        status = obj.get("status") or {}
        active = status.get("activeServiceStatus") or {}
        pending = status.get("pendingServiceStatus") or {}
        return cls(
            name=obj["metadata"]["name"],
            generation=int(obj["metadata"].get("generation") or 0),
            observed_generation=int(status.get("observedGeneration") or 0),
            conditions={
                c["type"]: Condition(c.get("status", ""), c.get("reason", ""), c.get("message", ""))
                for c in status.get("conditions") or []
            },
            apps={
                name: (a.get("status", ""), a.get("message", ""))
                for name, a in (active.get("applicationStatuses") or {}).items()
            },
            active_cluster=active.get("rayClusterName", ""),
            pending_cluster=pending.get("rayClusterName", ""),
            endpoints=int(status.get("numServeEndpoints") or 0),
            pending_apps={
                name: (a.get("status", ""), a.get("message", ""))
                for name, a in (pending.get("applicationStatuses") or {}).items()
            },
        )

    def _is(self, kind: str) -> bool:
        cond = self.conditions.get(kind)
        return cond is not None and cond.status == "True"

    def failure(self) -> str | None:
        """Why the RayService cannot become ready without a spec change, or None."""
        ready = self.conditions.get("Ready")
        if ready and ready.status == "False" and ready.reason in TERMINAL_REASONS:
            return f"Ready=False ({ready.reason}): {ready.message}"
        return None

    def failing_apps(self, apps: list[str]) -> str | None:
        """The new spec's apps in a failing state (DEPLOY_FAILED, UNHEALTHY), or None: those of
        the pending cluster during a blue/green upgrade, else those of the active cluster once
        the operator has reconciled the new generation."""
        if self.pending_cluster:
            statuses, where = self.pending_apps, f"pending cluster {self.pending_cluster}"
        elif self.observed_generation >= self.generation:
            statuses, where = self.apps, f"cluster {self.active_cluster or '-'}"
        else:
            return None
        bad = []
        for app in apps:
            status, message = statuses.get(app, ("", ""))
            if status in FAILING_APP_STATES:
                bad.append(f"app {app} {status}" + (f": {message}" if message else ""))
        return f"{'; '.join(bad)} ({where})" if bad else None

    def clusters(self) -> list[str]:
        """The RayClusters this RayService runs now (active, then pending)."""
        return [c for c in (self.active_cluster, self.pending_cluster) if c]

    def blocker(self, apps: list[str]) -> str | None:
        """What the RayService still waits for before `apps` serve the new spec; None: running."""
        if self.observed_generation < self.generation:
            return f"operator has not reconciled generation {self.generation} yet"
        for kind in ("UpgradeInProgress", "RollbackInProgress"):
            if self._is(kind):
                return f"{kind} ({self.conditions[kind].reason})"
        if not self._is("Ready"):
            ready = self.conditions.get("Ready")
            return f"Ready={ready.status} ({ready.reason})" if ready else "no Ready condition yet"
        for app in apps:
            status, message = self.apps.get(app, ("absent", ""))
            if status != "RUNNING":
                return f"app {app} {status}" + (f": {message}" if message else "")
        return None

    def describe(self) -> str:
        """One line: generation, conditions and app statuses."""
        conds = " ".join(f"{k}={c.status}({c.reason})" for k, c in sorted(self.conditions.items()))
        apps = " ".join(f"{k}={s}" for k, (s, _) in sorted(self.apps.items())) or "no apps"
        return (
            f"generation {self.observed_generation}/{self.generation} {conds or 'no conditions'}; "
            f"{apps}; cluster {self.active_cluster or '-'}"
            + (f" (pending {self.pending_cluster})" if self.pending_cluster else "")
        )


@dataclass(frozen=True)
class PodInfo:
    name: str
    phase: str
    ready: bool
    restarts: int


@dataclass(frozen=True)
class EventInfo:
    time: datetime
    object: str
    reason: str
    message: str

    def pod_cannot_start(self, ray_clusters: list[str]) -> bool:
        """A kubelet event saying a pod of one of `ray_clusters` crash-loops or cannot pull
        its image (KubeRay names a RayCluster's pods `<cluster>-...`)."""
        kind, _, name = self.object.partition("/")
        if kind != "Pod" or not any(name.startswith(f"{c}-") for c in ray_clusters):
            return False
        words = POD_FAILURE_EVENTS.get(self.reason, ())
        return any(w.lower() in self.message.lower() for w in words)


def _api_error(exc: Exception, what: str) -> KubeError:
    if isinstance(exc, ApiException):
        return KubeError(f"{what}: HTTP {exc.status} {exc.reason}", exc.status or 0)
    return KubeError(f"{what}: {exc}")


class KubeReader:
    """Read-only views of one namespace in one kube context."""

    def __init__(self, context: str, namespace: str):
        self.context = context
        self.namespace = namespace
        self._api: client.ApiClient | None = None

    def api(self) -> client.ApiClient:
        """The API client of this kube context (for the writers: the rollout's Lease)."""
        return self._client()

    def _client(self) -> client.ApiClient:
        if self._api is None:
            try:
                self._api = config.new_client_from_config(
                    config_file=kubeconfig(), context=self.context, persist_config=False
                )
            except config.ConfigException as exc:
                raise KubeError(f"kube context {self.context}: {exc}") from exc
        return self._api

    def rayservice(self, name: str) -> ServiceState | None:
        """The RayService's state, or None when it does not exist (yet)."""
        api = client.CustomObjectsApi(self._client())
        try:
            obj = api.get_namespaced_custom_object(
                RAY_GROUP,
                RAY_VERSION,
                self.namespace,
                RAYSERVICES,
                name,
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _api_error(exc, f"get rayservice {name}") from exc
        except HTTPError as exc:
            raise _api_error(exc, f"get rayservice {name}") from exc
        return ServiceState.from_object(obj)

    def pods(self, ray_cluster: str) -> list[PodInfo]:
        """The pods of one RayCluster (head and workers)."""
        api = client.CoreV1Api(self._client())
        try:
            items = api.list_namespaced_pod(
                self.namespace,
                label_selector=f"{RAY_CLUSTER_LABEL}={ray_cluster}",
                _request_timeout=REQUEST_TIMEOUT_S,
            ).items
        except (ApiException, HTTPError, ValueError) as exc:
            raise _api_error(exc, f"list pods of {ray_cluster}") from exc
        pods = []
        for p in items:
            ready = any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
            restarts = sum(c.restart_count for c in p.status.container_statuses or [])
            pods.append(PodInfo(p.metadata.name, p.status.phase, ready, restarts))
        return pods

    def warnings(self, since: datetime, limit: int | None = 8) -> list[EventInfo]:
        """The namespace's latest `limit` (None: all) Warning events at or after `since`,
        oldest first."""
        api = client.CoreV1Api(self._client())
        try:
            items = api.list_namespaced_event(
                self.namespace, field_selector="type=Warning", _request_timeout=REQUEST_TIMEOUT_S
            ).items
        except (ApiException, HTTPError, ValueError) as exc:
            raise _api_error(exc, "list events") from exc
        events = []
        for e in items:
            when = e.last_timestamp or e.event_time or e.metadata.creation_timestamp
            when = when or datetime.min.replace(tzinfo=UTC)
            if when >= since:
                obj = f"{e.involved_object.kind}/{e.involved_object.name}"
                events.append(EventInfo(when, obj, e.reason or "", e.message or ""))
        events.sort(key=lambda e: e.time)
        return events if limit is None else events[-limit:]

    def deployment(self, namespace: str, name: str) -> DeploymentInfo:
        """A Deployment's container images and labels (its own, then its pod template's), in
        any namespace (the KubeRay operator's); KubeError with the HTTP status on failure."""
        api = client.AppsV1Api(self._client())
        try:
            dep = api.read_namespaced_deployment(
                name, namespace, _request_timeout=REQUEST_TIMEOUT_S
            )
        except (ApiException, HTTPError, ValueError) as exc:
            raise _api_error(exc, f"get deployment {namespace}/{name}") from exc
        template = dep.spec.template
        return DeploymentInfo(
            images={c.name: c.image for c in template.spec.containers},
            labels={**(template.metadata.labels or {}), **(dep.metadata.labels or {})},
        )


@dataclass(frozen=True)
class DeploymentInfo:
    """What `KubeReader.deployment` reads: container name -> image, and labels."""

    images: dict[str, str]
    labels: dict[str, str]
