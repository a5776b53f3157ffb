#!/usr/bin/env python3
"""Virtual environments holding an image's lock, so the tests run what the images ship.

    python scripts/lock_env.py build cpu --venv .venv      # the project's own environment
    python scripts/lock_env.py build gpu --venv .venv-gpu-lock
    python scripts/lock_env.py verify gpu --venv .venv-gpu-lock
    python scripts/lock_env.py build gpu --venv .venv-gpu --with-vllm   # make gpu-smoke's
    python scripts/lock_env.py check                       # pyproject's ranges vs both locks

`build` installs the project's requirements for the image (`scripts/lock_images.py`) and its
`dev` extra (the test tools, which no image holds) with the lock as pip constraints, then the
project itself with `--no-deps`, and `verify`s the result: every installed package the lock
names must have the lock's version. Packages of the lock that the project never imports are left
out where they cannot be used on a CPU machine (`LEFT_OUT`, below; `--with-vllm` keeps them, for
a GPU machine); every other pin of the lock that the project's requirements pull in is installed
at exactly that version.

A project requirement the lock cannot satisfy (say `transformers>=5.22` against the GPU lock's
5.20.2) stops `build` before it installs anything, naming the package and both versions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lock_images  # noqa: E402  (the sibling script: requirements and lock paths)
from packaging.requirements import Requirement  # noqa: E402
from packaging.utils import canonicalize_name  # noqa: E402

REPO = lock_images.REPO
# Lock pins not installed in a lock environment, with the reason. vLLM is the GPU serving
# engine: a CUDA build that the CPU tests never import (its tests carry the `gpu` marker and
# run in `make gpu-smoke`); what only vLLM needs (flashinfer, xgrammar, ...) goes with it.
LEFT_OUT = {
    "vllm": "GPU serving engine (CUDA kernels); tested by `make gpu-smoke`",
    "bitsandbytes": "4-bit QLoRA kernels (CUDA); tested by `make gpu-smoke` (qlora-4bit)",
}
# Written into a built environment: which lock it holds (read by the tests).
RECORD = "hazard-lock.json"


class LockMismatch(RuntimeError):
    """A project requirement the lock cannot satisfy, or an environment off its lock."""


def read_lock(variant: str) -> dict[str, str]:
    """The lock's pins: canonical name -> version."""
    pins = {}
    for line in lock_images.LOCKS[variant].read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def unsatisfied(variant: str, pins: dict[str, str] | None = None) -> list[str]:
    """Each project requirement of `variant` that its lock cannot satisfy, as a sentence naming
    the package ('transformers>=5.22 needs ..., the gpu lock has 5.20.2')."""
    pins = read_lock(variant) if pins is None else pins
    problems = []
    for text in lock_images.requirements(variant):
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{name}: pyproject needs {req}, the {variant} lock has no {name}")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(
                f"{name}: pyproject needs {req}, the {variant} lock has {name}=={pins[name]}"
            )
    return problems


def env_requirements(variant: str, with_vllm: bool = False) -> list[str]:
    """What `build` asks pip for: the image's requirements (less LEFT_OUT unless `with_vllm`),
    the yielded pins unpinned (the lock decides them), and the test tools."""
    reqs = []
    for text in lock_images.requirements(variant):
        name = canonicalize_name(Requirement(text).name)
        if with_vllm or name not in LEFT_OUT:
            reqs.append(text)
    if variant == "gpu":
        reqs += sorted(lock_images.GPU_YIELDS)
    return reqs + lock_images.project()["optional-dependencies"]["dev"]


def installed(venv: Path) -> dict[str, str]:
    """Canonical name -> version of every distribution in `venv`."""
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {canonicalize_name(d["name"]): d["version"] for d in json.loads(out)}


def off_lock(variant: str, have: dict[str, str]) -> list[str]:
    """Installed packages whose version is not the lock's (the project itself excluded)."""
    pins = read_lock(variant)
    project = canonicalize_name(lock_images.PROJECT)
    return [
        f"{name}=={version} (the {variant} lock pins {pins[name]})"
        for name, version in sorted(have.items())
        if name in pins and name != project and version != pins[name]
    ]


def verify(variant: str, venv: Path) -> dict:
    """Raise LockMismatch unless every locked package in `venv` has the lock's version;
    returns a summary: how many pins are installed, and which are not (left out)."""
    have = installed(venv)
    wrong = off_lock(variant, have)
    if wrong:
        raise LockMismatch(f"{venv} is off the {variant} lock: " + "; ".join(wrong))
    pins = read_lock(variant)
    return {
        "variant": variant,
        "pinned_installed": sum(1 for n in pins if n in have),
        "pinned": len(pins),
        "left_out": sorted(n for n in pins if n not in have),
    }


def pip(venv: Path, *args: str) -> None:
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", *args], check=True)


def build(variant: str, venv: Path, with_vllm: bool = False) -> dict:
    """Create or update `venv` with the `variant` lock's versions; returns `verify`'s summary."""
    problems = unsatisfied(variant)
    if problems:
        raise LockMismatch(
            "the image cannot satisfy the project's requirements (change the range in "
            "pyproject.toml or re-run scripts/lock_images.py): " + "; ".join(problems)
        )
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip(venv, "install", "-q", "--upgrade", "pip")
    with tempfile.TemporaryDirectory() as tmp:
        reqs = Path(tmp) / "requirements.txt"
        reqs.write_text("\n".join(env_requirements(variant, with_vllm)) + "\n")
        lock = str(lock_images.LOCKS[variant])
        pip(venv, "install", "-q", "-c", lock, "-r", str(reqs))
    pip(venv, "install", "-q", "--no-deps", "-e", str(REPO))
    summary = verify(variant, venv)
    (venv / RECORD).write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("build", "verify"):
        p = sub.add_parser(name)
        p.add_argument("variant", choices=sorted(lock_images.LOCKS))
        p.add_argument("--venv", type=Path, required=True)
    sub.choices["build"].add_argument(
        "--with-vllm", action="store_true", help="install LEFT_OUT too (GPU machines)"
    )
    sub.add_parser("check", help="pyproject's requirements against both locks")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            problems = [p for v in sorted(lock_images.LOCKS) for p in unsatisfied(v)]
            if problems:
                raise LockMismatch("; ".join(problems))
            print("lock_env: both locks satisfy pyproject.toml")
            return 0
        if args.command == "build":
            summary = build(args.variant, args.venv, args.with_vllm)
        else:
            summary = verify(args.variant, args.venv)
    except LockMismatch as exc:
        print(f"lock_env: {exc}", file=sys.stderr)
        return 1
    print(
        f"lock_env: {args.venv} holds {summary['pinned_installed']} of the {args.variant} "
        f"lock's {summary['pinned']} pins, each at its locked version; "
        f"{len(summary['left_out'])} not installed (listed in {args.venv / RECORD})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
