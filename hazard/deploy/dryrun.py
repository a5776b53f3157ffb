"""`hazard deploy --dry-run`: the plan per cluster, its values against the last wave's, and
the manifest diff; changes nothing.

The values compared are what the rollout gives helm on top of the chart's defaults: the
cluster's overlay, its own `set:` and the global --set, flattened to dotted keys. The diff is
`helm get manifest` of the deployed revision against `helm template` of the chart with those
values, as a unified diff.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Sequence
from pathlib import Path

import yaml

from hazard.deploy.gates import Say
from hazard.deploy.helm import HelmError
from hazard.deploy.plan import ClusterPlan, Plan
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


def _flatten(tree: object, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, dict) and tree:
        return {
            k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()
        }
    return {prefix.rstrip("."): tree}


def given_values(cluster: ClusterPlan, sets: list[str]) -> dict[str, object]:
    """Dotted key -> value that the rollout gives helm for `cluster` (overlay, then the
    cluster's `set:`, then the global --set; --set values are strings as typed)."""
    overlay = yaml.safe_load(Path(cluster.values).read_text()) if cluster.values else {}
    flat = _flatten(overlay or {}) if overlay else {}
    for item in [*cluster.sets, *sets]:
        key, _, value = item.partition("=")
        flat = {k: v for k, v in flat.items() if not k.startswith(f"{key}.")}
        flat[key] = value
    return flat


def value_differences(cluster: ClusterPlan, reference: ClusterPlan, sets: list[str]) -> list[str]:
    """`key: value (reference: value)` for each key whose value differs, sorted by key."""
    mine, theirs = given_values(cluster, sets), given_values(reference, sets)
    missing = "(chart default)"
    return [
        f"{k}: {mine.get(k, missing)!s} ({reference.name}: {theirs.get(k, missing)!s})"
        for k in sorted(set(mine) | set(theirs))
        if mine.get(k, missing) != theirs.get(k, missing)
    ]


def dry_run(plan: Plan, targets: Sequence[ClusterTarget], sets: list[str], say: Say) -> Exit:
    """Print what `hazard deploy` would do on each cluster, and the diff; returns the exit code."""
    gate, running = plan.health_gate, plan.serve_running
    say(f"plan: release {plan.release} of {plan.chart}, HELM_DRIVER={plan.helm_driver}; waves:")
    for w in plan.waves:
        say(
            f"  {w.name}: {', '.join(c.name for c in w.clusters)} (up to {w.max_parallel} at "
            f"once, soak {w.soak_seconds:g}s; every cluster must pass before the next wave)"
        )
    last = plan.waves[-1].clusters[0]
    code = Exit.OK
    for t in targets:
        c = t.cluster
        say(f"== {c.name} (wave {c.wave}, context {c.context}, namespace {c.namespace})")
        if c.wave != last.wave:
            diffs = value_differences(c, last, sets)
            say(f"[{c.name}] values that differ from {last.name} (last wave {last.wave}):")
            say("\n".join(f"  {d}" for d in diffs) if diffs else "  none")
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
