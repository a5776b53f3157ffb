"""One cluster of a rollout: its release through `helm`, its state through the Kubernetes API.

`ClusterTarget` is the one interface the rollout and the dry run use; it writes nothing to a
cluster except through helm, and reads nothing through helm that the API gives better.
"""

from __future__ import annotations

from datetime import datetime

import yaml

from hazard.deploy.cluster import EventInfo, KubeReader, PodInfo, ServiceState
from hazard.deploy.helm import Helm
from hazard.deploy.plan import ClusterPlan, Plan


def rayservices(manifest: str) -> dict[str, list[str]]:
    """RayService name -> its Serve application names, from a rendered manifest."""
    found = {}
    for doc in yaml.safe_load_all(manifest):
        if isinstance(doc, dict) and doc.get("kind") == "RayService":
            serve = yaml.safe_load(doc.get("spec", {}).get("serveConfigV2") or "") or {}
            found[doc["metadata"]["name"]] = [a["name"] for a in serve.get("applications", [])]
    return found


ROLES = ("base", "specialist")


def served_models(manifest: str) -> dict[str, dict[str, str]]:
    """role -> {"name", "version"} that the rendered Serve apps must answer with (their
    `args.base` / `args.specialist`, a ServeConfig's), from a rendered manifest. Two apps that
    name different versions for one role are an error."""
    found: dict[str, dict[str, str]] = {}
    for doc in yaml.safe_load_all(manifest):
        if not (isinstance(doc, dict) and doc.get("kind") == "RayService"):
            continue
        serve = yaml.safe_load(doc.get("spec", {}).get("serveConfigV2") or "") or {}
        for app in serve.get("applications", []):
            args = app.get("args") or {}
            for role in ROLES:
                model = args.get(role) or {}
                if "name" in model and "version" in model:
                    want = {"name": str(model["name"]), "version": str(model["version"])}
                    if found.setdefault(role, want) != want:
                        raise ValueError(
                            f"the release renders two {role} models: {found[role]} and {want}"
                        )
    return found


class ClusterTarget:
    """The release of the plan on one cluster."""

    def __init__(self, plan: Plan, cluster: ClusterPlan):
        self.plan = plan
        self.cluster = cluster
        self.helm = Helm(plan.release, cluster.namespace, cluster.context, plan.helm_driver)
        self.kube = KubeReader(cluster.context, cluster.namespace)

    @property
    def name(self) -> str:
        return self.cluster.name

    def deployed_revision(self) -> int | None:
        return self.helm.deployed_revision()

    def sets(self, sets: list[str]) -> list[str]:
        """The global `--set`s, then the cluster's own `set:` (conflicts are refused earlier)."""
        return [*sets, *self.cluster.sets]

    def upgrade_argv(self, sets: list[str]) -> list[str]:
        """The `helm upgrade --install` command line `upgrade` runs (for the dry run's plan)."""
        p = self.plan
        return self.helm.argv(
            *self.helm.upgrade_args(p.chart, p.chart_version, self.cluster.values, self.sets(sets))
        )

    def upgrade(
        self, sets: list[str]
    ) -> tuple[int, dict[str, list[str]], dict[str, dict[str, str]]]:
        """Upgrade; returns the new revision, the RayServices (with their apps) it applied and
        the models (role -> name, version) those apps must serve (`served_models`)."""
        p = self.plan
        revision, manifest = self.helm.upgrade(
            p.chart, p.chart_version, self.cluster.values, self.sets(sets)
        )
        return revision, rayservices(manifest), served_models(manifest)

    def preflight(self, sets: list[str]) -> str:
        """The upgrade rendered by helm against the cluster (`--dry-run=server`; nothing
        changes); returns its manifest, raises HelmError with helm's message."""
        p = self.plan
        return self.helm.dry_run(p.chart, p.chart_version, self.cluster.values, self.sets(sets))

    def render(self, sets: list[str], upgrade: bool) -> str:
        p = self.plan
        values = self.cluster.values
        return self.helm.template(p.chart, p.chart_version, values, self.sets(sets), upgrade)

    def deployed_manifest(self) -> str:
        return self.helm.manifest()

    def rollback(self, revision: int) -> None:
        self.helm.rollback(revision)

    def uninstall(self) -> None:
        self.helm.uninstall()

    def service_state(self, name: str) -> ServiceState | None:
        return self.kube.rayservice(name)

    def pods(self, ray_cluster: str) -> list[PodInfo]:
        return self.kube.pods(ray_cluster)

    def warnings(self, since: datetime, limit: int | None = 8) -> list[EventInfo]:
        return self.kube.warnings(since, limit)
