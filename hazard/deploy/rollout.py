"""The rollout: cluster by cluster in file order, upgrade, gate, and roll back what fails.

For each cluster: record the deployed revision, `helm upgrade --install`, wait until the
release's RayService runs the new spec, pass the health gate, check that the rendered model
versions are the ones served (`/v1/models`), pass the smoke request. The first
failure rolls that cluster back to the revision recorded before (uninstalls the release when
there was none), stops the rollout and leaves the later clusters untouched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum

from hazard.deploy import gates
from hazard.deploy.cluster import EventInfo, KubeError
from hazard.deploy.gates import GateResult, Say
from hazard.deploy.helm import HelmError
from hazard.deploy.plan import Plan
from hazard.deploy.target import ClusterTarget


class Exit(IntEnum):
    """Exit codes of `hazard deploy`."""

    OK = 0  # every selected cluster upgraded and passed its gates (or the dry run rendered)
    USAGE = 2  # bad clusters file, option, missing API key env var or kube context
    ROLLED_BACK = 3  # a cluster failed a gate and was rolled back; later clusters untouched
    ROLLBACK_FAILED = 4  # ...and its rollback (or uninstall) failed too: act by hand
    NOT_STARTED = 5  # a cluster's release could not be read or rendered; nothing changed there


EXIT_HELP = """exit codes:
  0  every selected cluster upgraded and passed its gates (--dry-run: all rendered)
  2  bad clusters file or usage (unknown --only, missing API key variable or kube context)
  3  a cluster failed a gate and was rolled back (or uninstalled); later clusters untouched
  4  a cluster failed a gate and its rollback failed too: it needs an operator
  5  a cluster's release could not be read or rendered; nothing was changed there"""


@dataclass
class ClusterReport:
    """What happened on one cluster."""

    name: str
    before: int | None = None
    after: int | None = None
    steps: dict[str, GateResult] = field(default_factory=dict)
    outcome: str = "not started"
    seconds: float = 0.0
    pods: str = ""
    warnings: list[EventInfo] = field(default_factory=list)

    @property
    def failed_step(self) -> str | None:
        return next((s for s, r in self.steps.items() if not r.ok), None)


def _step(report: ClusterReport, name: str, run: Callable[[], GateResult]) -> bool:
    """Run one step, record its result (a helm or API error is a failed step)."""
    start = time.monotonic()
    try:
        ok, detail = (r := run()).ok, r.detail
    except (HelmError, KubeError) as exc:
        ok, detail = False, str(exc)
    report.steps[name] = GateResult(ok, detail, time.monotonic() - start)
    return ok


def _pods(target: ClusterTarget, services: dict[str, list[str]]) -> str:
    """`ready/total` Ray pods of the RayServices' active clusters ('' when unknown)."""
    try:
        clusters = [s.active_cluster for n in services if (s := target.service_state(n))]
        pods = [p for c in clusters if c for p in target.pods(c)]
    except KubeError:
        return ""
    return f"{sum(p.ready for p in pods)}/{len(pods)}" if pods else ""


def _roll_back(target: ClusterTarget, report: ClusterReport, say: Say) -> Exit:
    """Return the cluster to `report.before`, or uninstall the release when there was none."""
    before = report.before

    def undo() -> GateResult:
        if before is None:
            target.uninstall()
            return GateResult(True, "uninstalled (there was no previous revision)", 0.0)
        target.rollback(before)
        return GateResult(True, f"rolled back to revision {before}", 0.0)

    what = "uninstalling the release" if before is None else f"rolling back to revision {before}"
    say(f"{report.failed_step} failed: {what}")
    if not _step(report, "rollback", undo):
        report.outcome = "rollback FAILED" if before is not None else "uninstall FAILED"
        return Exit.ROLLBACK_FAILED
    report.outcome = report.steps["rollback"].detail
    try:
        report.after = target.deployed_revision()
    except HelmError:
        report.after = None
    return Exit.ROLLED_BACK


def deploy_cluster(
    plan: Plan, target: ClusterTarget, sets: list[str], api_key: str, say: Say
) -> tuple[ClusterReport, Exit]:
    """Upgrade and gate one cluster, rolling it back on the first failed step."""
    report = ClusterReport(target.name)
    start, started_at = time.monotonic(), datetime.now(UTC).replace(microsecond=0)
    try:
        report.before = target.deployed_revision()
    except HelmError as exc:
        report.outcome = "not started: release unreadable"
        report.steps["history"] = GateResult(False, str(exc), 0.0)
        return report, Exit.NOT_STARTED
    say(f"deployed revision: {'none' if report.before is None else report.before}; upgrading")
    services: dict[str, list[str]] = {}
    models: gates.Models = {}
    url = target.cluster.service_url

    def upgrade() -> GateResult:
        report.after, applied, rendered = target.upgrade(sets)
        services.update(applied)
        models.update(rendered)
        return GateResult(True, f"revision {report.after}", 0.0)

    steps: dict[str, Callable[[], GateResult]] = {
        "upgrade": upgrade,
        "running": lambda: gates.wait_running(target, services, plan.serve_running, say),
        "health": lambda: gates.health_gate(url, plan.health_gate, say),
        "version": lambda: gates.version_gate(url, models, plan.health_gate, api_key, say),
        "smoke": lambda: gates.smoke(
            url, plan.smoke_image, api_key, plan.smoke.timeout_seconds, models
        ),
    }
    passed = all(_step(report, name, run) for name, run in steps.items())  # stops at a failure
    report.pods = _pods(target, services)
    if passed:
        report.outcome, code = "upgraded", Exit.OK
    else:
        try:
            report.warnings = target.warnings(started_at)
        except KubeError:
            report.warnings = []
        code = _roll_back(target, report, say)
    report.seconds = time.monotonic() - start
    return report, code


def rollout(
    plan: Plan, targets: Sequence[ClusterTarget], sets: list[str], api_key: str, say: Say
) -> tuple[list[ClusterReport], Exit]:
    """Deploy cluster by cluster; stop at the first that does not end upgraded."""
    reports = [ClusterReport(t.name) for t in targets]
    for i, target in enumerate(targets):
        c = target.cluster
        say(f"== {c.name} (context {c.context}, namespace {c.namespace})")
        reports[i], code = deploy_cluster(
            plan, target, sets, api_key, lambda line, n=c.name: say(f"[{n}] {line}")
        )
        if code != Exit.OK:
            return reports, code
    return reports, Exit.OK
