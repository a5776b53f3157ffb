#!/usr/bin/env python3
"""Vendor KubeRay's RayCluster/RayJob/RayService CRDs, one folder per operator version.

For each version it takes `helm-chart/kuberay-operator/crds/ray.io_{rayclusters,rayjobs,
rayservices}.yaml` at tag `v<version>` of ray-project/kuberay, drops any `description` string
(nothing validates against them) and writes each CRD as one line of JSON (a third of the
YAML's size) to `tests/fixtures/kuberay-crds/<version>/`, with a `SOURCE` file naming the tag
and commit. A version whose three CRDs equal an already vendored version's gets no folder of
its own: `versions.yaml` there maps every vendored operator version to the folder holding its
CRDs. The chart tests validate the rendered Ray objects against every version listed.

    python scripts/vendor_kuberay_crds.py --git /path/to/kuberay 1.5.0 1.6.2 1.7.0
    python scripts/vendor_kuberay_crds.py 1.7.1        # from raw.githubusercontent.com

Versions must lie in the chart's `hazard-cascade/kuberay-versions` range (Chart.yaml).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DEST = REPO / "tests" / "fixtures" / "kuberay-crds"
CRD_DIR = "helm-chart/kuberay-operator/crds"
FILES = ("ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml", "ray.io_rayservices.yaml")
INDEX = "versions.yaml"
RAW = "https://raw.githubusercontent.com/ray-project/kuberay/{ref}/{path}"


def strip_descriptions(node: Any) -> Any:
    """`node` without `description` strings (a property *named* description is a mapping and
    stays)."""
    if isinstance(node, dict):
        return {
            k: strip_descriptions(v)
            for k, v in node.items()
            if not (k == "description" and isinstance(v, str))
        }
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def _read(git: Path | None, tag: str, name: str) -> str:
    path = f"{CRD_DIR}/{name}"
    if git is not None:
        return subprocess.run(
            ["git", "--git-dir", str(git), "show", f"{tag}:{path}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    with urllib.request.urlopen(RAW.format(ref=tag, path=path), timeout=60) as resp:
        return resp.read().decode()


def _commit(git: Path | None, tag: str) -> str:
    if git is None:
        return "(downloaded; commit not recorded)"
    return subprocess.run(
        ["git", "--git-dir", str(git), "rev-list", "-n1", tag],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def _git_dir(path: Path) -> Path:
    return path / ".git" if (path / ".git").exists() else path


def _index() -> dict[str, str]:
    path = DEST / INDEX
    if not path.is_file():
        return {}
    return {str(k): str(v) for k, v in (yaml.safe_load(path.read_text()) or {}).items()}


def _write_index(index: dict[str, str]) -> None:
    ordered = dict(sorted(index.items(), key=lambda kv: tuple(map(int, kv[0].split(".")))))
    (DEST / INDEX).write_text(
        "# KubeRay operator version -> folder here holding its CRDs (versions whose CRDs are\n"
        "# identical share one). Written by scripts/vendor_kuberay_crds.py.\n"
        + yaml.safe_dump(ordered, sort_keys=False)
    )


def vendor(version: str, git: Path | None, index: dict[str, str]) -> str:
    """Vendor one version; returns the folder (under DEST) that holds its CRDs."""
    tag = f"v{version}"
    texts = {
        name.replace(".yaml", ".json"): json.dumps(
            strip_descriptions(yaml.safe_load(_read(git, tag, name))), separators=(",", ":")
        )
        + "\n"
        for name in FILES
    }
    for folder in sorted(set(index.values()) - {version}):
        if all((DEST / folder / n).is_file() and (DEST / folder / n).read_text() == t
               for n, t in texts.items()):  # fmt: skip
            index[version] = folder
            return folder
    out = DEST / version
    out.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (out / name).write_text(text)
    (out / "SOURCE").write_text(
        f"ray-project/kuberay {tag} ({_commit(git, tag)}), {CRD_DIR}/, as JSON without "
        "description fields (scripts/vendor_kuberay_crds.py)\n"
    )
    index[version] = version
    return version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="+", help="operator versions, e.g. 1.7.0")
    parser.add_argument("--git", type=Path, help="a clone (or bare git dir) of ray-project/kuberay")
    args = parser.parse_args(argv)
    git = _git_dir(args.git) if args.git else None
    index = _index()
    for version in args.versions:
        version = version.removeprefix("v")
        try:
            folder = vendor(version, git, index)
        except (subprocess.CalledProcessError, OSError) as exc:
            print(f"error: KubeRay {version}: {exc}", file=sys.stderr)
            return 1
        size = sum(p.stat().st_size for p in (DEST / folder).iterdir())
        print(f"{version}: {DEST.relative_to(REPO)}/{folder} ({size / 1024:.0f} KiB)")
    _write_index(index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
