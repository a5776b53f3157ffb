"""KubeRay compatibility: the operator a cluster runs against the versions the chart supports.

The chart declares the operator versions it supports in its Chart.yaml annotation
`hazard-cascade/kuberay-versions` (comma-separated constraints, e.g. `>=1.5.0, <1.8.0`, that
Helm's semverCompare and `packaging`'s SpecifierSet both read). A rollout reads that range once
(`supported_kuberay`, through `helm show chart`, so oci:// charts work too) and, before any
change to a cluster, the version of the operator there (`operator_version`): the tag of the
operator Deployment's image (`quay.io/kuberay/operator:v1.7.0`), else its
`app.kubernetes.io/version` label, else the `helm.sh/chart` label the KubeRay chart sets
(`kuberay-operator-1.7.0`). `check_operator` turns both into (ok, detail).
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from pydantic import Field

from hazard.deploy.cluster import DeploymentInfo, KubeError, KubeReader
from hazard.deploy.helm import Helm, HelmError
from hazard.deploy.spec import CamelModel

ANNOTATION = "hazard-cascade/kuberay-versions"
OPERATOR_CONTAINER = "kuberay-operator"
RBAC_HINT = "k8s/rbac-kuberay-operator.yaml"


class KubeRayOperator(CamelModel):
    """Where the KubeRay operator runs on each cluster (`kuberayOperator` in the clusters file);
    the defaults are those of k8s/kuberay-operator-values.yaml."""

    namespace: str = Field("kuberay-system", min_length=1, description="Operator namespace.")
    deployment: str = Field(
        "kuberay-operator", min_length=1, description="Name of the operator's Deployment."
    )


@dataclass(frozen=True)
class OperatorVersion:
    """An operator version and where it was read."""

    version: Version
    where: str


def supported_kuberay(helm: Helm, chart: str, version: str | None) -> SpecifierSet:
    """The chart's supported operator range, from its Chart.yaml (`helm show chart`).

    Raises HelmError when helm cannot show the chart or the annotation is missing or invalid."""
    meta = yaml.safe_load(helm.show_chart(chart, version)) or {}
    text = (meta.get("annotations") or {}).get(ANNOTATION)
    if not text:
        raise HelmError(f"chart {chart}: Chart.yaml has no annotation {ANNOTATION}")
    try:
        return SpecifierSet(str(text))
    except InvalidSpecifier as exc:
        raise HelmError(f"chart {chart}: annotation {ANNOTATION} {text!r}: {exc}") from exc


def _version(text: str | None) -> Version | None:
    if not text:
        return None
    try:
        return Version(text.removeprefix("v"))
    except InvalidVersion:
        return None


def image_tag(image: str) -> str:
    """The tag of an image reference ('' when it has none): `host:5000/repo:v1@sha256:..` -> v1."""
    name = image.split("@", 1)[0]
    head, sep, tag = name.rpartition(":")
    return tag if sep and "/" not in tag else ""


def version_of(info: DeploymentInfo, where: str) -> OperatorVersion:
    """The operator version a Deployment declares; ValueError naming what was looked at."""
    image = info.images.get(OPERATOR_CONTAINER) or next(iter(info.images.values()), "")
    found = _version(image_tag(image))
    if found:
        return OperatorVersion(found, f"image {image} of {where}")
    label = info.labels.get("app.kubernetes.io/version")
    if found := _version(label):
        return OperatorVersion(found, f"label app.kubernetes.io/version of {where}")
    chart = info.labels.get("helm.sh/chart", "")
    if chart.startswith("kuberay-operator-") and (found := _version(chart.split("-")[-1])):
        return OperatorVersion(found, f"label helm.sh/chart={chart} of {where}")
    raise ValueError(
        f"{where}: no KubeRay version in its image {image or '(none)'} (tag not a version), "
        "nor in its labels app.kubernetes.io/version or helm.sh/chart"
    )


def operator_version(kube: KubeReader, operator: KubeRayOperator) -> OperatorVersion:
    """Read the operator's version; KubeError (with the RBAC to grant on 401/403, the settings
    to check on 404) or ValueError when it cannot be read."""
    where = f"deployment {operator.namespace}/{operator.deployment} (context {kube.context})"
    try:
        info = kube.deployment(operator.namespace, operator.deployment)
    except KubeError as exc:
        if exc.denied:
            raise KubeError(
                f"{exc}: the deployer needs `get` on deployments.apps {operator.deployment} in "
                f"namespace {operator.namespace} ({RBAC_HINT}; still no Secrets)",
                exc.status,
            ) from exc
        if exc.status == 404:
            raise KubeError(
                f"{exc}: no KubeRay operator there; install it (k8s/README.md) or set "
                "kuberayOperator.namespace/deployment in the clusters file",
                exc.status,
            ) from exc
        raise
    return version_of(info, where)


def check_operator(
    kube: KubeReader, operator: KubeRayOperator, supported: SpecifierSet
) -> tuple[bool, str]:
    """(ok, detail): whether the cluster's operator version lies in `supported`. The detail
    names the version, where it was read and the range; an unreadable version is not ok."""
    try:
        found = operator_version(kube, operator)
    except (KubeError, ValueError) as exc:
        return False, f"KubeRay operator version unreadable: {exc}"
    ok = supported.contains(found.version, prereleases=False)  # as Helm's semverCompare
    verdict = "supported" if ok else "NOT supported"
    detail = (
        f"KubeRay operator {found.version} ({found.where}) {verdict}: the chart supports "
        f"{supported} (Chart.yaml {ANNOTATION})"
    )
    return ok, detail
