"""The `hazard` command: one subcommand per step of the pipeline.

    hazard data synth OUT_DIR        write a synthetic labelled corridor folder
    hazard data prepare --config …   import, validate, augment, write Parquet (Ray Data)
    hazard train --config …          train a stage (Ray Train, DeepSpeed, LoRA)
    hazard calibrate --config …      fit the fusion on validation data
    hazard score-dataset --config …  score a folder/Parquet/s3:// dataset to a submission file
    hazard eval --config …           evaluate a model on a prepared split (metrics, report)
    hazard serve --config …          run the HTTP app on Ray Serve until interrupted
    hazard score IMAGE… --url …      score images against a running endpoint
    hazard deploy --clusters …       helm upgrades across clusters, gated, with rollback
    hazard model build-tiny          build (once) the cached tiny Qwen2.5-VL
    hazard ray-token [PATH]          write a Ray auth token for a head started by hand
    hazard demo                      everything above, end to end, on the tiny model

Each job subcommand runs the same module that `ray job submit -- python -m ray_jobs.<job>` runs.
"""

from __future__ import annotations

import argparse
import sys

FIRST_PARTY = ("hazard", "pipelines", "ray_jobs", "serve")


def _forward(module: str):
    """A handler that passes the remaining arguments to `module.main`."""

    def run(rest: list[str]) -> int:
        import importlib

        try:
            entry = importlib.import_module(module)
        except ModuleNotFoundError as exc:  # e.g. `deploy` without the [deploy] extra
            if (exc.name or "").split(".")[0] in FIRST_PARTY:
                raise
            print(f"hazard: {exc}", file=sys.stderr)
            return 1
        return entry.main(rest)

    return run


def _job(sub, name: str, module: str, help_text: str) -> None:
    p = sub.add_parser(
        name,
        help=help_text,
        add_help=False,
        description=f"{help_text} (runs `python -m {module}`; "
        f"`hazard {name} --help` shows its options)",
    )
    p.set_defaults(func=_forward(module))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hazard",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n")[1],
    )
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="data steps").add_subparsers(dest="step", required=True)
    _job(data, "prepare", "ray_jobs.prepare_data", "import, validate, augment and write Parquet")
    _job(data, "synth", "hazard.demo.synthetic", "write a synthetic labelled corridor image folder")
    _job(sub, "train", "ray_jobs.train", "train one cascade stage on Ray Train")
    _job(sub, "calibrate", "ray_jobs.calibrate", "fit the fusion on validation data")
    _job(sub, "score-dataset", "ray_jobs.score_dataset", "score a whole dataset (Ray Data)")
    _job(sub, "eval", "ray_jobs.eval", "evaluate a model on a prepared split (metrics, report)")
    _job(sub, "serve", "serve.command", "run the HTTP application on Ray Serve")
    _job(sub, "score", "hazard.client", "score images against a running endpoint")
    _job(sub, "deploy", "hazard.deploy.command", "roll the chart out across clusters, gated")
    _job(sub, "demo", "hazard.demo.run", "run the whole pipeline end to end on the tiny model")
    _job(sub, "ray-token", "hazard.demo.local_ray", "write a Ray auth token for a local head")
    model = sub.add_parser("model", help="model utilities").add_subparsers(
        dest="step", required=True
    )
    _job(model, "build-tiny", "hazard.demo.tiny_qwen", "build the cached tiny Qwen2.5-VL")

    args, rest = parser.parse_known_args(argv)  # the rest (with --help) goes to the job
    return int(args.func(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
