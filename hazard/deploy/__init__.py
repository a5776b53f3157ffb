"""`hazard deploy`: Helm upgrades across clusters with health gates, smoke scoring and rollback.

plan      the clusters file (pydantic) -> Plan
helm      the helm CLI for one release on one cluster
cluster   read-only cluster state through the Kubernetes API (RayService status, pods, events)
target    ClusterTarget: helm + API for one cluster, the interface the rollout uses
gates     wait for Serve apps RUNNING, /readyz N times in a row, a smoke /v1/score
rollout   cluster by cluster, roll back on failure; exit codes
report    the summary table
dryrun    --dry-run: plan and manifest diff
command   the argparse entry point (`hazard deploy`, `python -m hazard.deploy.command`)

Its dependencies are the `deploy` extra (`pip install 'hazard-cascade[deploy]'`): nothing
outside this package imports it or the Kubernetes client.
"""

try:
    import kubernetes  # noqa: F401
except ModuleNotFoundError as exc:  # the extra is not installed
    raise ModuleNotFoundError(
        "hazard deploy needs the `deploy` extra (the Kubernetes API client): "
        "pip install 'hazard-cascade[deploy]'",
        name=exc.name,
    ) from exc
