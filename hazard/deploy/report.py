"""The summary a rollout ends with: one row per cluster, then what failed and why."""

from __future__ import annotations

from hazard.deploy.rollout import EXIT_HELP, ClusterReport, Exit

STEPS = ("upgrade", "running", "health", "version", "smoke")
COLUMNS = ("cluster", "before", "after", *STEPS, "pods", "time")


def _rev(n: int | None) -> str:
    return "-" if n is None else str(n)


def _row(r: ClusterReport) -> list[str]:
    steps = [
        "-" if (g := r.steps.get(s)) is None else f"{'ok' if g.ok else 'FAIL'} {g.seconds:.0f}s"
        for s in STEPS
    ]
    time_s = f"{r.seconds:.0f}s" if r.steps else "-"
    return [r.name, _rev(r.before), _rev(r.after), *steps, r.pods or "-", time_s, r.outcome]


def table(reports: list[ClusterReport]) -> str:
    """The per-cluster table, columns aligned."""
    rows = [[*COLUMNS, "result"], *(_row(r) for r in reports)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
        for row in rows
    )


def details(reports: list[ClusterReport]) -> list[str]:
    """One line per failed step, then the Warning events seen on that cluster since its start."""
    lines = []
    for r in reports:
        lines += [f"{r.name} {step}: {g.detail}" for step, g in r.steps.items() if not g.ok]
        if r.warnings:
            lines.append(f"{r.name} Warning events since its upgrade:")
            lines += [f"  {e.time:%H:%M:%S} {e.object} {e.reason}: {e.message}" for e in r.warnings]
    return lines


def summary(reports: list[ClusterReport], code: Exit) -> str:
    """Table, failure details and the exit code with its meaning."""
    meaning = next(ln for ln in EXIT_HELP.splitlines() if ln.strip().startswith(str(int(code))))
    return "\n".join([table(reports), *details(reports), f"exit {meaning.strip()}"])
