"""Serving under load: this app vs the naive generate-and-parse server vs the model's own floor.

On loopback, closed-loop clients (each sends a request, waits for the answer, sends the next;
on a 503 it waits the Retry-After the server sent, as a well-behaved client does) post one
JSON image to `/v1/score` at each concurrency, for a fixed time after a warm-up:

(a) this app (`serve.app`: admission, batching, base -> specialist cascade) on a local Ray;
(b) the naive baseline (`bench/naive_generate_server.py`: one FastAPI process calling
    `model.generate` per request and parsing the label from the text), run twice: generating
    150 new tokens (`naive`: the length of a real fine-tuned VLM's answer with its rationale,
    what the published attempts paid) and stopping at end-of-sequence (`n-eos`: the tiny demo
    model stops right after the label, so this is the cheapest generate can be);
(c) the floor: the base engine's own batched forward (`TransformersEngine.score`), in process.

The clients run in their own process (aiohttp, the body encoded once) at the niceness of the
server under test: they share its cores, and Ray's workers run at nice 15.

Reported per server and concurrency: answered req/s (200s), p50/p99 latency of the 200s and of
the 503s, the median Retry-After the 503s carried, the share of valid answers (a label of the
contract), the cores the clients used, and statuses. In the JSON:
`speedup` = (a) peak req/s / (b, 150 tokens) peak req/s (`speedup_vs_eos` the same against
the EOS run), `floor_ratio` = (a)'s seconds per image at its
peak / (c)'s seconds per image at its best batch, and `overload_retention` = (a) req/s at the
highest concurrency / (a) peak.

    python -m bench.bench_serve_load [--base DIR --specialist DIR] [--concurrency 1,8,32,128]
        [--duration-s 20] [--image-px 112] [--out PATH]

The bundles default to the demo's (`make demo` writes them under runs/demo).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import io
import json
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import aiohttp
import httpx
import numpy as np

from bench.common import (
    REPO_ROOT,
    command,
    default_out,
    environment,
    git_state,
    loadavg,
    summarize,
    write_json,
)
from hazard.client import wait_ready
from hazard.core.labels import RISK_LABELS
from hazard.demo.local_ray import free_port, stop_process_group

NAME = "serve_load"
MODULE = "bench.bench_serve_load"
DEMO = REPO_ROOT / "runs" / "demo"
NAIVE_STOP_S = 10.0
"""Seconds the naive server gets to exit after SIGTERM before it is killed."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default=str(DEMO / "stage1_base" / "model"), help="base bundle")
    p.add_argument(
        "--specialist", default=str(DEMO / "stage2_specialist" / "model"), help="specialist bundle"
    )
    p.add_argument("--concurrency", default="1,8,32,128", help="client counts, comma-separated")
    p.add_argument("--duration-s", type=float, default=20.0, help="measured seconds per level")
    p.add_argument("--warmup-s", type=float, default=4.0, help="unmeasured seconds per level")
    p.add_argument("--image-px", type=int, default=112, help="side of the square test image")
    p.add_argument("--batch-size", type=int, default=8, help="model_batch_size of the app")
    p.add_argument("--retry-after-s", type=int, default=2, help="the app's base Retry-After (s)")
    p.add_argument("--max-retry-after-s", type=int, default=30, help="the app's Retry-After cap")
    p.add_argument("--max-wait-s", type=float, default=1.0, help="the app's admission deadline (s)")
    p.add_argument("--skip-naive", action="store_true", help="measure (a) and (c) only")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/)")
    return p.parse_args(argv)


def test_image(px: int) -> bytes:
    """A rendered corridor scene (the demo's generator), PNG-encoded."""
    from hazard.demo.synthetic import render_scene

    img, _ = render_scene("high_risk", np.random.default_rng(0))
    buf = io.BytesIO()
    img.resize((px, px)).save(buf, format="PNG")
    return buf.getvalue()


# -- load generation ---------------------------------------------------------------------------
# The clients share the machine's cores with the server they measure. Ray runs its workers
# (proxy, replicas) at nice 15, so a client at nice 0 would get ~28x their scheduler weight and
# starve the server it loads; each level therefore runs in its own process at the niceness of
# the server under test, and reports the CPU share it used.
async def _client(
    http: aiohttp.ClientSession, url: str, data: bytes, headers: dict, until: float, log: list
) -> None:
    while time.perf_counter() < until:
        start = time.perf_counter()
        retry_after = "1"
        try:
            async with http.post(url, data=data, headers=headers) as r:
                status, raw = r.status, await r.read()
                retry_after = r.headers.get("retry-after", "1")
            payload = json.loads(raw) if raw else {}
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            status, payload = -1, {"error": repr(exc)}
        end = time.perf_counter()
        valid = status == 200 and payload.get("risk_level") in RISK_LABELS
        wait = float(retry_after) if status == 503 else 0.0
        log.append((start, end, status, valid, wait))
        await asyncio.sleep(wait)


