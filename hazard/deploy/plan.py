"""The clusters file (`k8s/clusters.yaml`): what a rollout deploys, where, and how it is gated.

Keys are camelCase like the chart's values; unknown keys are errors. Relative paths resolve
against `baseDir`, itself relative to the clusters file (`k8s/clusters.yaml` says `..`: the
repository root). `load_plan` returns a `Plan` whose paths are absolute and checked, its
clusters grouped in waves (a file without `waves` is one wave per cluster, in file order).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from hazard.config import ConfigError
from hazard.deploy.analysis import MetricAnalysis
from hazard.deploy.compat import KubeRayOperator
from hazard.deploy.spec import CamelModel

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
SMOKE_IMAGE = "smoke.png"


class Poll(CamelModel):
    """How long to wait for something, and how often to look."""

    timeout_seconds: float = Field(gt=0, description="Give up after this long.")
    interval_seconds: float = Field(gt=0, description="Seconds between two looks.")


class HealthGate(Poll):
    """`GET <serviceUrl>/readyz` must answer 200 this many times in a row within the timeout."""

    successes_required: int = Field(ge=1, description="Consecutive 200 answers needed to pass.")


class Smoke(CamelModel):
    """One `POST <serviceUrl>/v1/score` of an image; the answer must be a valid score."""

    api_key_env: str = Field(
        "HAZARD_API_KEY", min_length=1, description="Environment variable holding the API key."
    )
    timeout_seconds: float = Field(120, gt=0, description="Timeout of the request.")
    image: str | None = Field(
        None, description="Image to score; default: the one bundled with hazard (smoke.png)."
    )


class FailFast(CamelModel):
    """Signs that the new version cannot come up end the wait early."""

    seconds: float = Field(
        300,
        ge=0,
        description="A failing sign (an app DEPLOY_FAILED or UNHEALTHY, a Warning event of a "
        "new pod's crash loop or image pull) that lasts this long ends the wait and rolls back.",
    )


class Lock(CamelModel):
    """One rollout at a time per cluster: a Lease `<release>-rollout` in the namespace."""

    lease_seconds: float = Field(
        120, ge=10, description="Lease duration; renewed every third of it while rolling out."
    )


class Cluster(CamelModel):
    """One cluster of the rollout."""

    name: str = Field(pattern=DNS_LABEL, description="Name used by --only and the summary.")
    context: str = Field(min_length=1, description="Kube context (from the kubeconfig).")
    namespace: str = Field(pattern=DNS_LABEL, max_length=63, description="Release namespace.")
    values: str | None = Field(None, description="Values overlay passed as `helm -f`.")
    service_url: str = Field(
        pattern=r"^https?://[^\s/]+", description="Base URL of the serving app (no /readyz)."
    )
    sets: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        alias="set",
        description="`--set KEY=VALUE` for this cluster only; a global --set of the same key "
        "is an error, not a silent override.",
    )
    prometheus_url: str | None = Field(
        None,
        pattern=r"^https?://[^\s/]+",
        description="Prometheus that scrapes this cluster's app (metric analysis during soak).",
    )


class Wave(CamelModel):
    """Clusters upgraded together; the next wave starts when every cluster of this one passed
    its gates and its soak."""

    name: str = Field(pattern=DNS_LABEL, description="Name used in progress and the report.")
    clusters: list[str] = Field(min_length=1, description="Names of `clusters` entries.")
    max_parallel: int = Field(1, ge=1, description="Clusters of this wave upgraded at once.")
    soak_seconds: float = Field(
        0, ge=0, description="After its gates, each cluster keeps being checked this long."
    )


class ClustersFile(CamelModel):
    """The whole file."""

    base_dir: str = Field(".", description="Where relative paths start, relative to this file.")
    chart: str = Field(min_length=1, description="Chart folder, or an oci:// reference.")
    chart_version: str | None = Field(None, description="`--version` (oci:// charts only).")
    release: str = Field(pattern=DNS_LABEL, max_length=53, description="Helm release name.")
    helm_driver: Literal["configmap", "secret"] = Field(
        "configmap", description="Helm's storage driver (HELM_DRIVER): where release records live."
    )
    serve_running: Poll = Field(description="Wait for the RayService's Serve apps to run.")
    health_gate: HealthGate
    smoke: Smoke = Smoke()
    fail_fast: FailFast = FailFast()
    lock: Lock = Lock()
    kuberay_operator: KubeRayOperator = KubeRayOperator()
    analysis: MetricAnalysis | None = Field(
        None,
        description="Metric analysis at the end of each soak, for clusters with a prometheusUrl "
        "(their wave needs a soakSeconds).",
    )
    clusters: list[Cluster] = Field(min_length=1)
    waves: list[Wave] | None = Field(
        None, description="Ordered waves; default: one wave per cluster in file order."
    )

    @model_validator(mode="after")
    def _unique_names(self) -> ClustersFile:
        names = [c.name for c in self.clusters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"cluster names must be unique; repeated: {', '.join(dupes)}")
        if self.chart_version and not self.chart.startswith("oci://"):
            raise ValueError("chartVersion applies to an oci:// chart only")
        if self.waves is not None:
            _check_waves(self.waves, names)
        if self.analysis is not None:
            soaks = {c: w.soak_seconds for w in self.waves or [] for c in w.clusters}
            if unsoaked := [
                c.name for c in self.clusters if c.prometheus_url and not soaks.get(c.name)
            ]:
                raise ValueError(
                    "analysis needs a soak to measure: the waves of "
                    f"{', '.join(unsoaked)} (with a prometheusUrl) have no soakSeconds"
                )
        return self


def _check_waves(waves: list[Wave], clusters: list[str]) -> None:
    """Each cluster in exactly one wave, each wave name once, no unknown cluster."""
    wave_names = [w.name for w in waves]
    if dupes := sorted({n for n in wave_names if wave_names.count(n) > 1}):
        raise ValueError(f"wave names must be unique; repeated: {', '.join(dupes)}")
    placed = [c for w in waves for c in w.clusters]
    if unknown := [c for c in placed if c not in clusters]:
        raise ValueError(f"waves name unknown clusters: {', '.join(unknown)}")
    if twice := sorted({c for c in placed if placed.count(c) > 1}):
        raise ValueError(f"clusters in more than one wave: {', '.join(twice)}")
    if missing := [c for c in clusters if c not in placed]:
        raise ValueError(f"clusters in no wave: {', '.join(missing)}")


@dataclass(frozen=True)
class ClusterPlan:
    """One cluster of the plan with its values overlay resolved."""

    name: str
    context: str
    namespace: str
    values: Path | None
    service_url: str
    sets: tuple[str, ...] = ()  # the cluster's own `set:`, as KEY=VALUE
    prometheus_url: str | None = None
    wave: str = ""


@dataclass(frozen=True)
class WavePlan:
    """One wave of the plan: its selected clusters in wave order."""

    name: str
    clusters: tuple[ClusterPlan, ...]
    max_parallel: int
    soak_seconds: float


@dataclass(frozen=True)
class Plan:
    """A loaded, checked clusters file: absolute paths, the clusters selected, in file order."""

    source: Path
    chart: str
    chart_version: str | None
    release: str
    helm_driver: str
    serve_running: Poll
    health_gate: HealthGate
    smoke: Smoke
    smoke_image: Path
    fail_fast: FailFast
    lock: Lock
    kuberay_operator: KubeRayOperator
    analysis: MetricAnalysis | None
    waves: tuple[WavePlan, ...]

    @property
    def clusters(self) -> tuple[ClusterPlan, ...]:
        """Every selected cluster, wave by wave."""
        return tuple(c for w in self.waves for c in w.clusters)


def _where(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def _read(path: Path) -> ClustersFile:
    if not path.is_file():
        raise ConfigError(f"clusters file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    try:
        return ClustersFile.model_validate(raw)
    except ValidationError as exc:
        lines = [f"  {_where(e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"{path}: invalid clusters file:\n" + "\n".join(lines)) from exc


def _existing(base: Path, rel: str, what: str, source: Path) -> Path:
    path = (base / rel).resolve()
    if not path.exists():
        raise ConfigError(
            f"{source}: {what} {rel!r} not found (looked at {path}; relative paths start at "
            f"baseDir, {base})"
        )
    return path


def load_plan(path: str | Path, only: list[str] | None = None) -> Plan:
    """Read and check the clusters file; `only` keeps the named clusters (file order kept)."""
    source = Path(path).resolve()
    spec = _read(source)
    base = (source.parent / spec.base_dir).resolve()
    chart = spec.chart
    if not chart.startswith("oci://"):
        chart_dir = _existing(base, chart, "chart", source)
        if not (chart_dir / "Chart.yaml").is_file():
            raise ConfigError(f"{source}: chart {chart!r} has no Chart.yaml ({chart_dir})")
        chart = str(chart_dir)
    names = [c.name for c in spec.clusters]
    unknown = [n for n in only or [] if n not in names]
    if unknown:
        raise ConfigError(
            f"{source}: no cluster named {', '.join(unknown)} (clusters: {', '.join(names)})"
        )
    waves = spec.waves or [Wave(name=c.name, clusters=[c.name]) for c in spec.clusters]
    wave_of = {name: w.name for w in waves for name in w.clusters}
    by_name = {
        c.name: ClusterPlan(
            name=c.name,
            context=c.context,
            namespace=c.namespace,
            values=_existing(base, c.values, f"clusters.{c.name}.values", source)
            if c.values
            else None,
            service_url=c.service_url.rstrip("/"),
            sets=tuple(f"{k}={_set_value(v)}" for k, v in c.sets.items()),
            prometheus_url=c.prometheus_url.rstrip("/") if c.prometheus_url else None,
            wave=wave_of[c.name],
        )
        for c in spec.clusters
    }
    planned = tuple(
        WavePlan(w.name, chosen, w.max_parallel, w.soak_seconds)
        for w in waves
        if (chosen := tuple(by_name[n] for n in w.clusters if not only or n in only))
    )
    if spec.smoke.image:
        image = _existing(base, spec.smoke.image, "smoke.image", source)
    else:
        image = Path(str(resources.files("hazard.deploy") / SMOKE_IMAGE))
    return Plan(
        source=source,
        chart=chart,
        chart_version=spec.chart_version,
        release=spec.release,
        helm_driver=spec.helm_driver,
        serve_running=spec.serve_running,
        health_gate=spec.health_gate,
        smoke=spec.smoke,
        smoke_image=image,
        fail_fast=spec.fail_fast,
        lock=spec.lock,
        kuberay_operator=spec.kuberay_operator,
        analysis=spec.analysis,
        waves=planned,
    )


def _set_value(value: str | int | float | bool) -> str:
    """A `set:` value as helm's --set spells it (YAML's true is `true`, not `True`)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def set_conflicts(cluster: ClusterPlan, sets: list[str]) -> list[str]:
    """Global `--set`s that would silently replace a key of the cluster's own `set:` (the
    same key, or one inside the other: `serve.app` and `serve.app.args.engine`)."""
    own = dict(s.split("=", 1) for s in cluster.sets)

    def overlaps(a: str, b: str) -> bool:
        return a == b or a.startswith(f"{b}.") or b.startswith(f"{a}.")

    return [
        f"--set {item} conflicts with clusters.{cluster.name}.set {key}={value}"
        for item in sets
        for key, value in own.items()
        if overlaps(item.split("=", 1)[0], key)
    ]
