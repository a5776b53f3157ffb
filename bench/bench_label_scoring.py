"""Label scoring throughput: first-token read-out (what serving uses) vs whole-sequence scoring.

`hazard.model.vlm.label_log_likelihoods` scores the five risk labels in one of two ways:
(a) first-token: the labels' first tokens are distinct, so one forward pass over the B prompts
    reads the next-token distribution at the answer position;
(b) whole-sequence: one forward pass over B x 5 prompt+label sequences, summing each label's
    token log-likelihoods (the path for labels whose first tokens collide).
This benchmark forces (b) on the same labels by patching `hazard.model.vlm.first_tokens_collide` to
return True inside the benchmark only, and times whole `label_log_likelihoods` calls (processor
encoding included, as serving pays it) on the cached tiny Qwen2.5-VL at several batch sizes.

Reported per batch size and path: images/s and ms/image (median and p90 over timed repeats, after
warm-up), process CPU time per image, and the (a)/(b) throughput ratio. Repeats of (a) and (b)
are interleaved, alternating which goes first, so that load changes on a shared machine hit
both alike. It also reports how often both paths pick the same argmax label on the benchmark
images: they are different estimators, so this is reported, not asserted.

    python -m bench.bench_label_scoring [--threads 1] [--budget-s 45] [--model DIR] [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np

from bench.common import (
    command,
    default_out,
    environment,
    git_state,
    loadavg,
    summarize,
    timed,
    write_json,
)

NAME = "label_scoring"
MODULE = "bench.bench_label_scoring"
PATHS = ("first_token", "whole_sequence")


@contextlib.contextmanager
def whole_sequence_path() -> Iterator[None]:
    """Force `label_log_likelihoods` onto its whole-sequence path (benchmark-local patch)."""
    import hazard.model.vlm as vlm

    with mock.patch.object(vlm, "first_tokens_collide", lambda label_ids: True):
        yield


def path_context(path: str) -> contextlib.AbstractContextManager:
    return whole_sequence_path() if path == "whole_sequence" else contextlib.nullcontext()


def model_kind(path: Path) -> str:
    from hazard.infra.bundle import NotABundleError, read_meta

    try:
        read_meta(path)
    except NotABundleError:
        return "cached tiny model, pre-trained only (not fine-tuned)"
    return "trained bundle"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads (default 1: stable on a shared 2-core machine)",
    )
    p.add_argument("--batch-sizes", default="1,8,32", help="comma-separated (default 1,8,32)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per path and batch size")
    p.add_argument("--min-repeats", type=int, default=3, help="timed calls per path, at least")
    p.add_argument("--max-repeats", type=int, default=20, help="timed calls per path, at most")
    p.add_argument(
        "--budget-s",
        type=float,
        default=45.0,
        help="wall-time budget for the timed repeats, shared by the batch sizes; min-repeats "
        "still run when it is spent (default 45)",
    )
    p.add_argument("--image-size", type=int, default=112, help="synthetic image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic images")
    p.add_argument(
        "--model",
        type=Path,
        help="checkpoint or trained bundle (<stage output_dir>/model) to score with; default the "
        "cached tiny model (pre-trained only); a bundle's own prompt and labels are used",
    )
    p.add_argument("--out", type=Path, help="JSON path (default bench/results/<name>-<UTC>.json)")
    return p.parse_args(argv)


def setup(args: argparse.Namespace, n_images: int):
    """Tiny model, processor, benchmark images (labels cycle through RISK_LABELS), prompt."""
    from hazard.core.labels import RISK_LABELS
    from hazard.core.tasks import get_task
    from hazard.demo.synthetic import render_scene
    from hazard.demo.tiny_qwen import ensure_tiny_model
    from hazard.infra.bundle import NotABundleError, open_bundle
    from hazard.model.vlm import load_model, load_processor

    path = args.model or ensure_tiny_model()
    task = get_task("corridor_risk")
    prompt, labels, processor_args = task.prompt, tuple(task.labels), ()
    try:  # a trained bundle: verified, scored with its own prompt, labels and image sizes
        bundle = open_bundle(path)
        meta = bundle.meta
        path, prompt, labels = bundle.path, meta.prompt, tuple(meta.labels)
        processor_args = (meta.max_pixels, meta.min_pixels)
    except NotABundleError:
        pass
    model = load_model(path).eval()
    processor = load_processor(path, *processor_args)
    rng = np.random.default_rng(args.seed)
    truth = [RISK_LABELS[i % len(RISK_LABELS)] for i in range(n_images)]
    images = [[render_scene(label, rng, size=args.image_size)[0]] for label in truth]
    if set(labels) != set(RISK_LABELS):
        raise SystemExit(f"{path} scores labels {labels}, not the five risk labels")
    return path, model, processor, images, truth, prompt, labels


def agreement(
    scores: dict[str, np.ndarray], labels: tuple[str, ...], truth: list[str]
) -> dict[str, object]:
    """How often (a) and (b) pick the same label; their probability gap; context counts."""
    probs = {}
    for path, ll in scores.items():
        z = ll - ll.max(axis=1, keepdims=True)
        probs[path] = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    picks = {path: p.argmax(axis=1) for path, p in probs.items()}
    a, b = picks["first_token"], picks["whole_sequence"]
    tv = 0.5 * np.abs(probs["first_token"] - probs["whole_sequence"]).sum(axis=1)
    truth_idx = np.array([labels.index(t) for t in truth])
    return {
        "n_images": int(len(a)),
        "argmax_agreement": float((a == b).mean()),
        "n_agree": int((a == b).sum()),
        "mean_total_variation": float(tv.mean()),
        "max_total_variation": float(tv.max()),
        "predicted_label_counts": {
            path: {label: int((p == i).sum()) for i, label in enumerate(labels)}
            for path, p in picks.items()
        },
        "accuracy_vs_rendered_label": {
            path: float((p == truth_idx).mean()) for path, p in picks.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    batch_sizes = sorted({int(b) for b in args.batch_sizes.split(",")})
    import torch

    torch.set_num_threads(args.threads)
    started = dt.datetime.now(dt.UTC)
    load_start = loadavg()
    t0 = time.perf_counter()
    n_images = max(batch_sizes)
    model_path, model, processor, images, truth, prompt, labels = setup(args, n_images)
    setup_s = time.perf_counter() - t0

    import hazard.model.vlm as vlm

    first_distinct = not vlm.first_tokens_collide(vlm.label_token_ids(processor, labels))
    if not first_distinct:
        print("warning: the labels' first tokens collide, so (a) is the whole-sequence path too")

    def call(path: str, batch: int) -> np.ndarray:
        with path_context(path):
            ll = vlm.label_log_likelihoods(model, processor, images[:batch], prompt, labels)
        return ll.numpy()

    # Agreement on all benchmark images; it doubles as the warm-up of the largest batch. A hook
    # records the rows each forward pass sees, to check that the patch really switched paths.
    rows: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda mod, a, kw: rows.append(int(kw["input_ids"].shape[0])), with_kwargs=True
    )
    scores, rows_seen = {}, {}
    try:
        for path in PATHS:
            rows.clear()
            scores[path] = call(path, n_images)
            rows_seen[path] = list(rows)
    finally:
        hook.remove()
    expected = {"first_token": [n_images], "whole_sequence": [n_images * len(labels)]}
    if first_distinct and rows_seen != expected:
        raise RuntimeError(f"forward rows {rows_seen}, expected {expected}: path switch failed")
    agree = agreement(scores, labels, truth)

    results = []
    t_timed = time.perf_counter()
    for k, batch in enumerate(batch_sizes):
        deadline = t_timed + args.budget_s * (k + 1) / len(batch_sizes)
        warm = 0 if batch == n_images else args.warmup  # the agreement run warmed it
        for _ in range(warm):
            for path in PATHS:
                call(path, batch)
        wall = {p: [] for p in PATHS}
        cpu = {p: [] for p in PATHS}
        load_before = loadavg()
        n = 0
        while n < args.max_repeats and (n < args.min_repeats or time.perf_counter() < deadline):
            order = PATHS if n % 2 == 0 else PATHS[::-1]
            for path in order:
                w, c, _ = timed(lambda path=path, batch=batch: call(path, batch))
                wall[path].append(w)
                cpu[path].append(c)
            n += 1
        entry = {
            "batch_size": batch,
            "repeats": n,
            "warmup_calls_per_path": warm if warm else "1 (the agreement run)",
        }
        entry["loadavg_before"] = load_before
        for path in PATHS:
            s = summarize(wall[path])
            c = summarize(cpu[path])
            entry[path] = {
                "wall_s_per_call": s,
                "cpu_s_per_call": c,
                "images_per_s_median": batch / s["median"],
                "ms_per_image_median": 1000 * s["median"] / batch,
                "ms_per_image_p90": 1000 * s["p90"] / batch,
                "cpu_ms_per_image_median": 1000 * c["median"] / batch,
                "raw_wall_s": wall[path],
            }
        a, b = entry["first_token"], entry["whole_sequence"]
        entry["throughput_ratio_a_over_b"] = a["images_per_s_median"] / b["images_per_s_median"]
        entry["cpu_ratio_a_over_b"] = b["cpu_s_per_call"]["median"] / a["cpu_s_per_call"]["median"]
        results.append(entry)
        print(
            f"  batch {batch:>3}: {n} repeats, ratio (a)/(b) "
            f"{entry['throughput_ratio_a_over_b']:.2f}x",
            flush=True,
        )
    timed_s = time.perf_counter() - t_timed

    payload = {
        "benchmark": NAME,
        "description": "images/s scoring the five risk labels: (a) first-token read-out vs "
        "(b) whole-sequence likelihood, hazard.model.vlm.label_log_likelihoods, "
        "tiny Qwen2.5-VL, CPU",
        "started_utc": started.isoformat(timespec="seconds"),
        **command(MODULE, argv),
        "git": git_state(),
        "environment": environment(),
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "settings": {
            "threads": args.threads,
            "batch_sizes": batch_sizes,
            "warmup": args.warmup,
            "min_repeats": args.min_repeats,
            "max_repeats": args.max_repeats,
            "budget_s": args.budget_s,
            "image_size": args.image_size,
            "seed": args.seed,
            "model": str(model_path),
            "model_kind": model_kind(model_path),
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "labels": list(labels),
            "first_tokens_distinct": first_distinct,
            "forward_rows_at_largest_batch": rows_seen,
            "timing_scope": "whole label_log_likelihoods call, processor encoding included",
        },
        "setup_s": setup_s,
        "timed_section_s": timed_s,
        "agreement": agree,
        "results": results,
    }
    out = write_json(args.out or default_out(NAME), payload)
    print()
    print(format_report(payload))
    print(f"\nresults: {out}")
    return 0


def format_report(payload: dict) -> str:
    """The markdown table (as pasted into docs/benchmarks.md) with its conditions line."""
    env, s, ag = payload["environment"], payload["settings"], payload["agreement"]
    lines = [
        f"label scoring, tiny Qwen2.5-VL ({s['model_kind']}, {s['n_parameters']:,} params), "
        f"{s['image_size']}px images, torch {env['torch']}, "
        f"torch threads {env['torch_num_threads']}, {env['cpu_count']} CPUs, "
        f"loadavg start {payload['loadavg_start']} end {payload['loadavg_end']}",
        "",
        "| batch | (a) first-token img/s | (a) ms/img median (p90) | (b) whole-seq img/s "
        "| (b) ms/img median (p90) | (a)/(b) throughput | (a)/(b) CPU time | repeats |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in payload["results"]:
        a, b = r["first_token"], r["whole_sequence"]
        lines.append(
            f"| {r['batch_size']} | {a['images_per_s_median']:.2f} "
            f"| {a['ms_per_image_median']:.0f} ({a['ms_per_image_p90']:.0f}) "
            f"| {b['images_per_s_median']:.2f} "
            f"| {b['ms_per_image_median']:.0f} ({b['ms_per_image_p90']:.0f}) "
            f"| {r['throughput_ratio_a_over_b']:.2f}x | {r['cpu_ratio_a_over_b']:.2f}x "
            f"| {r['repeats']} |"
        )
    lines += [
        "",
        f"argmax agreement (a) vs (b) on {ag['n_images']} images: "
        f"{ag['argmax_agreement']:.1%} ({ag['n_agree']}/{ag['n_images']}); "
        f"mean total-variation distance {ag['mean_total_variation']:.3f}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
