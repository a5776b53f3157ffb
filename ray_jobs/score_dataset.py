"""Score a whole dataset offline with the cascade, as serving scores one image, or with one
bundle of any closed-answer task (`model_uri`, e.g. configs/tiny/score_task.yaml).

    ray job submit --address http://127.0.0.1:8265 -- \\
        python -m ray_jobs.score_dataset --config configs/tiny/score.yaml [--set num_actors=2]

The source is a folder of images, Parquet shards or an s3:// prefix of either; the outputs
(submission.csv, predictions.parquet, summary.json in `output_dir`) and how rows are scored
are `pipelines.score`'s (`pipelines.score_task`'s for a task's bundle). Run as a Ray job it
joins that cluster; run directly it starts a local Ray once the bundles and the source have
been checked. Exit code 2 on a bad config, 1 on an
unusable source, bundle or storage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from hazard.config import add_config_args, load_job_config
from hazard.config.score import ScoreDatasetConfig


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Score a folder, Parquet shards or an s3:// prefix with the cascade "
        "or with one closed-answer task's bundle (model_uri)."
    )
    add_config_args(parser, "num_actors=2")
    cfg = load_job_config(parser.parse_args(argv), ScoreDatasetConfig)
    if cfg is None:
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from hazard.infra.bundle import BundleError
    from hazard.infra.storage import StorageError
    from pipelines.score import score_dataset
    from pipelines.sources import SourceError

    try:
        score_dataset(cfg)
    except (SourceError, BundleError, StorageError) as exc:
        print(f"[score] error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
