#!/usr/bin/env python3
"""Install checkov, pinned, in a venv of its own: `.venv/tools/checkov`.

checkov pins many dependencies exactly; installed into the project's venv it would fight the
project's own pins. The tests (tests/integration/test_chart_manifests.py) run
`.venv/tools/checkov/bin/checkov` on the rendered manifests.

Usage::

    python scripts/install_checkov.py            # into .venv/tools/checkov (next to this venv)
    python scripts/install_checkov.py DEST_DIR   # into another venv directory
    python scripts/install_checkov.py --force    # reinstall even if the pinned version is there

Idempotent: does nothing when DEST_DIR/bin/checkov already reports the pinned version.
Exit status 0 on success, 1 with a message on stderr otherwise.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import venv
from pathlib import Path

CHECKOV_VERSION = "3.3.30"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_DEST = REPO / ".venv" / "tools" / "checkov"


def installed_version(dest: Path) -> str | None:
    """The version `dest/bin/checkov --version` prints, or None when it does not run."""
    exe = dest / "bin" / "checkov"
    if not exe.is_file():
        return None
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def install(dest: Path, force: bool = False) -> None:
    if not force and installed_version(dest) == CHECKOV_VERSION:
        return
    venv.EnvBuilder(with_pip=True, clear=force).create(dest)
    pip = [str(dest / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, f"checkov=={CHECKOV_VERSION}"], check=True)
    found = installed_version(dest)
    if found != CHECKOV_VERSION:
        raise RuntimeError(f"{dest}/bin/checkov reports {found!r}, expected {CHECKOV_VERSION}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", nargs="?", type=Path, default=DEFAULT_DEST)
    parser.add_argument("--force", action="store_true", help="reinstall from scratch")
    args = parser.parse_args(argv)
    try:
        install(args.dest.resolve(), args.force)
    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"install_checkov: {exc}", file=sys.stderr)
        return 1
    print(f"checkov {CHECKOV_VERSION} in {args.dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
