"""Prepare the training data: import, validate, augment and write Parquet shards with lineage.

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 -- \\
        python -m ray_jobs.prepare_data --config configs/tiny/data.yaml [--set augment.copies=4]

Run as a Ray job it connects to that cluster; run directly it starts a local Ray. Prints a
per-stage table (rows in/out, rejected by reason) and the output folder. Exit code 2 on a bad
config or a missing source, 1 if the row accounting fails.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from hazard.config import add_config_args, load_job_config
from hazard.config.data import DataConfig


def summary_table(report: dict[str, Any]) -> str:
    """The lineage report as a small text table: stage, in, out, rejected by reason."""
    head = ("stage", "in", "added", "out", "rejected")
    rows = [
        (
            s["name"],
            str(s["rows_in"]),
            str(s["rows_added"]) if s["rows_added"] else "",
            str(s["rows_out"]),
            ", ".join(f"{k}={v}" for k, v in s["rejected"].items()) or "-",
        )
        for s in report["stages"]
    ]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    header = "  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)).rstrip()
    splits = ", ".join(
        f"{name}={s['rows']} ({s['augmented']} augmented)" for name, s in report["splits"].items()
    )
    return "\n".join(
        [
            header,
            "-" * len(header),
            *lines,
            "",
            f"splits: {splits}",
            f"quarantined: {report['quarantine']['rows']}",
            f"total: {report['timing']['total_seconds']:.1f}s",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ray_jobs.prepare_data", description=__doc__)
    add_config_args(ap, "augment.copies=4")
    ap.add_argument(
        "--progress", action="store_true", help="show Ray Data progress bars (off: quieter logs)"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = load_job_config(args, DataConfig)
    if config is None:
        return 2

    import ray

    from pipelines.import_folder import SourceError
    from pipelines.prepare import prepare
    from pipelines.write import LineageError

    if not ray.is_initialized():
        ray.init()  # inside a Ray job: the job's cluster; otherwise a local one
    ray.data.DataContext.get_current().enable_progress_bars = args.progress
    try:
        report = prepare(config)
    except SourceError as exc:
        print(f"input error: {exc}", file=sys.stderr)
        return 2
    except LineageError as exc:
        print(f"lineage error: {exc}", file=sys.stderr)
        return 1
    print(summary_table(report))
    print(f"output: {report['output_dir']} (lineage.json, quarantine.parquet, train/ val/ test/)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
