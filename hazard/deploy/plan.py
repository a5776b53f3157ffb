"""The clusters file (`k8s/clusters.yaml`): what a rollout deploys, where, and how it is gated.

Keys are camelCase like the chart's values; unknown keys are errors. Relative paths resolve
against `baseDir`, itself relative to the clusters file (`k8s/clusters.yaml` says `..`: the
repository root). `load_plan` returns a `Plan` whose paths are absolute and checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from hazard.config import ConfigError

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
SMOKE_IMAGE = "smoke.png"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, frozen=True)


class Poll(_Model):
    """How long to wait for something, and how often to look."""

    timeout_seconds: float = Field(gt=0, description="Give up after this long.")
    interval_seconds: float = Field(gt=0, description="Seconds between two looks.")


class HealthGate(Poll):
    """`GET <serviceUrl>/readyz` must answer 200 this many times in a row within the timeout."""

    successes_required: int = Field(ge=1, description="Consecutive 200 answers needed to pass.")


class Smoke(_Model):
    """One `POST <serviceUrl>/v1/score` of an image; the answer must be a valid score."""

    api_key_env: str = Field(
        "HAZARD_API_KEY", min_length=1, description="Environment variable holding the API key."
    )
    timeout_seconds: float = Field(120, gt=0, description="Timeout of the request.")
    image: str | None = Field(
        None, description="Image to score; default: the one bundled with hazard (smoke.png)."
    )


class Cluster(_Model):
    """One cluster of the rollout."""

    name: str = Field(pattern=DNS_LABEL, description="Name used by --only and the summary.")
    context: str = Field(min_length=1, description="Kube context (from the kubeconfig).")
    namespace: str = Field(pattern=DNS_LABEL, max_length=63, description="Release namespace.")
    values: str | None = Field(None, description="Values overlay passed as `helm -f`.")
    service_url: str = Field(
        pattern=r"^https?://[^\s/]+", description="Base URL of the serving app (no /readyz)."
    )


class ClustersFile(_Model):
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
    clusters: list[Cluster] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> ClustersFile:
        names = [c.name for c in self.clusters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"cluster names must be unique; repeated: {', '.join(dupes)}")
        if self.chart_version and not self.chart.startswith("oci://"):
            raise ValueError("chartVersion applies to an oci:// chart only")
        return self


@dataclass(frozen=True)
class ClusterPlan:
    """One cluster of the plan with its values overlay resolved."""

    name: str
    context: str
    namespace: str
    values: Path | None
    service_url: str


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
    clusters: tuple[ClusterPlan, ...]


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
    targets = tuple(
        ClusterPlan(
            name=c.name,
            context=c.context,
            namespace=c.namespace,
            values=_existing(base, c.values, f"clusters.{c.name}.values", source)
            if c.values
            else None,
            service_url=c.service_url.rstrip("/"),
        )
        for c in spec.clusters
        if not only or c.name in only
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
        clusters=targets,
    )
