"""`hazard deploy`: roll the chart out across the clusters of a clusters file, one at a time.

hazard deploy --clusters k8s/clusters.yaml --set image.tag=0.2.0
hazard deploy --clusters k8s/clusters.yaml --only staging --dry-run
"""

from __future__ import annotations

import argparse
import os
import sys

from hazard.config import ConfigError
from hazard.deploy.cluster import contexts, kubeconfig
from hazard.deploy.dryrun import dry_run
from hazard.deploy.plan import load_plan
from hazard.deploy.report import summary
from hazard.deploy.rollout import EXIT_HELP, Exit, rollout
from hazard.deploy.target import ClusterTarget

EPILOG = f"""For each cluster in file order: helm upgrade --install (no --atomic), wait for the
RayService's Serve apps to run, GET /readyz N times in a row, POST one bundled image to
/v1/score; the first failure rolls that cluster back to its previous revision (uninstalls a
first install) and stops, leaving later clusters untouched.

environment: KUBECONFIG (default ~/.kube/config) holds the contexts the file names; the
clusters file's smoke.apiKeyEnv (default HAZARD_API_KEY) holds the serving API key; helm
runs with HELM_DRIVER from the file's helmDriver.

{EXIT_HELP}"""


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
    args = parser.parse_args(argv)
    try:
        plan = load_plan(args.clusters, args.only)
        if bad := [s for s in args.sets if "=" not in s or s.startswith("=")]:
            raise ConfigError(f"--set takes KEY=VALUE, got {', '.join(bad)}")
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
    reports, code = rollout(plan, targets, args.sets, api_key, _say)
    _say(summary(reports, code))
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
