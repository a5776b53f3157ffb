"""The rollout: wave by wave, upgrade, gate, soak, and roll back what fails.

For each cluster: run the checks that change nothing (`before` steps, e.g. the operator's
version and a server-side dry run), record the deployed revision, `helm upgrade --install`,
wait until the release's RayService runs the new spec (failing fast on failing apps and pods),
pass the health gate, check that the rendered model versions are the ones served
(`/v1/models`), pass the smoke request, then soak: keep checking health and versions for the
wave's soak time and run the metric analysis. The first failure rolls that cluster back to the
revision recorded before (uninstalls the release when there was none) and checks the rollback
with the same gates against the previous versions. A wave's clusters run up to `maxParallel`
at once; a failure lets the clusters in flight finish, starts no other and stops the rollout.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum

from hazard.deploy import gates
from hazard.deploy.cluster import EventInfo, KubeError
from hazard.deploy.gates import GateResult, Say
from hazard.deploy.helm import HelmError
from hazard.deploy.lock import LockHeld, LockLost, RolloutLock, holder_identity
from hazard.deploy.plan import Plan, WavePlan
from hazard.deploy.target import ClusterTarget, rayservices, served_models


class Exit(IntEnum):
    """Exit codes of `hazard deploy`."""

    OK = 0  # every selected cluster upgraded and passed its gates (or the dry run rendered)
    USAGE = 2  # bad clusters file, option, missing API key env var or kube context
    ROLLED_BACK = 3  # a cluster failed and was rolled back; the rollback passed its gates
    ROLLBACK_FAILED = 4  # ...and its rollback (or uninstall) command failed: act by hand
    NOT_STARTED = 5  # a cluster's release could not be read, rendered or dry-run: unchanged
    ROLLBACK_UNHEALTHY = 6  # rolled back, but the previous version does not pass its gates
    LOCKED = 7  # another rollout holds a cluster's lock (or this one lost it): nothing changed
    UNSUPPORTED = 8  # a cluster's KubeRay operator is outside the chart's supported versions
    INTERRUPTED = 130  # stopped by a signal: resume from the report


EXIT_HELP = """exit codes:
  0  every selected cluster upgraded and passed its gates (--dry-run: all rendered)
  2  bad clusters file or usage (unknown --only, missing API key variable or kube context,
     a global --set that conflicts with a cluster's own set:, a report --resume cannot use)
  3  a cluster failed and was rolled back (or uninstalled), and the rollback passed its gates
  4  a cluster failed and its rollback (or uninstall) command failed: it needs an operator
  5  a cluster's release could not be read, rendered or dry-run: nothing changed there
  6  a cluster was rolled back but the previous version did not pass its gates (or they could
     not be checked): act now
  7  another rollout holds a cluster's lock (its holder is named), or this one lost it
  8  a cluster's KubeRay operator version is not one the chart supports (or could not be
     read): nothing changed there
130  interrupted (SIGINT, SIGTERM): no cluster started after it; one in flight may be left
     mid-upgrade (see the report); --resume REPORT continues"""

ROLLBACK_STEPS = ("rollback", "rollback-running", "rollback-health", "rollback-version")

Check = Callable[[ClusterTarget, list[str]], GateResult]  # a step that changes nothing


@dataclass
class ClusterReport:
    """What happened on one cluster."""

    name: str
    wave: str = ""
    before: int | None = None
    after: int | None = None
    steps: dict[str, GateResult] = field(default_factory=dict)
    outcome: str = "not started"
    code: Exit | None = None
    started_at: str | None = None
    seconds: float = 0.0
    pods: str = ""
    warnings: list[EventInfo] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)  # e.g. the metric analysis rows

    @property
    def failed_step(self) -> str | None:
        return next(
            (s for s, r in self.steps.items() if not r.ok and s not in ROLLBACK_STEPS), None
        )


@dataclass
class Hooks:
    """What a rollout runs besides helm and the gates, each optional.

    preflight: checks that change nothing, run on every cluster before the first wave (name ->
    check); a failure stops the rollout before any change with the code `codes` gives it.
    before: checks that change nothing, run before each cluster's upgrade; a failure leaves
    the cluster unchanged with `Exit.NOT_STARTED`, or the code `codes` gives its name.
    analysis: `(target) -> (GateResult, rows)` at the end of the soak, for clusters it covers.
    baseline: `(target) -> None` before the upgrade (e.g. the metrics of the old version).
    saved: called after every step, e.g. to write the JSON report.
    """

    preflight: dict[str, Check] = field(default_factory=dict)
    before: dict[str, Check] = field(default_factory=dict)
    codes: dict[str, Exit] = field(default_factory=dict)
    baseline: Callable[[ClusterTarget], GateResult] | None = None
    analysis: Callable[[ClusterTarget], tuple[GateResult, object]] | None = None
    saved: Callable[[], None] = lambda: None


def _step(
    report: ClusterReport, name: str, run: Callable[[], GateResult], hooks: Hooks | None = None
) -> bool:
    """Run one step, record its result (a helm or API error is a failed step)."""
    start = time.monotonic()
    try:
        ok, detail = (r := run()).ok, r.detail
    except (HelmError, KubeError, ValueError) as exc:
        ok, detail = False, str(exc)
    report.steps[name] = GateResult(ok, detail, time.monotonic() - start)
    if hooks:
        hooks.saved()
    return ok


def _pods(target: ClusterTarget, services: dict[str, list[str]]) -> str:
    """`ready/total` Ray pods of the RayServices' active clusters ('' when unknown)."""
    try:
        clusters = [s.active_cluster for n in services if (s := target.service_state(n))]
        pods = [p for c in clusters if c for p in target.pods(c)]
    except KubeError:
        return ""
    return f"{sum(p.ready for p in pods)}/{len(pods)}" if pods else ""


