"""The `helm` CLI for one release on one cluster (subprocess; Helm 4, found on PATH).

Every call names the namespace and the kube context, and runs with `HELM_DRIVER` set to the
clusters file's storage driver, so that with `configmap` the deployer needs no access to Secrets.
Nothing here waits for workloads or rolls back by itself: `upgrade` is a plain
`upgrade --install` (no `--atomic`/`--rollback-on-failure`, no `--wait`); the rollout decides.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

NOT_FOUND = "release: not found"
HELM_TIMEOUT_S = 900  # one helm command (helm's own per-operation --timeout is 5 min)


class HelmError(RuntimeError):
    """A helm command failed; the message names the command and ends with helm's own error."""


def _json(out: str, command: str):
    try:
        return json.loads(out)
    except ValueError as exc:
        raise HelmError(f"`helm {command} --output json` printed no JSON: {out[:200]!r}") from exc


@dataclass(frozen=True)
class Revision:
    """One line of `helm history`."""

    number: int
    status: str
    chart: str
    description: str


@dataclass(frozen=True)
class Helm:
    """`helm` bound to one release, namespace, kube context and storage driver."""

    release: str
    namespace: str
    context: str
    driver: str
    binary: str = "helm"

    def argv(self, *args: str) -> list[str]:
        """The full command line of `helm ARGS` for this release's cluster."""
        return [self.binary, *args, "--namespace", self.namespace, "--kube-context", self.context]

    def _run(self, *args: str) -> str:
        argv = self.argv(*args)
        if shutil.which(self.binary) is None:
            raise HelmError(f"{self.binary} not found on PATH (`make setup` puts it in .venv/bin)")
        try:
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                env={**os.environ, "HELM_DRIVER": self.driver},
                check=False,
                timeout=HELM_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as exc:
            raise HelmError(f"`{' '.join(argv[:3])} …` still running after {exc.timeout}s") from exc
        if proc.returncode != 0:
            err = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-5:]
            raise HelmError(f"`{' '.join(argv[:3])} …` exited {proc.returncode}: " + " ".join(err))
        return proc.stdout

    def history(self) -> list[Revision]:
        """The release's revisions, oldest first; empty when the release does not exist."""
        try:
            out = self._run("history", self.release, "--output", "json")
        except HelmError as exc:
            if NOT_FOUND in str(exc):
                return []
            raise
        return [
            Revision(int(r["revision"]), r["status"], r.get("chart", ""), r.get("description", ""))
            for r in _json(out, "history")
        ]

    def deployed_revision(self) -> int | None:
        """The revision currently `deployed` (what a rollback returns to), or None."""
        deployed = [r.number for r in self.history() if r.status == "deployed"]
        return deployed[-1] if deployed else None

    def manifest(self) -> str:
        """`helm get manifest` of the deployed revision ('' when the release does not exist)."""
        try:
            return self._run("get", "manifest", self.release)
        except HelmError as exc:
            if NOT_FOUND in str(exc):
                return ""
            raise

    def chart_args(
        self, chart: str, version: str | None, values: Path | None, sets: list[str]
    ) -> list[str]:
        """`RELEASE CHART [--version V] [--values FILE] [--set K=V ...]`."""
        args = [self.release, chart]
        if version:
            args += ["--version", version]
        if values:
            args += ["--values", str(values)]
        for item in sets:
            args += ["--set", item]
        return args

    def upgrade_args(
        self, chart: str, version: str | None, values: Path | None, sets: list[str]
    ) -> list[str]:
        """The arguments of `upgrade` (after `helm`)."""
        chart_args = self.chart_args(chart, version, values, sets)
        return ["upgrade", "--install", *chart_args, "--output", "json"]

    def upgrade(
        self, chart: str, version: str | None, values: Path | None, sets: list[str]
    ) -> tuple[int, str]:
        """`helm upgrade --install` the chart with the overlay and the --set overrides;
        returns the new revision and the manifest it applied."""
        release = _json(self._run(*self.upgrade_args(chart, version, values, sets)), "upgrade")
        return int(release["version"]), release.get("manifest", "")

    def dry_run(self, chart: str, version: str | None, values: Path | None, sets: list[str]) -> str:
        """`upgrade --dry-run=server`: the chart rendered as the upgrade would render it, its
        `lookup`s reading the cluster; nothing is persisted, no revision recorded. Helm sends
        no object for admission: `admission.ServerDryRun` does that with the manifest this
        returns (Secrets hidden)."""
        args = [*self.upgrade_args(chart, version, values, sets), "--dry-run=server"]
        release = _json(self._run(*args, "--hide-secret"), "upgrade --dry-run=server")
        return release.get("manifest", "")

    def show_chart(self, chart: str, version: str | None) -> str:
        """`helm show chart`: the chart's Chart.yaml (a folder or an oci:// reference)."""
        return self._run("show", "chart", chart, *(["--version", version] if version else []))

    def template(
        self,
        chart: str,
        version: str | None,
        values: Path | None,
        sets: list[str],
        upgrade: bool,
    ) -> str:
        """The manifest `upgrade` would apply (no hooks or tests, like `helm get manifest`)."""
        args = self.chart_args(chart, version, values, sets) + ["--no-hooks", "--skip-tests"]
        return self._run("template", *args, *(["--is-upgrade"] if upgrade else []))

    def rollback(self, revision: int) -> None:
        """`helm rollback` to `revision` (recorded by helm as a new revision)."""
        self._run("rollback", self.release, str(revision))

    def uninstall(self) -> None:
        """`helm uninstall` the release (its objects and its release records)."""
        self._run("uninstall", self.release)
