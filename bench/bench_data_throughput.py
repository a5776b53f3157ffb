"""Data job throughput: the Ray Data pipeline against a plain single-process loop, same work.

    python -m bench.bench_data_throughput [--images 300] [--config configs/data_corridor.yaml]

Input: `--images` photo-like 1280x720 JPEGs (synthetic corridor scenes, upscaled, with sensor-like
noise, about the size of phone photos) in a labelled folder without splits, made once and cached
under runs/bench/. Both paths run the same functions on the same input and config
(import -> probe -> dedup and split -> decode to the pixel budget -> augment -> Parquet shards):
- `loop`: one process, rows one after another (`probe_row`, `decide`, `decode_row`,
  `augment_rows`, `write_batch`, `write_outputs` for the quarantine and lineage);
- `ray`: `pipelines.prepare.prepare` on a local Ray with `--cpus` CPUs;
- `job` (unless --no-job): `python -m ray_jobs.prepare_data` as a user runs it, Ray start
  included, with its output size against the input's.
Every timed loop or ray run starts from fresh processes warmed up on a 10-image folder (modules
imported; for Ray, in batches of 4 so that every worker process is started and has imported
them), so that runs compare the work, not start-up, and no run inherits another's state:
- each loop run is a new process (spawned): a process that has already run the loop keeps the
  heap its run grew and skips the page faults of growing it again (600 photos: 3.5M minor
  faults in a first run, ~80k in later runs of the same process, which are ~20% faster);
- Ray is started (`ray.init`) and shut down around each ray run.
`--reuse-processes` runs every repeat in this process and one Ray instead (the earlier method).
Beside them, the per-core decode floor: images/s of decoding alone (to the pixel budget, as the
decode stage does, and at full size) in one process, the work no pipeline can skip.
Each path runs `--repeats` times, interleaved (loop then ray, then ray then loop, ...); the
table shows medians. Prints a table and writes JSON with `speedup` = the median over repeats of
loop seconds / ray seconds, each repeat's two runs back to back (a paired ratio: this machine's
speed drifts by 10-20% over minutes, which the pair cancels), and `speedup_of_medians` = ray
images/s / loop images/s from the median times.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bench.common import (
    REPO_ROOT,
    command,
    default_out,
    environment,
    git_state,
    loadavg,
    write_json,
)

NAME = "data_throughput"
SIZE = (1280, 720)


def make_photos(folder: Path, n: int, seed: int = 0) -> Path:
    """`n` labelled photo-like JPEGs in `folder` (labels.csv without splits); cached."""
    from PIL import Image, ImageFilter

    from hazard.core.labels import RISK_LABELS
    from hazard.demo.synthetic import render_scene

    done = folder / "labels.csv"
    if done.is_file() and sum(1 for _ in done.open()) == n + 1:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = RISK_LABELS[i % len(RISK_LABELS)]
        scene, _ = render_scene(label, rng, size=256)
        img = scene.resize(SIZE, Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(1.2))
        arr = np.asarray(img, dtype=np.int16) + rng.normal(0, 7, (SIZE[1], SIZE[0], 3))
        photo = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        name = f"images/{label}_{i:05d}.jpg"
        photo.save(folder / name, "JPEG", quality=88)
        rows.append((name, label))
    with (folder / "labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label"])
        w.writerows(rows)
    return folder


def folder_bytes(path: Path, suffixes: tuple[str, ...]) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.suffix in suffixes)


def decode_floor(folder: Path, budget: int | None, limit: int = 60) -> dict[str, float]:
    """Images/s of decoding alone in one process: to the budget (draft) and at full size."""
    from PIL import Image

    from hazard.infra.images import decode_image

    files = sorted((folder / "images").glob("*.jpg"))[:limit]
    blobs = [f.read_bytes() for f in files]
    t = time.perf_counter()
    for b in blobs:
        decode_image(b, max_bytes=1 << 30, pixel_budget=budget)
    to_budget = len(blobs) / (time.perf_counter() - t)
    t = time.perf_counter()
    for b in blobs:
        with Image.open(io.BytesIO(b)) as img:
            img.load()
    full = len(blobs) / (time.perf_counter() - t)
    return {"to_budget_per_s": to_budget, "full_size_per_s": full}


def run_loop(config) -> dict[str, object]:
    """The same work in one process, through the stages' plain functions; returns counts."""
    from datetime import UTC, datetime

    import pyarrow as pa
    import pyarrow.fs as pafs

    from hazard.infra import storage
    from pipelines.augment import augment_rows
    from pipelines.common import stage_table
    from pipelines.decode import decode_row, probe_row
    from pipelines.dedup_split import LIGHT_COLUMNS, apply_decisions, decide
    from pipelines.sources import plan_source, source_rows
    from pipelines.write import clear_outputs, light_rows, write_batch, write_outputs

    started_at, t0 = datetime.now(UTC), time.perf_counter()
    source = plan_source(config)
    with storage.open_input(source.annotation_uri, config.storage) as fh:
        rows = [probe_row(r, config) for r in source_rows(source, fh)]
    light = pa.Table.from_pylist([{c: r.get(c) for c in LIGHT_COLUMNS} for r in rows])
    d = decide(light, config.split)
    rows = [decode_row(apply_decisions(r, d.duplicates, d.splits), config) for r in rows]
    rows = augment_rows(rows, config.augment, config.validation)
    fs = pafs.LocalFileSystem()
    clear_outputs(config)
    final = write_batch(stage_table(rows), config.output_dir, config.shards.rows_per_file, fs)
    report = write_outputs(light_rows([final]), d, config, started_at, t0, {})
    return {"rows_written": report["written"], "rows_total": len(rows)}