def _roll_back(
    plan: Plan, target: ClusterTarget, report: ClusterReport, api_key: str, say: Say, hooks: Hooks
) -> Exit:
    """Return the cluster to `report.before` (or uninstall the release when there was none),
    then check it: the previous revision's RayServices run and serve the previous versions
    (health and version gates), or the RayServices are gone after an uninstall."""
    before = report.before
    what = "uninstalling the release" if before is None else f"rolling back to revision {before}"
    say(f"{report.failed_step} failed: {what}")
    previous: dict[str, list[str]] = {}
    models: gates.Models = {}

    def undo() -> GateResult:
        if before is None:
            previous.update(dict.fromkeys(rayservices(target.deployed_manifest())))
            target.uninstall()
            return GateResult(True, "uninstalled (there was no previous revision)", 0.0)
        target.rollback(before)
        manifest = target.deployed_manifest()
        previous.update(rayservices(manifest))
        models.update(served_models(manifest))
        return GateResult(True, f"rolled back to revision {before}", 0.0)

    if not _step(report, "rollback", undo, hooks):
        report.outcome = "rollback FAILED" if before is not None else "uninstall FAILED"
        return Exit.ROLLBACK_FAILED
    done = report.steps["rollback"].detail
    try:
        report.after = target.deployed_revision()
    except HelmError:
        report.after = None
    url, health = target.cluster.service_url, plan.health_gate
    if before is None:
        checks = {
            "rollback-running": lambda: gates.wait_gone(
                target, list(previous), plan.serve_running, say
            )
        }
    else:
        checks = {
            "rollback-running": lambda: gates.wait_running(
                target, previous, plan.serve_running, say
            ),
            "rollback-health": lambda: gates.health_gate(url, health, say),
            "rollback-version": lambda: gates.version_gate(url, models, health, api_key, say),
        }
    if all(_step(report, name, run, hooks) for name, run in checks.items()):
        report.outcome = f"{done}, healthy" if before is not None else done
        return Exit.ROLLED_BACK
    failed = next(s for s in checks if not report.steps[s].ok)
    report.outcome = f"{done}, NOT healthy ({failed})"
    return Exit.ROLLBACK_UNHEALTHY


