"""The rollout's optional steps around helm and the gates, built from the plan as `Hooks`:
the KubeRay operator's version and a server-side dry run before any change, and the metric
analysis (a baseline before the upgrade, the judgement at the end of the soak)."""

from __future__ import annotations

import yaml

from hazard.deploy import analysis, compat
from hazard.deploy.admission import ServerDryRun
from hazard.deploy.gates import GateResult
from hazard.deploy.plan import Plan
from hazard.deploy.rollout import Exit, Hooks
from hazard.deploy.target import ClusterTarget


def operator_check(plan: Plan, targets: list[ClusterTarget]):
    """The `operator` step: the chart's supported KubeRay range (read once, from the chart)
    against each cluster's operator."""
    supported = None

    def check(target: ClusterTarget, _sets: list[str]) -> GateResult:
        nonlocal supported
        if supported is None:
            supported = compat.supported_kuberay(target.helm, plan.chart, plan.chart_version)
        ok, detail = compat.check_operator(target.kube, plan.kuberay_operator, supported)
        return GateResult(ok, detail, 0.0)

    return check


def dry_run_check(target: ClusterTarget, sets: list[str]) -> GateResult:
    """The `dry-run` step: helm renders the upgrade against the cluster (`--dry-run=server`),
    then the API server admits each of its objects as a dry-run server-side apply (schema,
    admission webhooks, the deployer's write permissions); nothing changes."""
    manifest = target.preflight(sets)
    problems = ServerDryRun(target.kube.api(), target.cluster.namespace).check(manifest)
    if problems:
        return GateResult(False, "the API server refuses: " + "; ".join(problems), 0.0)
    kinds = [d["kind"] for d in yaml.safe_load_all(manifest) if isinstance(d, dict) and "kind" in d]
    return GateResult(True, f"the API server admits all {len(kinds)} objects (dry run)", 0.0)


class MetricGate:
    """The baseline and analysis steps of the clusters with a Prometheus URL."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.baselines: dict[str, analysis.Baseline] = {}

    def baseline(self, target: ClusterTarget) -> GateResult:
        url, policy = target.cluster.prometheus_url, self._policy(target)
        if not url or policy is None:
            return GateResult(True, "no metric analysis for this cluster", 0.0)
        try:
            base = analysis.baseline(url, policy)
        except analysis.PrometheusError as exc:
            return GateResult(False, str(exc), 0.0)
        self.baselines[target.name] = base
        shown = ", ".join(f"{k} {'-' if v is None else f'{v:.4g}'}" for k, v in base.values.items())
        return GateResult(True, f"{base.requests or 0:.0f} requests: {shown}", 0.0)

    def analyse(self, target: ClusterTarget) -> tuple[GateResult, object]:
        url, policy = target.cluster.prometheus_url, self._policy(target)
        if not url or policy is None:
            return GateResult(True, "no metric analysis for this cluster", 0.0), None
        try:
            result = analysis.analyse(url, policy, baseline=self.baselines.get(target.name))
        except analysis.PrometheusError as exc:
            return GateResult(False, str(exc), 0.0), None
        return GateResult(result.ok, result.detail, 0.0), result.to_dict()

    def _policy(self, target: ClusterTarget) -> analysis.MetricAnalysis | None:
        """The policy with its window no longer than the cluster's soak (so the analysis
        judges the new version's traffic only)."""
        policy = self.plan.analysis
        wave = next(w for w in self.plan.waves if w.name == target.cluster.wave)
        if policy is None or wave.soak_seconds <= 0:
            return None
        window = max(10, min(policy.window_seconds, int(wave.soak_seconds)))
        return policy.model_copy(update={"window_seconds": window})


def hooks(plan: Plan, targets: list[ClusterTarget]) -> Hooks:
    """What `hazard deploy` runs besides helm and the gates."""
    out = Hooks(
        preflight={"operator": operator_check(plan, targets)},
        before={"dry-run": dry_run_check},
        codes={"operator": Exit.UNSUPPORTED},
    )
    if plan.analysis and any(t.cluster.prometheus_url for t in targets):
        metrics = MetricGate(plan)
        out.baseline, out.analysis = metrics.baseline, metrics.analyse
    return out