def run_ray(config) -> dict[str, object]:
    from pipelines.prepare import prepare

    report = prepare(config)
    return {"rows_written": report["written"], "phases": report["timing"]["phases"]}


def timed(run, config) -> tuple[float, dict[str, object]]:
    """(seconds, result) of `run(config)`."""
    t = time.perf_counter()
    result = run(config)
    return time.perf_counter() - t, result


def _warm_then_time_loop(config, warm) -> tuple[float, dict[str, object]]:
    """In a fresh process: the loop warmed up on `warm`, then timed on `config`."""
    run_loop(warm)
    return timed(run_loop, config)


def time_loop(config, warm, fresh: bool) -> tuple[float, dict[str, object]]:
    """The loop timed on `config`: in a new process warmed up on `warm` (fresh), or here."""
    if not fresh:
        return timed(run_loop, config)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_warm_then_time_loop, (config, warm))


@contextlib.contextmanager
def local_ray(cpus: int, warm) -> Iterator[None]:
    """A local Ray of `cpus` CPUs, its workers warmed up on `warm`, shut down afterwards."""
    import ray

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        run_ray(warm)
        yield
    finally:
        ray.shutdown()


def time_ray(config, warm, cpus: int, fresh: bool) -> tuple[float, dict[str, object]]:
    """The pipeline timed on `config`: on a Ray started for it (fresh) or the running one."""
    if not fresh:
        return timed(run_ray, config)
    with local_ray(cpus, warm):
        return timed(run_ray, config)