def deploy_cluster(
    plan: Plan,
    target: ClusterTarget,
    sets: list[str],
    api_key: str,
    say: Say,
    hooks: Hooks | None = None,
    soak_seconds: float = 0.0,
    report: ClusterReport | None = None,
    rollback_to: int | None = None,
) -> tuple[ClusterReport, Exit]:
    """Upgrade, gate and soak one cluster, rolling it back on the first failed step (to
    `rollback_to` when given: a resumed cluster's last revision that passed its gates)."""
    hooks = hooks or Hooks()
    report = report or ClusterReport(target.name, target.cluster.wave)
    start, started_at = time.monotonic(), datetime.now(UTC).replace(microsecond=0)
    report.started_at = started_at.isoformat()

    def finish(outcome: str | None, code: Exit) -> tuple[ClusterReport, Exit]:
        report.outcome = outcome or report.outcome
        report.code, report.seconds = code, time.monotonic() - start
        hooks.saved()
        return report, code

    try:
        report.before = target.deployed_revision()
    except HelmError as exc:
        report.steps["history"] = GateResult(False, str(exc), 0.0)
        return finish("not started: release unreadable", Exit.NOT_STARTED)
    if rollback_to is not None and rollback_to != report.before:
        say(
            f"revision {report.before} is from the interrupted rollout and never passed its "
            f"gates: a failure rolls back to revision {rollback_to}, as recorded before it"
        )
        report.before = rollback_to
    for name, check in hooks.before.items():
        if not _step(report, name, lambda c=check: c(target, sets), hooks):
            return finish(f"not started: {name} failed", hooks.codes.get(name, Exit.NOT_STARTED))
    if hooks.baseline and not _step(report, "baseline", lambda: hooks.baseline(target), hooks):
        return finish("not started: baseline failed", Exit.NOT_STARTED)
    say(f"deployed revision: {'none' if report.before is None else report.before}; upgrading")
    services: dict[str, list[str]] = {}
    models: gates.Models = {}
    url = target.cluster.service_url

    def upgrade() -> GateResult:
        report.after, applied, rendered = target.upgrade(sets)
        services.update(applied)
        models.update(rendered)
        return GateResult(True, f"revision {report.after}", 0.0)

    def analysis() -> GateResult:
        result, rows = hooks.analysis(target)
        report.extra["analysis"] = rows
        return result

    steps: dict[str, Callable[[], GateResult]] = {
        "upgrade": upgrade,
        "running": lambda: gates.wait_running(
            target, services, plan.serve_running, say, plan.fail_fast, started_at
        ),
        "health": lambda: gates.health_gate(url, plan.health_gate, say),
        "version": lambda: gates.version_gate(url, models, plan.health_gate, api_key, say),
        "smoke": lambda: gates.smoke(
            url, plan.smoke_image, api_key, plan.smoke.timeout_seconds, models
        ),
    }
    if soak_seconds > 0:
        steps["soak"] = lambda: gates.soak(
            url, models, plan.health_gate, api_key, soak_seconds, say
        )
    if hooks.analysis:
        steps["analysis"] = analysis
    passed = all(_step(report, name, run, hooks) for name, run in steps.items())
    report.pods = _pods(target, services)
    if passed:
        return finish("upgraded", Exit.OK)
    try:
        report.warnings = target.warnings(started_at)
    except KubeError:
        report.warnings = []
    return finish(None, _roll_back(plan, target, report, api_key, say, hooks))


