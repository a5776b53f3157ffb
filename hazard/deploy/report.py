"""What a rollout reports: the summary it ends with (one row per cluster, then what failed and
why) and the JSON report (`--report FILE`) a pipeline reads and `--resume` continues from."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from hazard.config import ConfigError
from hazard.deploy.plan import Plan
from hazard.deploy.rollout import EXIT_HELP, ClusterReport, Exit, Rollout

STEPS = ("upgrade", "running", "health", "version", "smoke", "soak", "analysis")
CHECKS = (
    "history",
    "operator",
    "lock",
    "dry-run",
    "baseline",
)  # before the upgrade; change nothing
COLUMNS = ("cluster", "wave", "before", "after", "checks", *STEPS, "pods", "time")
REPORT_FORMAT = 1


def _rev(n: int | None) -> str:
    return "-" if n is None else str(n)


def _cell(r: ClusterReport, steps: tuple[str, ...]) -> str:
    ran = [r.steps[s] for s in steps if s in r.steps]
    if not ran:
        return "-"
    ok = all(g.ok for g in ran)
    return f"{'ok' if ok else 'FAIL'} {sum(g.seconds for g in ran):.0f}s"


def _row(r: ClusterReport) -> list[str]:
    steps = [_cell(r, (s,)) for s in STEPS]
    time_s = f"{r.seconds:.0f}s" if r.steps else "-"
    return [
        r.name, r.wave, _rev(r.before), _rev(r.after), _cell(r, CHECKS), *steps,
        r.pods or "-", time_s, r.outcome,
    ]  # fmt: skip


def table(reports: list[ClusterReport]) -> str:
    """The per-cluster table, columns aligned."""
    rows = [[*COLUMNS, "result"], *(_row(r) for r in reports)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
        for row in rows
    )


def details(reports: list[ClusterReport], code: Exit) -> list[str]:
    """One line per failed step, the Warning events seen on that cluster since its start, and,
    when the rollout stopped, the clusters it leaves upgraded."""
    lines = []
    for r in reports:
        lines += [f"{r.name} {step}: {g.detail}" for step, g in r.steps.items() if not g.ok]
        if r.warnings:
            lines.append(f"{r.name} Warning events since its upgrade:")
            lines += [f"  {e.time:%H:%M:%S} {e.object} {e.reason}: {e.message}" for e in r.warnings]
    stays = [f"{r.name} (revision {r.after})" for r in reports if r.code == Exit.OK]
    if code != Exit.OK and stays:
        lines.append(
            f"left upgraded by this stopped rollout: {', '.join(stays)}; after a fix, "
            "--resume REPORT continues, or `helm rollback` them"
        )
    return lines


def summary(reports: list[ClusterReport], code: Exit) -> str:
    """Table, failure details and the exit code with its meaning."""
    meaning = next(ln for ln in EXIT_HELP.splitlines() if ln.strip().startswith(str(int(code))))
    return "\n".join([table(reports), *details(reports, code), f"exit {meaning.strip()}"])


def as_json(rollout: Rollout, code: Exit | None) -> dict:
    """The rollout as a JSON document: the inputs, every cluster's steps, revisions and times."""
    plan = rollout.plan
    return {
        "format": REPORT_FORMAT,
        "clustersFile": str(plan.source),
        "release": plan.release,
        "chart": plan.chart,
        "sets": rollout.sets,
        "inputs": inputs(plan),
        "startedAt": rollout.started_at,
        "exit": None if code is None else {"code": int(code), "name": code.name},
        "waves": [
            {
                "name": w.name,
                "clusters": [c.name for c in w.clusters],
                "maxParallel": w.max_parallel,
                "soakSeconds": w.soak_seconds,
            }
            for w in plan.waves
        ],  # fmt: skip
        "clusters": {
            name: {
                "wave": r.wave,
                "outcome": r.outcome,
                "code": None if r.code is None else int(r.code),
                "before": r.before,
                "after": r.after,
                "startedAt": r.started_at,
                "seconds": round(r.seconds, 3),
                "pods": r.pods,
                "steps": {
                    s: {"ok": g.ok, "detail": g.detail, "seconds": round(g.seconds, 3)}
                    for s, g in dict(r.steps).items()
                },
                "warnings": [
                    {
                        "time": e.time.isoformat(),
                        "object": e.object,
                        "reason": e.reason,
                        "message": e.message,
                    }
                    for e in r.warnings
                ],  # fmt: skip
                **dict(r.extra),
            }
            for name, r in rollout.reports.items()
        },
    }


def write(path: Path, document: dict) -> None:
    """Write `document` to `path` atomically (a reader never sees half a report)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(document, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def inputs(plan: Plan) -> dict[str, str]:
    """sha256 of the files that decide what a rollout deploys: the clusters file and each
    cluster's values overlay (a resumed rollout must deploy what the stopped one did)."""
    files = {"clustersFile": plan.source}
    files |= {f"values/{c.name}": c.values for c in plan.clusters if c.values}
    return {name: hashlib.sha256(Path(p).read_bytes()).hexdigest() for name, p in files.items()}


def resumable(path: Path, plan: Plan, sets: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """From a stopped rollout's report: the clusters it upgraded (name -> revision) and those
    it left unfinished after recording their revision (name -> that `before`), checked to be
    the same rollout: the same clusters file, overlays and --set values."""
    clusters_file = plan.source
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"--resume: no report at {path}") from exc
    except ValueError as exc:
        raise ConfigError(f"--resume: {path} is not a JSON report: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != REPORT_FORMAT:
        raise ConfigError(
            f"--resume: {path} is not a hazard deploy report (format {REPORT_FORMAT})"
        )
    if doc.get("clustersFile") != str(clusters_file):
        raise ConfigError(
            f"--resume: {path} is a rollout of {doc.get('clustersFile')}, not {clusters_file}"
        )
    if doc.get("sets") != sets:
        raise ConfigError(
            f"--resume: {path} was run with --set {doc.get('sets')}, this run has {sets}: "
            "a resumed rollout must deploy the same values"
        )
    now = inputs(plan)
    if changed := sorted(k for k, v in (doc.get("inputs") or {}).items() if now.get(k) != v):
        raise ConfigError(
            f"--resume: {', '.join(changed)} changed since {path} was written: start a new "
            "rollout (without --resume) to deploy the changed files"
        )
    clusters = doc.get("clusters", {})
    done = {
        name: c["after"]
        for name, c in clusters.items()
        if c.get("code") == int(Exit.OK) and isinstance(c.get("after"), int)
    }
    unfinished = {
        name: c["before"]
        for name, c in clusters.items()
        if c.get("code") is None and isinstance(c.get("before"), int) and "upgrade" in c["steps"]
    }
    return done, unfinished
