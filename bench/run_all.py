"""Run every benchmark in bench/ (modules named bench_*.py), each in its own process.

    python -m bench.run_all [NAME ...] [--list]

NAME filters by substring (e.g. `label_scoring`). Each benchmark prints its table and writes its
JSON to bench/results/<name>-<UTC stamp>.json; this prints where each JSON went at the end and
exits non-zero if any benchmark failed. `make bench` calls this.
"""

from __future__ import annotations

import argparse
import os
import pkgutil
import shlex
import subprocess
import sys
import time

import bench
from bench.common import LAUNCHER_ENV, REPO_ROOT, default_out


def discover() -> list[str]:
    """Module names of the benchmarks, sorted (bench_label_scoring, ...)."""
    return sorted(
        m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_")
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(
        prog="python -m bench.run_all", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("names", nargs="*", help="only benchmarks whose name contains one of these")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = p.parse_args(argv)
    modules = [m for m in discover() if not args.names or any(n in m for n in args.names)]
    if args.list or not modules:
        print("\n".join(modules) if modules else f"no benchmark matches {args.names}")
        return 0 if modules or not args.names else 2
    env = {**os.environ, LAUNCHER_ENV: shlex.join(["python", "-m", "bench.run_all", *argv])}
    outcomes = []
    for name in modules:
        out = default_out(name.removeprefix("bench_"))
        cmd = [sys.executable, "-m", f"bench.{name}", "--out", str(out)]
        print(f"== {name}: {shlex.join(['python', *cmd[1:]])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=REPO_ROOT, env=env).returncode
        outcomes.append((name, rc, time.perf_counter() - t0, out))
        print(flush=True)
    print("== results")
    for name, rc, secs, out in outcomes:
        where = out.relative_to(REPO_ROOT) if rc == 0 and out.is_file() else f"FAILED (exit {rc})"
        print(f"  {name} ({secs:.0f} s): {where}")
    return 0 if all(rc == 0 for _, rc, _, _ in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
