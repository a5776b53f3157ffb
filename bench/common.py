"""Helpers shared by the benchmarks: timing, summaries, environment record, JSON output."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
LAUNCHER_ENV = "HAZARD_BENCH_LAUNCHER"
"""Set by `bench.run_all` so that a benchmark's JSON records the command the user typed."""


def utc_stamp() -> str:
    """A UTC timestamp usable in file names, e.g. 20250101T120000Z."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def default_out(name: str) -> Path:
    """Default JSON path for benchmark `name`: bench/results/<name>-<UTC stamp>.json."""
    return RESULTS_DIR / f"{name}-{utc_stamp()}.json"


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (os.getloadavg), rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def command(module: str, argv: list[str]) -> dict[str, str]:
    """The command that reproduces this run, and the one that launched it if different."""
    own = shlex.join(["python", "-m", module, *argv])
    return {"command": own, "launched_by": os.environ.get(LAUNCHER_ENV, own)}


def git_state() -> dict[str, object]:
    """Commit and whether the working tree had changes (figures describe the tree as it was)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def environment() -> dict[str, object]:
    """Software and machine facts that the figures depend on (call after setting threads)."""
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cuda_available": torch.cuda.is_available(),
        "executable": sys.executable,
    }


def timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    """Run `fn` once; (wall seconds, process CPU seconds over all threads, result)."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def summarize(samples: list[float]) -> dict[str, float]:
    """Median, p90 and p99 (linear interpolation), min, max and mean of `samples`."""
    a = np.asarray(samples, dtype=float)
    return {
        "n": int(a.size),
        "median": float(np.median(a)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "min": float(a.min()),
        "max": float(a.max()),
        "mean": float(a.mean()),
    }


def write_json(path: Path, payload: dict) -> Path:
    """Write `payload` as indented JSON, creating the folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path
