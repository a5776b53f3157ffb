"""`hazard deploy --dry-run`: the plan per cluster and the manifest diff; changes nothing.

The diff is `helm get manifest` of the deployed revision against `helm template` of the chart
with the cluster's overlay and the --set overrides, as a unified diff.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Sequence

from hazard.deploy.gates import Say
from hazard.deploy.helm import HelmError
from hazard.deploy.plan import Plan
from hazard.deploy.rollout import Exit
from hazard.deploy.target import ClusterTarget, rayservices, served_models


def manifest_diff(deployed: str, rendered: str, release: str, revision: int | None) -> str:
    """Unified diff from the deployed manifest to the rendered one ('' when equal)."""
    before = f"{release} (not installed)" if revision is None else f"{release} revision {revision}"
    return "".join(
        difflib.unified_diff(
            deployed.splitlines(keepends=True),
            rendered.splitlines(keepends=True),
            before,
            f"{release} (would apply)",
        )
    )


def dry_run(plan: Plan, targets: Sequence[ClusterTarget], sets: list[str], say: Say) -> Exit:
    """Print what `hazard deploy` would do on each cluster, and the diff; returns the exit code."""
    gate, running = plan.health_gate, plan.serve_running
    say(
        f"plan: release {plan.release} of {plan.chart}, HELM_DRIVER={plan.helm_driver}; clusters "
        f"in order: {', '.join(t.name for t in targets)} (each must pass before the next starts)"
    )
    code = Exit.OK
    for t in targets:
        c = t.cluster
        say(f"== {c.name} (context {c.context}, namespace {c.namespace})")
        try:
            revision = t.deployed_revision()
            deployed = t.deployed_manifest() if revision is not None else ""
            rendered = t.render(sets, upgrade=revision is not None)
        except HelmError as exc:
            say(f"[{c.name}] cannot plan: {exc}")
            code = Exit.NOT_STARTED
            continue
        services = ", ".join(rayservices(rendered)) or "none rendered"
        models = ", ".join(
            f"{role} {m['name']} {m['version']}"
            for role, m in sorted(served_models(rendered).items())
        )
        fallback = "uninstall" if revision is None else f"helm rollback {plan.release} {revision}"
        say(f"[{c.name}] deployed revision: {revision if revision is not None else 'none'}")
        say(f"[{c.name}] would run: {shlex.join(t.upgrade_argv(sets))}")
        say(
            f"[{c.name}] then: RayService {services} RUNNING within {running.timeout_seconds:g}s; "
            f"{c.service_url}/readyz 200 x{gate.successes_required} in a row within "
            f"{gate.timeout_seconds:g}s; GET {c.service_url}/v1/models serving "
            f"{models or 'no rendered model version'} x{gate.successes_required} in a row; "
            f"POST {c.service_url}/v1/score valid, from those versions; on failure: {fallback}"
        )
        diff = manifest_diff(deployed, rendered, plan.release, revision)
        say(diff.rstrip("\n") if diff else f"[{c.name}] no change to the manifest")
    return code
