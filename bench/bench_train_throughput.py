"""Training throughput: the Ray Train + DeepSpeed loop against a plain PyTorch loop, same work.

    python -m bench.bench_train_throughput [--steps 60] [--skip 5] [--repeats 3] [--threads 1]
        [--workers 1[,2]] [--prefetch 2[,0]] [--image-size 112|448] [--out PATH]

Both paths train stage 1 (`configs/tiny/stage1_base.yaml`: the cached tiny Qwen2.5-VL, LoRA r=16
on q/k/v/o, float32) with batch 8 for `--steps` optimizer steps (no evaluation or checkpoint
between steps) on the same data: synthetic scenes (`--n-per-label` per label) through the data
job, made once under runs/bench/train/. `--image-size 448` renders photo-sized scenes and
raises the data job's pixel budget and the processor's max_pixels to 448x448 (256 image tokens
per sample instead of 16) and optim.max_length to 512.
- `ray`: `ray_jobs.train.run(cfg)` on a local Ray (2 CPUs, started by the benchmark) with
  `scaling.num_workers` workers: Ray Data shards, DeepSpeed ZeRO-2 engine, the shared
  worker loop, then the final evaluation, checkpoint and bundle (outside the timed window).
- `plain`: one process per worker, no Ray, no DeepSpeed: `hazard.model.vlm.load_model`,
  `hazard.model.finetune.apply_lora`, `torch.optim.AdamW` over the LoRA weights with
  `hazard.model.finetune.lr_scheduler`, the train split read with pyarrow in a seeded shuffled
  order,
  per micro-batch the worker loop's own ingest (`hazard.model.training.ingest.Ingest` over
  `prepare_micro_batch`, `optim.prefetch_batches` ahead) and `inputs_loss`, backward, gradient
  clipping at `deepspeed.gradient_clipping`, step; losses read once per step. With 2 workers:
  two processes at once, each on half the rows, starting their loops together, without
  gradient exchange; their samples/s are summed.
Equal torch threads per worker: Ray sets OMP_NUM_THREADS to a worker's CPUs (`cpus_per_worker`
1 with one worker, 0.5 with two so that Ray Data keeps a CPU: 1 thread either way), and a probe
through the same Ray Train scaling records what the workers really get; the plain processes get
OMP_NUM_THREADS and `torch.set_num_threads` = `--threads` (default 1; the table warns when
the two differ).

Rates are steady-state: from the end of step `--skip` to the end of the last step (set-up and
the first steps excluded), from each step's `seconds` (the Ray run's
`metrics["history"]["steps"]`, the plain loop's own). tokens/s counts non-padding tokens
(prompt with image tokens, plus answer): the plain loop counts its encoded samples; for `ray` it
is the train split's mean tokens per sample (every row encoded once) x samples/s.
`overhead` = plain samples/s / ray samples/s at equal workers (medians over the `--repeats`
interleaved repeats); the target is <= 1.25.

Input preparation: each step records `input_wait_s` (the step's thread waiting for its next
prepared micro-batch) and `prepare_s` (decode + processor + collate, on whichever thread).
`--prefetch 0,2` runs every path with inputs prepared on the step's thread (0: the wait is the
whole preparation) and by the loader process (2 ahead); `input_share` = waiting / step time
and `prepare_share` = preparing / step time over the steady-state window.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
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

NAME = "train_throughput"
MODULE = "bench.bench_train_throughput"
STAGE1 = REPO_ROOT / "configs" / "tiny" / "stage1_base.yaml"
DATA_CONFIG = REPO_ROOT / "configs" / "tiny" / "data.yaml"
TARGET_OVERHEAD = 1.25
PATHS = ("plain", "ray")


def steady_state(steps: list[dict], skip: int) -> tuple[list[dict], float]:
    """The steps after step `skip` and the seconds they took: from the end of step `skip` to
    the end of the last step (`steps` as in a run's history: {"step", "seconds", ...}, seconds
    counted from any fixed start)."""
    by_step = sorted(steps, key=lambda s: s["step"])
    start = next((s for s in by_step if s["step"] == skip), None)
    if start is None:
        raise ValueError(f"no step {skip} in the history (steps {[s['step'] for s in by_step]})")
    window = [s for s in by_step if s["step"] > skip]
    if not window:
        raise ValueError(f"no step after step {skip}: run more steps than --skip")
    seconds = window[-1]["seconds"] - start["seconds"]
    if seconds <= 0:
        raise ValueError(f"steps {skip}..{window[-1]['step']} took {seconds} s")
    return window, seconds


def steady_rates(steps: list[dict], skip: int, samples_per_step: int | None = None) -> dict:
    """Samples/s (and tokens/s when the steps carry "tokens") over the steady-state window.

    Steps that carry "samples" are summed; otherwise each counts `samples_per_step`."""
    window, seconds = steady_state(steps, skip)
    if all("samples" in s for s in window):
        samples = sum(s["samples"] for s in window)
    elif samples_per_step is not None:
        samples = len(window) * samples_per_step
    else:
        raise ValueError("steps carry no 'samples' and no samples_per_step was given")
    out = {
        "steps": len(window),
        "seconds": seconds,
        "samples": samples,
        "samples_per_s": samples / seconds,
        "step_ms": 1000 * seconds / len(window),
    }
    if all("tokens" in s for s in window):
        out["tokens"] = sum(s["tokens"] for s in window)
        out["tokens_per_s"] = out["tokens"] / seconds
    for key, share in (("input_wait_s", "input_share"), ("prepare_s", "prepare_share")):
        if all(key in s for s in window):
            out[share] = sum(s[key] for s in window) / seconds
    return out


# --- data --------------------------------------------------------------------------------------


def prepare_data(root: Path, n_per_label: int, image_size: int = 112) -> Path:
    """Synthetic scenes of `image_size` px through the data job into root/data-<n>[-<size>]
    (made once, needs Ray); the pixel budget lets a `image_size`-square image through whole."""
    from hazard.config import load_config
    from hazard.config.data import DataConfig
    from hazard.demo.synthetic import write_folder_dataset
    from pipelines.prepare import prepare

    tag = f"{n_per_label}" if image_size == 112 else f"{n_per_label}-{image_size}"
    data = root / f"data-{tag}"
    if (data / "lineage.json").is_file():
        return data
    raw = root / f"raw-{tag}"
    shutil.rmtree(raw, ignore_errors=True)
    shutil.rmtree(data, ignore_errors=True)
    write_folder_dataset(raw, n_per_label=n_per_label, seed=1, size=image_size, corrupt=0)
    overrides = [f"source.uri={raw}", f"output_dir={data}"]
    if image_size != 112:
        overrides.append(f"validation.pixel_budget={max(image_size**2, 50176)}")
    cfg = load_config(DATA_CONFIG, DataConfig, overrides)
    prepare(cfg)
    return data


def token_stats(cfg, model_path: str) -> dict:
    """Non-padding tokens per sample (prompt, image tokens, answer) over every train row."""
    from hazard.core.tasks import get_task
    from hazard.infra.storage import read_parquet
    from hazard.model.vlm import encode, load_processor, open_stored_image

    processor = load_processor(model_path, cfg.model.max_pixels, cfg.model.min_pixels)
    prompt = get_task(cfg.optim.task).prompt
    table = read_parquet(f"{cfg.data_dir}/train", columns=["images", "answer"]).to_pydict()
    lengths, image_tokens = [], []
    for images, answer in zip(table["images"], table["answer"], strict=True):
        pics = [open_stored_image(b) for b in images]
        e = encode(processor, pics, prompt, str(answer), cfg.optim.max_length)
        lengths.append(len(e.input_ids))
        image_tokens.append(e.n_image_tokens)
    counts: dict[str, int] = {}
    for a in table["answer"]:
        counts[a] = counts.get(a, 0) + 1
    return {
        "rows": len(lengths),
        "rows_per_label": dict(sorted(counts.items())),
        "mean_tokens": float(np.mean(lengths)),
        "min_tokens": int(min(lengths)),
        "max_tokens": int(max(lengths)),
        "mean_image_tokens": float(np.mean(image_tokens)),
    }


# --- plain path --------------------------------------------------------------------------------


def plain_worker(job: dict) -> dict:
    """One plain training process (no Ray, no DeepSpeed); returns its step history."""
    import functools

    import torch

    torch.set_num_threads(job["threads"])
    import pyarrow.parquet as pq

    from hazard.config.train import TrainConfig
    from hazard.core.tasks import get_task
    from hazard.model.finetune import apply_lora, lr_scheduler
    from hazard.model.training.ingest import Ingest
    from hazard.model.training.step import inputs_loss, prepare_micro_batch
    from hazard.model.vlm import load_model, load_processor

    start = time.time()
    cfg = TrainConfig.model_validate(job["config"])
    rank, world, o = job["rank"], job["world"], cfg.optim
    torch.manual_seed(o.seed + rank)
    np.random.seed(o.seed + rank)
    processor = load_processor(job["model_path"], cfg.model.max_pixels, cfg.model.min_pixels)
    model = load_model(job["model_path"], cfg.model.dtype)
    model.config.use_cache = False
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = apply_lora(model, cfg.lora, seed=o.seed)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=o.lr, weight_decay=o.weight_decay)
    scheduler = lr_scheduler(o)(optimizer)
    table = pq.read_table(f"{cfg.data_dir}/train", columns=["id", "images", "answer"])
    shard = np.arange(table.num_rows)[rank::world]
    prompt = get_task(o.task).prompt
    setup_seconds = time.time() - start

    barrier = Path(job["barrier_dir"])  # the workers start their loops together
    (barrier / f"ready-{rank}").touch()
    while len(list(barrier.glob("ready-*"))) < world:
        time.sleep(0.05)

    prepare = functools.partial(
        prepare_micro_batch,
        processor,
        prompt=prompt,
        max_length=o.max_length,
        class_weights=job["class_weights"],
    )

    def data_batches(order):
        for i in range(0, len(order) - o.batch_size + 1, o.batch_size):  # drop_last
            yield table.take(order[i : i + o.batch_size]).to_pydict()

    steps, step, epoch, micro = [], 0, 0, 0
    samples = tokens = 0
    losses = []
    with Ingest(prepare, o.prefetch_batches) as ingest:
        while step < o.max_steps:
            order = np.random.default_rng(o.seed + epoch * 1000 + rank).permutation(shard)
            for mb in ingest.iterate(data_batches(order)):
                loss = inputs_loss(model, mb.inputs)
                (loss / o.grad_accum_steps).backward()  # DeepSpeed scales by accumulation alike
                losses.append(loss.detach())
                samples += mb.samples
                tokens += mb.tokens
                micro += 1
                if micro % o.grad_accum_steps:
                    continue
                torch.nn.utils.clip_grad_norm_(trainable, cfg.deepspeed.gradient_clipping)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                wait, prepared = ingest.take_times()
                steps.append(
                    {
                        "step": step,
                        "loss": torch.stack(losses).mean().item(),
                        "seconds": round(time.time() - start, 3),
                        "samples": samples,
                        "tokens": tokens,
                        "input_wait_s": round(wait, 4),
                        "prepare_s": round(prepared, 4),
                    }
                )
                samples = tokens = 0
                losses = []
                if step >= o.max_steps:
                    break
            epoch += 1
    return {
        "steps": steps,
        "started_at": start,  # epoch seconds: the workers' windows can be lined up
        "setup_seconds": setup_seconds,
        "epochs_started": epoch,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "shard_rows": int(len(shard)),
    }


def run_plain(cfg, model_path: str, weights: dict, threads: int, workdir: Path) -> dict:
    """`scaling.num_workers` plain processes at once, each with its own OMP_NUM_THREADS."""
    world = cfg.scaling.num_workers
    run_dir = workdir / f"plain-w{world}"
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "barrier").mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs = []
    t = time.perf_counter()
    for rank in range(world):
        job = {
            "config": cfg.model_dump(mode="json"),
            "model_path": model_path,
            "class_weights": weights,
            "threads": threads,
            "rank": rank,
            "world": world,
            "barrier_dir": str(run_dir / "barrier"),
            "result": str(run_dir / f"result-{rank}.json"),
        }
        (run_dir / f"job-{rank}.json").write_text(json.dumps(job))
        log = (run_dir / f"log-{rank}.txt").open("w")
        cmd = [sys.executable, "-m", MODULE, "--plain-worker", str(run_dir / f"job-{rank}.json")]
        procs.append((subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=log), log))
    for rank, (proc, log) in enumerate(procs):
        rc = proc.wait()
        log.close()
        if rc != 0:
            for other, _ in procs:  # the others would wait at the barrier for ever
                other.kill()
                other.wait()
            tail = (run_dir / f"log-{rank}.txt").read_text()[-3000:]
            raise RuntimeError(f"plain worker {rank} failed ({rc}):\n{tail}")
    wall = time.perf_counter() - t
    workers = [json.loads((run_dir / f"result-{r}.json").read_text()) for r in range(world)]
    return {"wall_seconds": wall, "workers": workers}


# --- ray path ----------------------------------------------------------------------------------


def _probe_loop(config: dict) -> None:
    """Ray Train worker: write this rank's torch threads and OMP_NUM_THREADS to a file."""
    import ray.train
    import torch

    rank = ray.train.get_context().get_world_rank()
    Path(config["dir"], f"threads-{rank}.json").write_text(
        json.dumps(
            {
                "torch_threads": torch.get_num_threads(),
                "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            }
        )
    )


def probe_ray_threads(cfg, workdir: Path) -> list[dict]:
    """The torch threads and OMP_NUM_THREADS each Ray Train worker gets under cfg's scaling
    (a run of the same TorchTrainer set-up with a loop that only records them)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    world = cfg.scaling.num_workers
    probe = workdir / f"probe-w{world}"
    shutil.rmtree(probe, ignore_errors=True)
    probe.mkdir(parents=True)
    trainer = TorchTrainer(
        _probe_loop,
        train_loop_config={"dir": str(probe)},
        scaling_config=ScalingConfig(
            num_workers=world, resources_per_worker={"CPU": cfg.scaling.cpus_per_worker}
        ),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name="probe", storage_path=str(probe / "ray_results")),
    )
    trainer.fit()
    return [json.loads((probe / f"threads-{r}.json").read_text()) for r in range(world)]


def run_ray(cfg) -> dict:
    """`ray_jobs.train.run` on a fresh output folder (the same run name would resume)."""
    from ray_jobs.train import run

    shutil.rmtree(cfg.output_dir, ignore_errors=True)
    t = time.perf_counter()
    metrics = run(cfg)
    return {
        "wall_seconds": time.perf_counter() - t,
        "train_seconds": metrics.get("train_seconds"),
        "steps": metrics["history"]["steps"],
        "samples": metrics.get("samples"),
        "skipped_samples": metrics.get("skipped_samples"),
    }


# --- the benchmark -----------------------------------------------------------------------------


def stage_config(data_dir: Path, out: Path, workers: int, args, prefetch: int = 2):
    from hazard.config import load_config
    from hazard.config.train import TrainConfig

    return load_config(
        STAGE1,
        TrainConfig,
        [
            f"data_dir={data_dir}",
            f"output_dir={out}",
            f"run_name=bench-train-w{workers}",
            f"optim.max_steps={args.steps}",
            f"optim.batch_size={args.batch_size}",
            "optim.grad_accum_steps=1",
            "eval.every_steps=0",
            "checkpoint.every_steps=0",
            f"scaling.num_workers={workers}",
            f"scaling.cpus_per_worker={1 if workers == 1 else 0.5}",
            f"optim.prefetch_batches={prefetch}",
            *photo_overrides(args.image_size),
            *args.overrides,
        ],
    )


def photo_overrides(image_size: int) -> list[str]:
    """Stage overrides for `image_size`-square images: the processor keeps them whole (one
    image token per 28x28 pixels, 256 at 448) and max_length has room for them."""
    if image_size == 112:
        return []
    return [f"model.max_pixels={image_size**2}", "optim.max_length=512"]


def _step_one(steps: list[dict]) -> float:
    """Seconds from the start of the worker's recipe to the end of step 1 (set-up included)."""
    return next(s["seconds"] for s in steps if s["step"] == 1)


SHARES = ("input_share", "prepare_share")


def _mean_shares(parts: list[dict]) -> dict:
    """The workers' mean input and prepare shares (those every worker recorded)."""
    return {k: statistics.mean(p[k] for p in parts) for k in SHARES if all(k in p for p in parts)}


def summarize_path(runs: list[dict], skip: int, samples_per_step: int, mean_tokens: float):
    """Steady-state rates of each repeat and their medians for one path."""
    each = []
    for r in runs:
        if "workers" in r:  # plain: each process's own window, samples/s summed
            parts = [steady_rates(w["steps"], skip) for w in r["workers"]]
            rate = {
                "samples_per_s": sum(p["samples_per_s"] for p in parts),
                "tokens_per_s": sum(p["tokens_per_s"] for p in parts),
                "step_ms": statistics.mean(p["step_ms"] for p in parts),
                **_mean_shares(parts),
                "setup_seconds": max(_step_one(w["steps"]) for w in r["workers"]),
                "per_worker": parts,
            }
        else:  # ray: every rank steps together; tokens from the data's mean per sample
            part = steady_rates(r["steps"], skip, samples_per_step)
            rate = {
                "samples_per_s": part["samples_per_s"],
                "tokens_per_s": part["samples_per_s"] * mean_tokens,
                "step_ms": part["step_ms"],
                **_mean_shares([part]),
                "setup_seconds": _step_one(r["steps"]),
                "window": part,
            }
        each.append({**rate, "wall_seconds": r["wall_seconds"]})
    keys = ("samples_per_s", "tokens_per_s", "step_ms", "setup_seconds", "wall_seconds")
    keys += tuple(k for k in SHARES if all(k in e for e in each))
    return {
        **{k: statistics.median(e[k] for e in each) for k in keys},
        "samples_per_s_each": [e["samples_per_s"] for e in each],
        "repeats": each,
    }


def compare(runs: dict[str, list[dict]], probe: list[dict], cfg, skip: int, mean_tokens: float):
    """Both paths' steady-state figures at one worker count, and the overhead plain/ray."""
    per_step = cfg.optim.batch_size * cfg.optim.grad_accum_steps * cfg.scaling.num_workers
    paths = {n: summarize_path(r, skip, per_step, mean_tokens) for n, r in runs.items()}
    plain_threads = [x["torch_threads"] for r in runs["plain"] for x in r["workers"]]
    each = zip(
        paths["plain"]["samples_per_s_each"], paths["ray"]["samples_per_s_each"], strict=True
    )
    return {
        "workers": cfg.scaling.num_workers,
        "prefetch_batches": cfg.optim.prefetch_batches,
        "cpus_per_worker": cfg.scaling.cpus_per_worker,
        "equal_threads": {t["torch_threads"] for t in probe} == set(plain_threads),
        "ray_worker_threads": probe,
        "plain_worker_threads": plain_threads,
        "paths": paths,
        "overhead": paths["plain"]["samples_per_s"] / paths["ray"]["samples_per_s"],
        "overhead_each": [a / b for a, b in each],
        "raw": runs,
    }


def print_table(payload: dict) -> None:
    """The benchmark's table, from its JSON payload."""
    cfg, data = payload["config"], payload["data"]
    steps, skip = cfg["optim"]["max_steps"], payload["skip"]
    print(
        f"\ntrain throughput: tiny Qwen2.5-VL, LoRA r={cfg['lora']['r']}, batch "
        f"{cfg['optim']['batch_size']} per worker, {steps} steps (rates over steps {skip + 1}-"
        f"{steps}), {payload['threads']} torch thread(s) per plain process, "
        f"{payload['repeats']} repeat(s), medians; {data['mean_tokens']:.1f} tokens/sample "
        f"({data['mean_image_tokens']:.0f} image tokens, {data.get('image_size', 112)} px scenes)"
    )
    print(
        f"{'workers':>7} {'prefetch':>8} {'path':<6} {'samples/s':>10} {'tokens/s':>10} "
        f"{'step ms':>8} {'input %':>8} {'prep %':>7} {'setup s':>8} {'run s':>7} {'threads':>8}"
    )
    target = payload["target_overhead"]
    for r in payload["results"].values():
        w, d = r["workers"], r["prefetch_batches"]
        threads = {
            "plain": ",".join(str(t) for t in sorted(set(r["plain_worker_threads"]))),
            "ray": ",".join(str(t["torch_threads"]) for t in r["ray_worker_threads"]),
        }
        for name, s in r["paths"].items():
            share = {k: f"{100 * s[k]:.1f}" if k in s else "-" for k in SHARES}
            print(
                f"{w:>7} {d:>8} {name:<6} {s['samples_per_s']:>10.2f} {s['tokens_per_s']:>10.0f} "
                f"{s['step_ms']:>8.0f} {share['input_share']:>8} {share['prepare_share']:>7} "
                f"{s['setup_seconds']:>8.1f} {s['wall_seconds']:>7.1f} {threads[name]:>8}"
            )
        verdict = "met" if r["overhead"] <= target else "NOT met"
        each = ", ".join(f"{x:.2f}" for x in r["overhead_each"])
        print(
            f"{'':>7} overhead plain/ray {r['overhead']:.2f}x (each repeat: {each}); "
            f"target <= {target}x {verdict}"
        )
        if not r["equal_threads"]:
            print(f"{'':>7} WARNING: thread counts differ (--threads must match Ray's workers)")
    print(
        "setup s: recipe start to the end of step 1; run s: the whole run (ray: run(cfg) with "
        "its final evaluation and bundle; plain: the processes)\n"
        "ray tokens/s = the split's mean tokens per sample x samples/s; plain counts its own\n"
        "input %: the step's thread waiting for its next micro-batch, prep %: decoding, "
        "processor and collate (whichever thread), both as shares of the step time"
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    p.add_argument("--skip", type=int, default=5, help="first steps left out of the rates")
    p.add_argument("--batch-size", type=int, default=8, help="samples per worker per step")
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs of each path")
    p.add_argument("--threads", type=int, default=1, help="torch threads per plain process")
    p.add_argument("--workers", default="1", help="comma list of worker counts, e.g. 1,2")
    p.add_argument(
        "--prefetch",
        default="0,2",
        help="comma list of optim.prefetch_batches to compare, e.g. 0,2 (0: on the step's thread)",
    )
    p.add_argument("--n-per-label", type=int, default=20, help="synthetic images per label")
    p.add_argument(
        "--image-size", type=int, default=112, help="scene side in px (448: photo-sized)"
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--workdir", type=Path, default=REPO_ROOT / "runs" / "bench" / "train")
    p.add_argument("--out", type=Path, default=None, help="JSON path")
    p.add_argument("--plain-worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.plain_worker:  # a child process of run_plain
        job = json.loads(args.plain_worker.read_text())
        Path(job["result"]).write_text(json.dumps(plain_worker(job)))
        return 0
    worker_counts = [int(w) for w in args.workers.split(",")]
    depths = [int(d) for d in args.prefetch.split(",")]
    args.workdir = args.workdir.resolve()
    if args.steps <= args.skip:
        p.error(f"--steps {args.steps} must be more than --skip {args.skip}")

    import ray

    from hazard.demo.tiny_qwen import ensure_tiny_model
    from hazard.model.finetune import class_weight_table

    load_before = loadavg()
    model_path = str(ensure_tiny_model())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    results: dict[str, dict] = {}
    try:
        data_dir = prepare_data(args.workdir, args.n_per_label, args.image_size)
        base = stage_config(data_dir, args.workdir / "ray-w1", 1, args, depths[-1])
        tokens = token_stats(base, model_path)
        weights = class_weight_table(base.optim.class_weights, tokens["rows_per_label"])
        for w in worker_counts:
            cfgs = {
                d: stage_config(data_dir, args.workdir / f"ray-w{w}", w, args, d) for d in depths
            }
            probe = probe_ray_threads(cfgs[depths[0]], args.workdir)
            runs = {d: {"plain": [], "ray": []} for d in depths}
            for rep in range(args.repeats):  # interleaved, so load changes hit all alike
                for d in depths if rep % 2 == 0 else depths[::-1]:
                    for name in PATHS if rep % 2 == 0 else PATHS[::-1]:
                        print(
                            f"[bench] {w} worker(s), prefetch {d}, repeat {rep + 1}: {name}",
                            flush=True,
                        )
                        if name == "plain":
                            run = run_plain(
                                cfgs[d], model_path, weights, args.threads, args.workdir
                            )
                        else:
                            run = run_ray(cfgs[d])
                        runs[d][name].append(run)
            for d in depths:
                results[f"{w}w-prefetch{d}"] = compare(
                    runs[d], probe, cfgs[d], args.skip, tokens["mean_tokens"]
                )
    finally:
        ray.shutdown()

    payload = {
        "benchmark": NAME,
        **command(MODULE, argv),
        "git": git_state(),
        "environment": environment(),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "model": model_path,
        "data": {
            "dir": str(data_dir),
            "n_per_label": args.n_per_label,
            "image_size": args.image_size,
            **tokens,
        },
        "config": base.model_dump(mode="json"),
        "skip": args.skip,
        "threads": args.threads,
        "repeats": args.repeats,
        "target_overhead": TARGET_OVERHEAD,
        "prefetch": depths,
        "results": results,
    }
    print_table(payload)
    path = write_json(args.out or default_out(NAME), payload)
    print(f"json: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