def run_job(args, source: Path, out: Path) -> dict[str, object]:
    """`python -m ray_jobs.prepare_data` in its own process (its own local Ray)."""
    cmd = [
        sys.executable,
        "-m",
        "ray_jobs.prepare_data",
        "--source",
        str(source),
        "--out",
        str(out),
    ]
    if args.config:
        cmd[3:3] = ["--config", args.config]
    cmd += [f"--set={o}" for o in args.overrides]
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"data job failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {"seconds": seconds, "command": " ".join(cmd[1:])}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m bench.bench_data_throughput")
    p.add_argument("--images", type=int, default=300, help="1280x720 JPEGs in the input")
    p.add_argument("--config", help="data config YAML (default: DataConfig defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each path (median)")
    p.add_argument("--no-job", action="store_true", help="skip the whole-job run")
    p.add_argument(
        "--reuse-processes",
        action="store_true",
        help="run every repeat in this process and one Ray (default: fresh processes each)",
    )
    p.add_argument("--workdir", type=Path, default=REPO_ROOT / "runs" / "bench" / NAME)
    p.add_argument("--out", type=Path, default=None, help="JSON path")
    args = p.parse_args(argv)

    from hazard.config import load_config
    from hazard.config.data import DataConfig

    source = make_photos(args.workdir / f"photos-{args.images}", args.images)
    input_bytes = folder_bytes(source / "images", (".jpg",))

    def config_for(out: Path) -> DataConfig:
        overrides = [*args.overrides, f"source.uri={source}", f"output_dir={out}"]
        return load_config(args.config, DataConfig, overrides)

    cfg = config_for(args.workdir / "out-loop")
    floor = decode_floor(source, cfg.validation.pixel_budget)
    results: dict[str, dict] = {}
    warm = make_photos(args.workdir / "photos-warmup", 10, seed=1)

    def warm_config(out: Path) -> DataConfig:  # batches of 4: every Ray worker warms up
        overrides = [*args.overrides, f"source.uri={warm}", f"output_dir={out}", "ray.batch_size=4"]
        return load_config(args.config, DataConfig, overrides)

    fresh = not args.reuse_processes
    warm_loop = warm_config(args.workdir / "out-warmup-loop")
    warm_ray = warm_config(args.workdir / "out-warmup-ray")
    samples: dict[str, list[float]] = {"loop": [], "ray": []}
    with contextlib.ExitStack() as stack:
        if not fresh:  # one warm-up of each, then every repeat in this process and this Ray
            run_loop(warm_loop)
            stack.enter_context(local_ray(args.cpus, warm_ray))
        for rep in range(args.repeats):  # interleaved, so load changes hit both paths alike
            for name in ("loop", "ray") if rep % 2 == 0 else ("ray", "loop"):
                out = args.workdir / f"out-{name}"
                shutil.rmtree(out, ignore_errors=True)
                if name == "loop":
                    seconds, res = time_loop(config_for(out), warm_loop, fresh)
                else:
                    seconds, res = time_ray(config_for(out), warm_ray, args.cpus, fresh)
                samples[name].append(seconds)
                results[name] = {**res, "output_bytes": folder_bytes(out, (".parquet",))}
    for name, secs in samples.items():
        results[name].update(seconds=statistics.median(secs), seconds_each=secs)

    if not args.no_job:
        out = args.workdir / "out-job"
        shutil.rmtree(out, ignore_errors=True)
        results["job"] = run_job(args, source, out)
        results["job"]["output_bytes"] = folder_bytes(out, (".parquet",))

    n = args.images
    for r in results.values():
        r["images_per_s"] = n / r["seconds"]
        r["output_ratio"] = r["output_bytes"] / input_bytes
    speedup_of_medians = results["ray"]["images_per_s"] / results["loop"]["images_per_s"]
    paired = [lp / ry for lp, ry in zip(samples["loop"], samples["ray"], strict=True)]
    speedup = statistics.median(paired)
    payload = {
        "benchmark": NAME,
        **command("bench.bench_data_throughput", argv),
        "git": git_state(),
        "environment": environment(),
        "loadavg_after": loadavg(),
        "input": {"images": n, "size": list(SIZE), "bytes": input_bytes},
        "config": cfg.model_dump(mode="json"),
        "cpus": args.cpus,
        "fresh_processes_per_repeat": fresh,
        "decode_floor_per_core": floor,
        "results": results,
        "speedup": speedup,
        "speedup_each_repeat": paired,
        "speedup_of_medians": speedup_of_medians,
        "ideal_speedup": args.cpus,
    }
    print(
        f"\ndata throughput: {n} JPEGs {SIZE[0]}x{SIZE[1]}, {input_bytes / 1e6:.1f} MB in, "
        f"pixel budget {cfg.validation.pixel_budget}, {cfg.augment.copies} copies, "
        f"{args.cpus} CPUs, {'fresh' if fresh else 'reused'} processes per repeat"
    )
    print(f"{'path':<6} {'seconds':>8} {'images/s':>9} {'out MB':>8} {'out/in':>7}")
    for name, r in results.items():
        print(
            f"{name:<6} {r['seconds']:>8.1f} {r['images_per_s']:>9.2f} "
            f"{r['output_bytes'] / 1e6:>8.1f} {r['output_ratio']:>7.2f}"
        )
    print(
        f"speedup ray/loop {speedup:.2f}x, median of repeats "
        f"{' '.join(f'{x:.2f}' for x in paired)} (of medians {speedup_of_medians:.2f}x; ideal "
        f"{args.cpus}x); decode floor per core: "
        f"{floor['to_budget_per_s']:.1f} images/s to budget, {floor['full_size_per_s']:.1f} "
        f"full size"
    )
    path = write_json(args.out or default_out(NAME), payload)
    print(f"json: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
