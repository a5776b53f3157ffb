"""Prepare the training data: import, decode, dedup/split, augment, filter, write Parquet + lineage.

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 -- \\
        python -m ray_jobs.prepare_data --config configs/tiny/data.yaml [--set augment.copies=4]
    hazard data prepare --source s3://bucket/raw --format llamafactory --out s3://bucket/prep \\
        [--config FILE] [--set KEY=VALUE]

Run as a Ray job it connects to that cluster; run directly it starts a local Ray. Sources and
outputs are local folders or s3:// prefixes (endpoint and credentials from the AWS_* variables).
Prints a per-stage table (rows in/out, rejected by reason), the split counts and the output.
Exit code 2 on a bad config or an unusable source, 1 if the row accounting fails.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from hazard.config import ConfigError, add_config_args, load_config
from hazard.config.data import DataConfig
from hazard.infra.storage import StorageError


def summary_table(report: dict[str, Any]) -> str:
    """The lineage report as a small text table: stages, then splits."""
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
    splits = "; ".join(
        f"{name} {s['written']} ({s['accepted']} accepted + {s['augmented']} augmented"
        + (f" - {s['filtered']} filtered" if s["filtered"] else "")
        + ")"
        for name, s in report["splits"].items()
        if "written" in s
    )
    return "\n".join(
        [
            header,
            "-" * len(header),
            *lines,
            "",
            f"listed {report['listed']} = accepted {report['accepted']} + rejected "
            f"{report['rejected']}; written {report['written']}",
            f"splits: {splits}",
            f"quarantined: {report['quarantine']['rows']} -> {report['quarantine']['uri']}",
            f"total: {report['timing']['total_seconds']:.1f}s",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hazard data prepare", description=__doc__.split("\n\n")[0])
    add_config_args(ap, "augment.copies=4", config_required=False)
    ap.add_argument("--source", help="source folder or s3:// prefix (sets source.uri)")
    ap.add_argument(
        "--format",
        choices=["folder", "llamafactory", "llava"],
        help="source layout (sets source.format)",
    )
    ap.add_argument("--out", help="output folder or s3:// prefix (sets output_dir)")
    ap.add_argument(
        "--progress", action="store_true", help="show Ray Data progress bars (off: quieter logs)"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    overrides = list(args.overrides)
    for key, value in (("source.uri", args.source), ("source.format", args.format)):
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.out is not None:
        overrides.append(f"output_dir={args.out}")
    try:
        config = load_config(args.config, DataConfig, overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2

    import ray

    from pipelines.prepare import prepare
    from pipelines.sources import SourceError
    from pipelines.write import LineageError

    if not ray.is_initialized():
        ray.init()  # inside a Ray job: the job's cluster; otherwise a local one
    ray.data.DataContext.get_current().enable_progress_bars = args.progress
    try:
        report = prepare(config)
    except (SourceError, StorageError) as exc:
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