async def _level(url: str, body: dict, headers: dict, clients: int, warmup: float, measure: float):
    data = json.dumps(body).encode()
    headers = {**headers, "Content-Type": "application/json"}
    log: list[tuple[float, float, int, bool, float]] = []
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=120)
    cpu0 = time.process_time()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        t0 = time.perf_counter()
        until = t0 + warmup + measure
        loops = [_client(http, url, data, headers, until, log) for _ in range(clients)]
        await asyncio.gather(*loops)
    client_cpu = (time.process_time() - cpu0) / (time.perf_counter() - t0)
    lo, hi = t0 + warmup, until
    window = [e for e in log if lo <= e[1] <= hi]
    ok = [e for e in window if e[2] == 200]
    refused = [e for e in window if e[2] == 503]
    statuses: dict[str, int] = {}
    for e in window:
        statuses[str(e[2])] = statuses.get(str(e[2]), 0) + 1
    ms = lambda es: [1000 * (e[1] - e[0]) for e in es]  # noqa: E731
    return {
        "concurrency": clients,
        "req_per_s": len(ok) / measure,
        "latency_ms_200": summarize(ms(ok)) if ok else None,
        "latency_ms_503": summarize(ms(refused)) if refused else None,
        "retry_after_s": summarize([e[4] for e in refused]) if refused else None,
        "statuses": statuses,
        "valid_answer_rate": (sum(e[3] for e in ok) / len(ok)) if ok else 0.0,
        "client_cpu_cores": client_cpu,
        "client_nice": os.nice(0),
    }


def _run_level(*level_args) -> dict:
    return asyncio.run(_level(*level_args))


def run_levels(
    name: str,
    url: str,
    body: dict,
    headers: dict,
    args,
    levels: list[int],
    nice: int,
    rows: list,
    save: Callable[[], object],
) -> list:
    """Each level in a fresh client process at niceness `nice` (the server's); each row is
    appended to `rows` and `save()` called as soon as it is measured."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx, initializer=os.nice, initargs=(nice,)) as pool:
        for clients in levels:
            job = (url, body, headers, clients, args.warmup_s, args.duration_s)
            row = pool.submit(_run_level, *job).result()
            row["loadavg_after"] = loadavg()
            rows.append(row)
            save()
            print(_fmt(name, row), flush=True)
    return rows


def ray_worker_nice() -> int:
    """The niceness Ray gives its workers (the app's proxy and replicas run at it)."""
    import ray

    return ray.get(ray.remote(num_cpus=0)(lambda: os.nice(0)).remote())


HEADER = (
    f"{'server':<6} {'conc':>5} {'req/s':>8} {'p50 ms':>9} {'p99 ms':>9} {'503 p50':>9} "
    f"{'retry':>6} {'valid':>6} {'client':>6}  statuses"
)


def _fmt(name: str, row: dict) -> str:
    lat = row["latency_ms_200"] or {}
    rej = row["latency_ms_503"] or {}
    wait = row["retry_after_s"] or {}
    return (
        f"{name:<6} {row['concurrency']:>5} {row['req_per_s']:>8.1f} "
        f"{lat.get('median', float('nan')):>9.0f} {lat.get('p99', float('nan')):>9.0f} "
        f"{rej.get('median', float('nan')):>9.1f} {wait.get('median', float('nan')):>6.0f} "
        f"{row['valid_answer_rate']:>6.0%} "
        f"{row['client_cpu_cores']:>6.2f}  "
        f"{row['statuses']}"
    )


# -- (a) the app ---------------------------------------------------------------------------------
def serve_app(args, levels: list[int], body: dict, out: dict, save: Callable[[], object]) -> None:
    """(a): `out["config"]` the app's config, `out["levels"]` its rows as they are measured."""
    import ray
    from ray import serve

    from hazard.config.serve import ServeConfig
    from serve.app import compose_app

    key = base64.b16encode(os.urandom(12)).decode()
    cfg = ServeConfig(
        base={"name": "base", "version": "bench", "model_uri": args.base},
        specialist={"name": "specialist", "version": "bench", "model_uri": args.specialist},
        model_batch_size=args.batch_size,
        ingress={"num_cpus": 0.25},
        base_replicas={"num_cpus": 0.75},
        specialist_replicas={"num_cpus": 0.75},
        retry_after_s=args.retry_after_s,
        max_retry_after_s=args.max_retry_after_s,
        admission={"max_wait_s": args.max_wait_s},
    )
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"HAZARD_API_KEY": key}},
    )
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(compose_app(cfg), name="bench", route_prefix="/")
        root = f"http://127.0.0.1:{port}"
        _wait_ready(root, 180)
        url, auth = f"{root}/v1/score", {"X-API-Key": key}
        out["config"] = cfg.model_dump(mode="json")
        run_levels("app", url, body, auth, args, levels, ray_worker_nice(), out["levels"], save)
    finally:
        serve.shutdown()
        ray.shutdown()


