"""The deploy tests' rig: `hazard deploy` on N clusters of stand-ins (tests/helpers/deploy.py),
with the helpers that read what it did. Used by test_deploy, test_deploy_fleet and
test_metric_analysis."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from hazard.cli import main
from tests.helpers.deploy import (
    NAMESPACE,
    RELEASE,
    KubeStandIn,
    ServeStandIn,
    helm_calls,
    install_helm,
    write_kubeconfig,
)

REPO = Path(__file__).resolve().parents[2]
CHART = str(REPO / "charts" / "hazard-cascade")
SMOKE_PNG = (REPO / "hazard" / "deploy" / "smoke.png").read_bytes()
KEY_ENV, KEY = "HC_DEPLOY_TEST_KEY", "test-key-123"
CONTEXTS = {"staging": "hazard-staging", "prod-eu": "hazard-prod-eu", "prod-us": "hazard-prod-us"}


@dataclass
class Rig:
    dir: Path
    clusters_file: Path
    state: Path
    log: Path
    kube: dict[str, KubeStandIn]
    serve: dict[str, ServeStandIn]
    values: dict[str, Path]

    def calls(self, cluster: str | None = None) -> list[list[str]]:
        ctx = CONTEXTS.get(cluster)
        return [c["argv"] for c in helm_calls(self.log) if ctx is None or ctx in c["argv"]]

    def key(self, cluster: str) -> str:
        return f"{CONTEXTS[cluster]}/{NAMESPACE}/{RELEASE}"

    def close(self) -> None:
        for server in [*self.kube.values(), *self.serve.values()]:
            server.close()

    def edit(self, **changes) -> None:
        """Set top-level keys of the clusters file."""
        raw = yaml.safe_load(self.clusters_file.read_text())
        raw.update(changes)
        self.clusters_file.write_text(yaml.safe_dump(raw, sort_keys=False))

    def timeouts(self, running: float | None = None, health: float | None = None) -> None:
        """Shorten the gate a test expects to time out (passing gates return at once anyway)."""
        raw = yaml.safe_load(self.clusters_file.read_text())
        raw["serveRunning"]["timeoutSeconds"] = running or raw["serveRunning"]["timeoutSeconds"]
        raw["healthGate"]["timeoutSeconds"] = health or raw["healthGate"]["timeoutSeconds"]
        self.clusters_file.write_text(yaml.safe_dump(raw, sort_keys=False))


def helm(cluster: str, *words: str) -> list[str]:
    """The argv hazard deploy must give helm on `cluster`."""
    return ["helm", *words, "--namespace", NAMESPACE, "--kube-context", CONTEXTS[cluster]]


def upgrade(rig: Rig, cluster: str, *sets: str, dry: bool = False) -> list[str]:
    """The `helm upgrade` argv on `cluster` (`dry`: its server-side dry run)."""
    set_args = [w for s in sets for w in ("--set", s)]
    return helm(
        cluster, "upgrade", "--install", RELEASE, CHART, "--values", str(rig.values[cluster]),
        *set_args, "--output", "json", *(["--dry-run=server", "--hide-secret"] if dry else []),
    )  # fmt: skip


def before_upgrade(rig: Rig, cluster: str, *sets: str, first: bool = True) -> list[list[str]]:
    """The helm calls before the upgrade: the chart's KubeRay range (once per rollout, on its
    first cluster, before any other), history and the server-side dry run."""
    show = [helm(cluster, "show", "chart", CHART)] if first else []
    history = helm(cluster, "history", RELEASE, "--output", "json")
    return [*show, history, upgrade(rig, cluster, *sets, dry=True)]


def make_rig(tmp_path: Path, monkeypatch, names: list[str], waves: list[dict] | None = None) -> Rig:
    """Clusters `names`, each with an API server and a serving app; a helm on PATH; a clusters
    file with 20 ms poll intervals (and `waves` when given). Scripts are set by each test."""
    kube = {name: KubeStandIn(token=f"token-{name}") for name in names}
    serve = {name: ServeStandIn(KEY, readyz=[200]) for name in names}
    values = {}
    for name in names:
        values[name] = tmp_path / "values" / f"{name}.yaml"
        values[name].parent.mkdir(exist_ok=True)
        values[name].write_text(yaml.safe_dump({"s3": {"region": f"region-{name}"}}))
    spec = {
        "chart": CHART,
        "release": RELEASE,
        "helmDriver": "configmap",
        "serveRunning": {"timeoutSeconds": 30, "intervalSeconds": 0.02},
        "healthGate": {"timeoutSeconds": 30, "intervalSeconds": 0.02, "successesRequired": 3},
        "smoke": {"apiKeyEnv": KEY_ENV, "timeoutSeconds": 5},
        "clusters": [
            {
                "name": name,
                "context": CONTEXTS[name],
                "namespace": NAMESPACE,
                "values": f"values/{name}.yaml",
                "serviceUrl": serve[name].url,
            }
            for name in names
        ],
    }
    if waves:
        spec["waves"] = waves
    clusters_file = tmp_path / "clusters.yaml"
    clusters_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    kubeconfig = write_kubeconfig(
        tmp_path / "kubeconfig", {CONTEXTS[n]: s for n, s in kube.items()}
    )
    state, log = tmp_path / "helm-state.json", tmp_path / "helm-calls.jsonl"
    for var, value in install_helm(tmp_path / "bin", state, log).items():
        monkeypatch.setenv(var, value)
    for name in names:  # both follow the helm stand-in's rollbacks
        kube[name].helm = serve[name].helm = (state, CONTEXTS[name])
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv(KEY_ENV, KEY)
    return Rig(tmp_path, clusters_file, state, log, kube, serve, values)


def deploy(rig: Rig, *args: str) -> int:
    return main(["deploy", "--clusters", str(rig.clusters_file), *args])


def row(out: str, cluster: str) -> str:
    """The summary table's row of `cluster`, without its wave and checks columns (cut at the
    header's column starts)."""
    lines = out.splitlines()
    header = next(ln for ln in lines if ln.startswith("cluster  wave  "))
    (line,) = [ln for ln in lines if ln.startswith(f"{cluster}  ")]
    starts = [m.start() for m in re.finditer(r"(?<!\S)\S", header)]
    cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    cells[-1] = line[starts[-1] :].strip()  # the result column runs to the end of the line
    keep = [
        c for i, c in enumerate(cells) if header[starts[i] :].split()[0] not in ("wave", "checks")
    ]
    return "  ".join(keep)
