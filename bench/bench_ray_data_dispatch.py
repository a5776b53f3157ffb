"""How close Ray Data's map_batches gets to the cores it is given, against plain Ray tasks.

The data job's speedup over a plain loop is bounded by how well Ray Data keeps the cores busy,
whatever the work. This isolates that: N blocks, each task holding its core for a fixed time
(a busy wait, so CPU contention cannot stretch it), run three ways on a local Ray:

- `tasks`: one `ray.remote` task per block (the baseline; what the cores allow);
- `data`: `Dataset.map_batches` over the same materialized blocks (the pipeline's stages);
- `data-small-first`: the same with a 2-row block first (does a short first task help?);
- `data-tuned`: `data` after `pipelines.common.tune_ray_data_executor()` (what the data job
  runs with: resources re-read every 0.1 s, completions polled every 0.02 s); last, since the
  tuning holds for the rest of the process.

Reported per way: wall seconds, `efficiency` = busy seconds / (wall x CPUs), and each task's
start offset; in the JSON, `data_vs_tasks` = tasks wall / data wall (and
`data_tuned_vs_tasks` for `data-tuned`).

    python -m bench.bench_ray_data_dispatch [--cpus 2] [--blocks 10] [--task-s 1.0] [--out P]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pyarrow as pa

from bench.common import command, default_out, environment, git_state, loadavg, write_json
from pipelines.common import tune_ray_data_executor

NAME = "ray_data_dispatch"
ROWS_PER_BLOCK = 32


def _busy(seconds: float) -> tuple[float, float]:
    start = time.time()
    while time.time() - start < seconds:
        pass
    return start, time.time()


def _block_fn(batch: pa.Table, per_row_s: float) -> pa.Table:
    start, end = _busy(per_row_s * batch.num_rows)
    n = batch.num_rows
    return pa.table({"pid": [os.getpid()] * n, "t0": [start] * n, "t1": [end] * n})


def _summary(name: str, spans: list[tuple[float, float]], t0: float, wall: float, cpus: int):
    busy = sum(end - start for start, end in spans)
    return {
        "way": name,
        "wall_s": wall,
        "busy_s": busy,
        "efficiency": busy / (wall * cpus),
        "starts_s": sorted(round(start - t0, 3) for start, _ in spans),
    }


def run(args) -> dict:
    import ray

    per_row = args.task_s / ROWS_PER_BLOCK
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        busy = ray.remote(num_cpus=1)(_busy)
        ray.get([busy.remote(0.01) for _ in range(args.cpus)])  # workers up
        rows = args.blocks * ROWS_PER_BLOCK
        src = ray.data.range(rows).repartition(args.blocks).materialize()
        head, rest = src.split_at_indices([2])
        small_first = head.union(rest).materialize()
        out = []

        t0 = time.time()
        spans = ray.get([busy.remote(args.task_s) for _ in range(args.blocks)])
        out.append(_summary("tasks", spans, t0, time.time() - t0, args.cpus))
        ways = (("data", src), ("data-small-first", small_first), ("data-tuned", src))
        for name, ds in ways:
            if name == "data-tuned":
                tune_ray_data_executor()
            t0 = time.time()
            res = ds.map_batches(
                _block_fn,
                batch_format="pyarrow",
                batch_size=None,
                fn_kwargs={"per_row_s": per_row},
            ).materialize()
            wall = time.time() - t0
            table = res.to_pandas().drop_duplicates(["t0"])
            spans = list(zip(table["t0"], table["t1"], strict=True))
            out.append(_summary(name, spans, t0, wall, args.cpus))
        return {"ways": out, "ray_version": ray.__version__}
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    p.add_argument("--blocks", type=int, default=10, help="blocks (tasks) per way")
    p.add_argument("--task-s", type=float, default=1.0, help="seconds each task holds its core")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/)")
    args = p.parse_args(argv)
    result = run(args)
    ways = {w["way"]: w for w in result["ways"]}
    print(f"{'way':<18} {'wall s':>7} {'busy s':>7} {'efficiency':>10}  task starts (s)")
    for w in result["ways"]:
        starts = " ".join(f"{s:.2f}" for s in w["starts_s"])
        print(
            f"{w['way']:<18} {w['wall_s']:>7.2f} {w['busy_s']:>7.2f} "
            f"{w['efficiency']:>10.2f}  {starts}"
        )
    ratio = ways["tasks"]["wall_s"] / ways["data"]["wall_s"]
    tuned = ways["tasks"]["wall_s"] / ways["data-tuned"]["wall_s"]
    print(
        f"data_vs_tasks {ratio:.2f}, tuned {tuned:.2f} "
        "(1.0 = map_batches keeps the cores as busy as plain tasks)"
    )
    payload = {
        "benchmark": NAME,
        **command("bench.bench_ray_data_dispatch", argv),
        "git": git_state(),
        "environment": environment(),
        "loadavg_after": loadavg(),
        "cpus": args.cpus,
        "blocks": args.blocks,
        "task_s": args.task_s,
        **result,
        "data_vs_tasks": ratio,
        "data_tuned_vs_tasks": tuned,
    }
    path = write_json(args.out or default_out(NAME), payload)
    print(f"json: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