# -- (b) the naive baseline ------------------------------------------------------------------------
def naive(
    args, levels: list[int], body: dict, min_new_tokens: int, name: str, rows: list, save
) -> None:
    """(b) in its own process group; its rows go to `rows` as they are measured. On SIGTERM
    uvicorn waits for the requests still queued in its thread pool (minutes of `generate` at
    128 clients), so the server gets NAIVE_STOP_S to exit and is then killed."""
    port = free_port()
    cmd = [sys.executable, "-m", "bench.naive_generate_server", "--model", args.base]
    cmd += ["--port", str(port), "--min-new-tokens", str(min_new_tokens)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, start_new_session=True)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", 300)
        url = f"http://127.0.0.1:{port}/v1/score"
        run_levels(name, url, body, {}, args, levels, os.nice(0), rows, save)  # server's nice
    finally:
        if stop_process_group(proc, term_wait_s=NAIVE_STOP_S, kill_wait_s=5) is None:
            print(f"warning: naive server (pid {proc.pid}) still running after SIGKILL")


# -- (c) the floor ---------------------------------------------------------------------------------
def floor(args, png: bytes) -> dict:
    """The base engine's batched forward on the decoded test image, ms per image per batch."""
    from PIL import Image

    from hazard.model.engines import TransformersEngine

    engine = TransformersEngine(args.base)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    out = {}
    for batch in sorted({1, args.batch_size}):
        images = [[image]] * batch
        engine.score(images)  # warm-up
        times = []
        for _ in range(max(3, 24 // batch)):
            t = time.perf_counter()
            engine.score(images)
            times.append(time.perf_counter() - t)
        out[str(batch)] = 1000 * float(np.median(times)) / batch
    return {"ms_per_image_by_batch": out, "best_ms_per_image": min(out.values())}


def _wait_ready(root: str, timeout_s: float) -> None:
    with httpx.Client() as client:
        if not wait_ready(client, root, timeout_s):
            raise RuntimeError(f"{root}/readyz not ready after {timeout_s:.0f} s")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    for role in ("base", "specialist"):
        if not Path(getattr(args, role)).is_dir() and "://" not in getattr(args, role):
            print(f"no {role} bundle at {getattr(args, role)}: run `make demo` or pass --{role}")
            return 2
    levels = sorted({int(c) for c in args.concurrency.split(",")})
    png = test_image(args.image_px)
    body = {"id": "bench", "image": base64.b64encode(png).decode()}
    started = dt.datetime.now(dt.UTC)
    path = Path(args.out or default_out(NAME))
    result = {
        "benchmark": NAME,
        "started_utc": started.isoformat(),
        "command": command(MODULE, argv),
        "git": git_state(),
        "environment": environment(),
        "image": {"px": args.image_px, "png_bytes": len(png)},
        "complete": False,  # True once every phase ran; the JSON is rewritten after each level
        "app": {"config": None, "levels": []},
        "naive": {"min_new_tokens": 150, "levels": []},
        "naive_eos": {"min_new_tokens": 0, "levels": []},
        "floor": None,
    }

    def save() -> None:
        write_json(path, {**result, **derived(result)})

    print(HEADER)
    try:
        result["floor"] = floor(args, png)
        save()
        print(f"floor  ms/image by batch {result['floor']['ms_per_image_by_batch']}", flush=True)
        serve_app(args, levels, body, result["app"], save)
        # (b) as the published attempts ran it: ~150 generated tokens per answer (a real
        # fine-tuned VLM writes a rationale); and as the tiny demo model runs it, stopping
        # after the label.
        if not args.skip_naive:
            naive(args, levels, body, 150, "naive", result["naive"]["levels"], save)
            naive(args, levels, body, 0, "n-eos", result["naive_eos"]["levels"], save)
        result["complete"] = True
    except BaseException as exc:  # the figures measured so far are still written
        result["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        save()
        print(f"wrote {path}" + ("" if result["complete"] else " (incomplete: see 'error')"))
    figures = derived(result)
    print(
        f"speedup {figures.get('speedup') or float('nan'):.1f}x "
        f"(vs stopping at EOS {figures.get('speedup_vs_eos') or float('nan'):.2f}x)  "
        f"overload_retention {figures.get('overload_retention', float('nan')):.2f}  "
        f"floor_ratio {figures.get('floor_ratio') or float('nan'):.2f}"
    )
    return 0


def derived(result: dict) -> dict:
    """The summary figures that the measured rows so far allow (a missing phase: left out)."""
    out: dict = {"peak_req_per_s": {}}
    peaks = {
        key: max(r["req_per_s"] for r in rows)
        for key, rows in (
            ("app", result["app"]["levels"]),
            ("naive", result["naive"]["levels"]),
            ("naive_eos", result["naive_eos"]["levels"]),
        )
        if rows
    }
    out["peak_req_per_s"] = peaks
    peak_a = peaks.get("app")
    if peak_a is None:
        return out
    out["overload_retention"] = result["app"]["levels"][-1]["req_per_s"] / peak_a if peak_a else 0.0
    if result["floor"] is not None:
        out["floor_ratio"] = (
            (1000 / peak_a) / result["floor"]["best_ms_per_image"] if peak_a else None
        )
    for key, name in (("naive", "speedup"), ("naive_eos", "speedup_vs_eos")):
        if key in peaks:
            out[name] = peak_a / peaks[key] if peaks[key] else None
    return out


if __name__ == "__main__":
    sys.exit(main())