@dataclass
class Rollout:
    """The state of one rollout: a report per selected cluster, and what stops it."""

    plan: Plan
    targets: Sequence[ClusterTarget]
    sets: list[str]
    api_key: str
    say: Say
    hooks: Hooks = field(default_factory=Hooks)
    done: dict[str, int] = field(default_factory=dict)  # resumed: cluster -> revision it left
    unfinished: dict[str, int] = field(default_factory=dict)  # resumed: cluster -> its `before`
    reports: dict[str, ClusterReport] = field(init=False)
    stop: threading.Event = field(default_factory=threading.Event)
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def __post_init__(self) -> None:
        self.reports = {t.name: ClusterReport(t.name, t.cluster.wave) for t in self.targets}

    def _cluster(self, target: ClusterTarget, soak: float) -> Exit:
        c, report = target.cluster, self.reports[target.name]
        say = lambda line, n=c.name: self.say(f"[{n}] {line}")  # noqa: E731
        if self.stop.is_set():
            report.outcome = "not started: the rollout stopped"
            return Exit.OK
        if (revision := self.done.get(c.name)) is not None:
            try:
                now = target.deployed_revision()
            except HelmError:
                now = None
            if now == revision:
                report.before = report.after = revision
                report.outcome, report.code = (
                    f"upgraded (earlier run, revision {revision})",
                    Exit.OK,
                )
                say(f"upgraded by the resumed rollout (revision {revision} still there); skipping")
                return Exit.OK
            say(f"deployed revision is {now}, not {revision} as the report says: upgrading again")
        self.say(f"== {c.name} (wave {c.wave}, context {c.context}, namespace {c.namespace})")
        _, code = deploy_cluster(
            self.plan, target, self.sets, self.api_key, say, self.hooks, soak, report,
            self.unfinished.get(c.name),
        )  # fmt: skip
        if code != Exit.OK:
            self.stop.set()
        return code

    def _wave(self, wave: WavePlan) -> Exit:
        chosen = [t for t in self.targets if t.cluster.wave == wave.name]
        if not chosen:
            return Exit.OK
        self.say(
            f"== wave {wave.name}: {', '.join(t.name for t in chosen)} "
            f"(up to {wave.max_parallel} at once, soak {wave.soak_seconds:g}s)"
        )
        try:
            return _worst(self._clusters(wave, chosen))
        except BaseException:  # an interrupt: the pool's queued clusters must not start
            self.stop.set()
            raise

    def _clusters(self, wave: WavePlan, chosen: list[ClusterTarget]) -> list[Exit]:
        if wave.max_parallel == 1 or len(chosen) == 1:
            return [self._cluster(t, wave.soak_seconds) for t in chosen]
        with ThreadPoolExecutor(wave.max_parallel, thread_name_prefix=f"wave-{wave.name}") as pool:
            return list(pool.map(lambda t: self._cluster(t, wave.soak_seconds), chosen))

    def run(self) -> Exit:
        """Take every cluster's lock, then every wave in order; stops after the first wave with
        a failure (or a stop request). The locks are released at the end."""
        locks: dict[str, RolloutLock] = {}
        holder = holder_identity(uuid.uuid4().hex[:8])
        try:
            for t in self.targets:
                lock = RolloutLock(
                    t.kube.api(), t.cluster.namespace, self.plan.release, holder,
                    self.plan.lock.lease_seconds,
                )  # fmt: skip
                locks[t.name] = lock.acquire()
        except (LockHeld, KubeError) as exc:
            self.say(f"[{t.name}] cannot take the rollout lock: {exc}")
            self.reports[t.name].steps["lock"] = GateResult(False, str(exc), 0.0)
            self.reports[t.name].outcome = "not started: lock not taken"
            self._release(locks)
            return Exit.LOCKED if isinstance(exc, LockHeld) else Exit.NOT_STARTED
        self.say(f"rollout lock {lock.name} taken on {len(locks)} cluster(s) as {holder}")
        self.hooks.before = {
            "lock": lambda target, _: _holding(locks[target.name]),
            **self.hooks.before,
        }
        self.hooks.codes["lock"] = Exit.LOCKED
        try:
            return self._preflight() or self._waves()
        finally:
            self._release(locks)

    def _preflight(self) -> Exit | None:
        """Every preflight check on every cluster; the worst failure's code, None when all
        passed."""
        codes = []
        for t in self.targets:
            report = self.reports[t.name]
            for name, check in self.hooks.preflight.items():
                if not _step(report, name, lambda c=check, t=t: c(t, self.sets), self.hooks):
                    self.say(f"[{t.name}] {name}: {report.steps[name].detail}")
                    report.outcome = f"not started: {name} failed"
                    report.code = self.hooks.codes.get(name, Exit.NOT_STARTED)
                    codes.append(report.code)
        if not codes:
            return None
        for r in self.reports.values():
            if r.code is None:
                r.outcome = "not started: a preflight check failed"
        return _worst(codes)

    def _release(self, locks: dict[str, RolloutLock]) -> None:
        for lock in locks.values():
            try:
                lock.release()
            except KubeError as exc:
                self.say(f"could not release {lock.where}: {exc} (it expires by itself)")

    def _waves(self) -> Exit:
        code = Exit.OK
        for wave in self.plan.waves:
            if (code := self._wave(wave)) != Exit.OK:
                break
        for r in self.reports.values():
            if r.code is None and r.outcome == "not started" and self.stop.is_set():
                r.outcome = "not started: the rollout stopped"
        return code


def _holding(lock: RolloutLock) -> GateResult:
    """The `lock` check before a cluster changes: this rollout still holds its Lease."""
    try:
        lock.check()
    except LockLost as exc:
        return GateResult(False, str(exc), 0.0)
    return GateResult(True, f"{lock.where} held", 0.0)


# The worse of two outcomes first: what an operator must act on before what was handled.
SEVERITY = [
    Exit.ROLLBACK_FAILED,
    Exit.ROLLBACK_UNHEALTHY,
    Exit.ROLLED_BACK,
    Exit.LOCKED,
    Exit.UNSUPPORTED,
    Exit.NOT_STARTED,
    Exit.INTERRUPTED,
    Exit.OK,
]


def _worst(codes: list[Exit]) -> Exit:
    return min(codes, key=SEVERITY.index, default=Exit.OK)
