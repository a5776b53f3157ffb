"""`hazard deploy`: roll the chart out across the clusters of a clusters file, wave by wave.

hazard deploy --clusters k8s/clusters.yaml --set image.tag=0.2.0 --report rollout.json
hazard deploy --clusters k8s/clusters.yaml --only staging --dry-run
hazard deploy --clusters k8s/clusters.yaml --set image.tag=0.2.0 --resume rollout.json
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from hazard.config import ConfigError
from hazard.deploy import checks
from hazard.deploy.cluster import contexts, kubeconfig
from hazard.deploy.dryrun import dry_run
from hazard.deploy.plan import load_plan, set_conflicts
from hazard.deploy.report import as_json, resumable, summary, write
from hazard.deploy.rollout import EXIT_HELP, Exit, Rollout
from hazard.deploy.target import ClusterTarget

EPILOG = f"""Before any change: take each selected cluster's rollout lock (a Lease in the
release's namespace) and check each cluster's KubeRay operator version against the chart's.
Then wave by wave (the file's `waves`; default one cluster at a time in file order), for each
cluster: a server-side dry run, the metric baseline (clusters with a prometheusUrl), helm
upgrade --install (no --atomic), wait for the RayService's Serve apps to run (failing fast on
failing apps or pods), GET /readyz and /v1/models N times in a row (the rendered model
versions), POST one bundled image to /v1/score, then soak for the wave's soak time (health and
versions keep being checked; the metric analysis at its end). The first failure rolls that
cluster back to its previous revision (uninstalls a first install), checks the rollback with
the same gates, and stops the rollout.

environment: KUBECONFIG (default ~/.kube/config) holds the contexts the file names; the
clusters file's smoke.apiKeyEnv (default HAZARD_API_KEY) holds the serving API key; helm
runs with HELM_DRIVER from the file's helmDriver.

{EXIT_HELP}"""


def _interrupt(signum: int, _frame) -> None:
    """SIGTERM as Ctrl-C: the locks are released and the report says where the rollout stopped."""
    raise KeyboardInterrupt(f"signal {signum}")


def _say(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hazard deploy",
        description="Helm upgrades across clusters with health gates, smoke scoring and rollback.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--clusters", required=True, metavar="FILE", help="the clusters file (k8s/clusters.yaml)"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="deploy only this cluster (repeatable; the file's order is kept)",
    )
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed to helm as --set on every cluster (repeatable), e.g. --set image.tag=0.2.0",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan and the diff of deployed vs rendered manifests; change nothing",
    )
    parser.add_argument(
        "--report",
        metavar="FILE",
        type=Path,
        help="write a JSON report of every cluster, step, revision and time (kept up to date)",
    )
    parser.add_argument(
        "--resume",
        metavar="FILE",
        type=Path,
        help="continue the stopped rollout whose report this is (same clusters file, overlays "
        "and --set): "
        "clusters it upgraded, still at that revision, are skipped; the report is updated",
    )
    args = parser.parse_args(argv)
    try:
        plan = load_plan(args.clusters, args.only)
        if bad := [s for s in args.sets if "=" not in s or s.startswith("=")]:
            raise ConfigError(f"--set takes KEY=VALUE, got {', '.join(bad)}")
        if conflicts := [x for c in plan.clusters for x in set_conflicts(c, args.sets)]:
            raise ConfigError("; ".join(conflicts))
        done, unfinished = resumable(args.resume, plan, args.sets) if args.resume else ({}, {})
        known = contexts()
        if missing := sorted({c.context for c in plan.clusters} - known):
            raise ConfigError(
                f"kube context {', '.join(missing)} not in the kubeconfig ({kubeconfig()})"
            )
        api_key = os.environ.get(plan.smoke.api_key_env, "")
        if not api_key and not args.dry_run:
            raise ConfigError(
                f"${plan.smoke.api_key_env} is not set: the smoke request needs the API key"
            )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(Exit.USAGE)
    targets = [ClusterTarget(plan, c) for c in plan.clusters]
    if args.dry_run:
        return int(dry_run(plan, targets, args.sets, _say))
    report_path = args.report or args.resume
    hooks = checks.hooks(plan, targets)
    run = Rollout(plan, targets, args.sets, api_key, _say, hooks, done, unfinished)
    if report_path:
        hooks.saved = lambda: write(report_path, as_json(run, None))
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:  # a CI job's cancel (SIGTERM) stops like Ctrl-C
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = run.run()
    except KeyboardInterrupt:
        run.stop.set()
        code = Exit.INTERRUPTED
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    if report_path:
        write(report_path, as_json(run, code))
    _say(summary(list(run.reports.values()), code))
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
