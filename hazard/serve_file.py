"""Run the HTTP application on Ray Serve from a serving YAML (the app's `args`).

    hazard serve --config configs/tiny/serve.yaml [--port 8000] [--set base.version=0.2.0]

Writes a Ray Serve config file (the same shape as a RayService's `serveConfigV2`) holding one
application `import_path: serve.app:build_app` with the YAML as `args`, then runs
`serve run` on it (or prints it with --print). `serve deploy` takes the same file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

from hazard.config import add_config_args, load_job_config
from hazard.config.serve import ServeConfig

APP_NAME = "hazard-cascade"
IMPORT_PATH = "serve.app:build_app"


def serve_config(cfg: ServeConfig, host: str = "0.0.0.0", port: int = 8000) -> dict:
    """A Ray Serve config with the hazard-cascade application."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": IMPORT_PATH,
                "args": cfg.model_dump(),
            }
        ],
    }


def write_serve_config(cfg: ServeConfig, path: Path, host: str, port: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(serve_config(cfg, host, port), sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the hazard-cascade app on Ray Serve.")
    add_config_args(parser, "base.version=0.2.0")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    parser.add_argument("--print", action="store_true", help="print the Serve config and exit")
    args = parser.parse_args(argv)
    cfg = load_job_config(args, ServeConfig)
    if cfg is None:
        return 2
    if args.print:
        print(yaml.safe_dump(serve_config(cfg, args.host, args.port), sort_keys=False))
        return 0
    path = write_serve_config(cfg, Path(tempfile.mkdtemp()) / "serve.yaml", args.host, args.port)
    serve_bin = shutil.which("serve") or str(Path(sys.executable).with_name("serve"))
    os.execv(serve_bin, [serve_bin, "run", str(path)])
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
