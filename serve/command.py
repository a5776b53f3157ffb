"""`hazard serve`: run the HTTP application on Ray Serve from a serving YAML (the app's `args`).

    hazard serve --config configs/tiny/serve.yaml [--port 8000] [--set base.version=0.2.0]
    hazard serve --task-config configs/tiny/serve_task.yaml   # one closed-answer task

Writes a Ray Serve config file (the same shape as a RayService's `serveConfigV2`) holding one
application, `import_path: serve.app:build_app` (the cascade, `--config`, a ServeConfig) or
`serve.task_app:build_task_app` (`--task-config`, a TaskServeConfig), with the YAML as `args`,
then runs
`serve run` on it (or prints it with --print). `serve deploy` takes the same file. The API key
named by `api_key_env` must be set in this shell unless the config says `auth: disabled`; it
goes to the replicas in the app's runtime env of a private temporary file, removed when
`serve run` exits. A missing key or a bundle that cannot load exits 2 with the reason, before
Serve starts (`serve run` itself would retry a failing deployment forever).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from hazard.config import add_config_args, load_job_config
from hazard.config.serve import (
    ServeConfig,
    ServingCommon,
    TaskServeConfig,
    serve_config,
    with_api_key,
    write_serve_config,
)
from hazard.core.labels import HIGH_RISK, RISK_LABELS
from hazard.infra.bundle import CalibrationMismatch, check_calibration, read_meta


def key_problems(cfg: ServingCommon, environ: dict[str, str]) -> list[str]:
    """The API key missing from this shell when auth is on (it is forwarded to the replicas)."""
    if cfg.auth == "api_key" and not environ.get(cfg.api_key_env):
        return [
            f"auth is api_key but {cfg.api_key_env} is unset or empty in this shell; "
            "export it, or set auth=disabled explicitly"
        ]
    return []


def task_preflight(cfg: TaskServeConfig, environ: dict[str, str]) -> list[str]:
    """Why the one-task app cannot start: the API key, or a bundle that cannot load, whose
    task has no closed answer set, or that `engine: vllm` cannot score."""
    from hazard.model.bundle_answerer import closed_task

    problems = key_problems(cfg, environ)
    uri = cfg.model.model_uri
    try:
        spec = closed_task(read_meta(uri), uri)
    except Exception as exc:  # any reason the bundle cannot load, reported
        return [*problems, f"model bundle {uri} cannot be served: {exc}"]
    if cfg.engine == "vllm" and not spec.ranks_fixed_prompt:
        problems.append(
            f"engine vllm scores fixed-prompt tasks; task {spec.name} asks each request its own "
            "prompt: use engine transformers"
        )
    return problems


def preflight(cfg: ServeConfig, environ: dict[str, str]) -> list[str]:
    """Why the app cannot start, found before Serve starts (empty when nothing is wrong).

    `serve run FILE` retries a failing deployment forever, so `hazard serve` checks here what
    it can see: the API key in this shell (it forwards it to the replicas) unless
    `auth: disabled`, and each bundle's metadata (read, parsed, its labels and the specialist's
    fusion, calibrated with the serving engine unless `allow_calibration_engine_mismatch`;
    weights are loaded, and verified, by the replicas).
    """
    problems = key_problems(cfg, environ)
    needs = {"base": list(RISK_LABELS), "specialist": [HIGH_RISK]}
    for role, model in (("base", cfg.base), ("specialist", cfg.specialist)):
        try:
            meta = read_meta(model.model_uri)
            if role == "specialist":
                meta.fusion_spec()
                check_calibration(
                    meta,
                    model.model_uri,
                    cfg.engine,
                    cfg.dtype,
                    cfg.allow_calibration_engine_mismatch,
                )
        except CalibrationMismatch as exc:
            problems.append(str(exc))
            continue
        except Exception as exc:  # any reason the bundle cannot load, reported
            problems.append(f"{role} bundle {model.model_uri} cannot load: {exc}")
            continue
        missing = [label for label in needs[role] if label not in meta.labels]
        if missing:
            problems.append(
                f"{role} bundle {model.model_uri} lacks labels {missing} (has {meta.labels})"
            )
    return problems


def _run_serve(path: Path) -> int:
    """`serve run path` in the foreground; SIGINT/SIGTERM stop it gracefully."""
    serve_bin = shutil.which("serve") or str(Path(sys.executable).with_name("serve"))
    proc = subprocess.Popen(
        [serve_bin, "run", str(path)],
        # a background job's ignored SIGINT would be inherited: restore it so it can be forwarded
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )

    def forward(signum, frame):
        proc.send_signal(signal.SIGINT)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hazard serve", description="Run the hazard-cascade app on Ray Serve."
    )
    add_config_args(parser, "base.version=0.2.0", config_required=False)
    parser.add_argument(
        "--task-config",
        help="serve one closed-answer task instead of the cascade: a TaskServeConfig YAML "
        "(e.g. configs/tiny/serve_task.yaml); --set applies to it",
    )
    parser.add_argument("--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    parser.add_argument(
        "--print",
        action="store_true",
        help="print the Serve config (without the API key) and exit",
    )
    args = parser.parse_args(argv)
    if (args.config is None) == (args.task_config is None):
        parser.error("give exactly one of --config (the cascade) and --task-config (one task)")
    task = args.task_config is not None
    if task:
        args.config = args.task_config
    cfg = load_job_config(args, TaskServeConfig if task else ServeConfig)
    if cfg is None:
        return 2
    doc = serve_config(cfg, args.host, args.port)
    if args.print:
        print(yaml.safe_dump(doc, sort_keys=False))
        return 0
    problems = (task_preflight if task else preflight)(cfg, dict(os.environ))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="hazard-serve-"))
    try:
        return _run_serve(
            write_serve_config(with_api_key(doc, cfg, dict(os.environ)), tmp / "s.yaml")
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
