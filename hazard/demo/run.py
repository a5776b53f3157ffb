"""The end-to-end demo on the embedded default: local Ray, local files, tiny Qwen2.5-VL.

    hazard demo [--out runs/demo] [--n-per-label 60] [--steps 120]

1. builds (once per machine, then cached) the tiny Qwen2.5-VL;
2. writes a synthetic labelled corridor folder (with a few corrupt entries);
3. starts a local Ray head with its own auth token and submits, with `ray job submit`, the data
   job, stage 1, stage 2 and the calibration job;
4. deploys the Serve application with `serve deploy`, waits for /readyz and scores the held-out
   test images over HTTP (with an API key);
5. writes `<out>/report.json` and prints a summary; stops everything it started, whatever happens.

The terminal gets a line per step, a progress bar per long step and the summary; every command's
own output goes to `<out>/logs/`. The default `--out` is where `configs/tiny/*.yaml` point, so
`hazard serve --config configs/tiny/serve.yaml` serves what the demo trained.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import shutil
import sys
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq

from hazard.client import wait_ready
from hazard.config import load_config
from hazard.config.serve import ServeConfig, serve_config, with_api_key, write_serve_config
from hazard.core.metrics import classification_report
from hazard.demo.console import Console, JobFailed, run_logged
from hazard.demo.local_ray import LocalRay, free_port
from hazard.demo.synthetic import write_folder_dataset
from hazard.demo.tiny_qwen import default_cache_dir
from hazard.infra.bundle import open_bundle

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = Path("runs/demo")
STEPS = 8


def layout(out: Path) -> dict[str, Path]:
    """Where each step writes under `out` (for runs/demo: the paths in configs/tiny/)."""
    return {
        "raw": out / "raw",
        "data": out / "data",
        "stage1": out / "stage1_base",
        "stage2": out / "stage2_specialist",
        "calibration": out / "calibration",
        "logs": out / "logs",
    }


def _score_test_images(url: str, api_key: str, data_dir: Path, limit: int, con: Console) -> dict:
    """POST held-out test images (JSON base64 and multipart), plus two bad requests."""
    table = pq.read_table(data_dir / "test", columns=["id", "images", "answer"]).to_pylist()
    headers = {"Authorization": f"Bearer {api_key}"}
    responses, truth, preds = [], [], []
    rows = table[:limit]
    with httpx.Client(timeout=120) as client, con.bar("scoring", len(rows), "image") as bar:
        for i, row in enumerate(rows):
            img = row["images"][0]
            if i % 2:
                r = client.post(
                    f"{url}/v1/score",
                    headers=headers,
                    files={"file": (f"{row['id']}.png", img, "image/png")},
                )
            else:
                r = client.post(
                    f"{url}/v1/score",
                    headers=headers,
                    json={"id": row["id"], "image": base64.b64encode(img).decode()},
                )
            r.raise_for_status()
            body = r.json()
            responses.append(dict(body, true_label=row["answer"]))
            truth.append(row["answer"])
            preds.append(body["risk_level"])
            bar.update(1)
        unauth = client.post(f"{url}/v1/score", json={"id": "x", "image": ""})
        bad = client.post(
            f"{url}/v1/score",
            headers=headers,
            json={"id": "bad", "image": base64.b64encode(b"not an image").decode()},
        )
    return {
        "n": len(responses),
        "metrics": classification_report(truth, preds),
        "examples": responses[:5],
        "error_examples": [
            {"request": "no API key", "status": unauth.status_code, "body": unauth.json()},
            {"request": "undecodable image", "status": bad.status_code, "body": bad.json()},
        ],
        "mean_latency_ms": round(sum(r["latency_ms"] for r in responses) / len(responses), 1),
        "escalation_rate": sum(r["escalated"] for r in responses) / len(responses),
    }


def run_demo(out: Path, n_per_label: int, steps: int, workers: int, score_limit: int) -> dict:
    """Run every step; raises JobFailed (with the step's log) when one fails."""
    out = out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    paths = layout(out)
    logs = paths["logs"]
    logs.mkdir(parents=True)
    con = Console(STEPS)
    timings: dict[str, float] = {}
    t0 = time.time()
    py = sys.executable

    con.step(1, "tiny Qwen2.5-VL: built and pre-trained once per machine, then cached")
    with con.bar("pre-training", total=1) as bar:
        timings["tiny_model"] = _run(
            con, "model build", [py, "-m", "hazard.demo.tiny_qwen"], logs / "tiny_model.log", bar
        )
    con.say(f"    {default_cache_dir()}")

    con.step(2, f"synthetic corridor folder: {n_per_label} images per label + 4 corrupt entries")
    counts = write_folder_dataset(paths["raw"], n_per_label=n_per_label, seed=0, corrupt=4)
    con.say(f"    {counts['rows']} rows in {_relative(paths['raw'])}")

    common = [f"--set=data_dir={paths['data']}", f"--set=optim.max_steps={steps}"]
    common.append(f"--set=scaling.num_workers={workers}")
    with LocalRay(num_cpus=max(2, workers), run_dir=out, repo=REPO, log_dir=logs) as head:
        con.step(3, f"local Ray head (token auth, token in {head.token_path.name}): {head.address}")
        jobs = [
            (
                4,
                "data job: import -> validate/quarantine -> augment -> Parquet",
                "data_job",
                None,
                [
                    "ray_jobs.prepare_data",
                    "--config=configs/tiny/data.yaml",
                    f"--set=source.uri={paths['raw']}",
                    f"--set=output_dir={paths['data']}",
                ],
            ),
            (
                5,
                f"stage 1 base: DeepSpeed ZeRO-2 + LoRA on {workers} Ray Train workers",
                "stage1_job",
                steps,
                [
                    "ray_jobs.train",
                    "--config=configs/tiny/stage1_base.yaml",
                    *common,
                    f"--set=output_dir={paths['stage1']}",
                ],
            ),
            (
                6,
                "stage 2 specialist: high-risk enriched, class-weighted, vision LoRA",
                "stage2_job",
                steps,
                [
                    "ray_jobs.train",
                    "--config=configs/tiny/stage2_specialist.yaml",
                    *common,
                    f"--set=output_dir={paths['stage2']}",
                ],
            ),
            (
                7,
                "calibration: fit the correction coefficient and the escalation threshold",
                "calibrate_job",
                None,
                [
                    "ray_jobs.calibrate",
                    "--config=configs/tiny/calibrate.yaml",
                    f"--set=data_dir={paths['data']}",
                    f"--set=base_uri={paths['stage1'] / 'model'}",
                    f"--set=specialist_uri={paths['stage2'] / 'model'}",
                    f"--set=output_dir={paths['calibration']}",
                ],
            ),
        ]
        for n, title, key, total, (module, *args) in jobs:
            con.step(n, f"{title} (ray job submit)")
            with con.bar("training" if total else "running", total=total) as bar:
                timings[key] = _run(
                    con,
                    title.split(":")[0],
                    head.submit_cmd(module, *args),
                    logs / f"{key}.log",
                    bar,
                    head,
                )

        con.step(8, "serving: serve deploy, wait for /readyz, score held-out images over HTTP")
        port = free_port()
        api_key = secrets.token_urlsafe(24)
        serve_cfg = load_config(
            REPO / "configs/tiny/serve.yaml",
            ServeConfig,
            [
                f"base.model_uri={paths['stage1'] / 'model'}",
                f"specialist.model_uri={paths['stage2'] / 'model'}",
            ],
        )
        doc = serve_config(serve_cfg, host="127.0.0.1", port=port)
        # Replicas read the key from their environment, as from a Secret on Kubernetes.
        serve_file = out / "serve_config.yaml"
        write_serve_config(with_api_key(doc, serve_cfg, {"HAZARD_API_KEY": api_key}), serve_file)
        start = time.time()
        with con.bar("deploying") as bar:
            _run(
                con,
                "serve deploy",
                head.serve_cmd("deploy", str(serve_file)),
                logs / "serve.log",
                bar,
                head,
            )
            redacted = with_api_key(doc, serve_cfg, {"HAZARD_API_KEY": "<redacted>"})
            write_serve_config(redacted, serve_file)
            url = f"http://127.0.0.1:{port}"
            with httpx.Client() as client:
                if not wait_ready(client, url, timeout_s=300):
                    replica_logs = head.temp_dir / "session_latest" / "logs" / "serve"
                    raise JobFailed(
                        f"serving (/readyz not ready within 300 s; replica logs in {replica_logs})",
                        -1,
                        logs / "serve.log",
                    )
        timings["serve_ready"] = round(time.time() - start, 1)  # from `serve deploy` on
        serving = _score_test_images(url, api_key, paths["data"], score_limit, con)
        _run(
            con,
            "serve shutdown",
            head.serve_cmd("shutdown", "-y"),
            logs / "serve_shutdown.log",
            None,
            head,
        )

    report = _report(paths, counts, timings, serving, time.time() - t0)
    report["ray_temp_dir"] = str(head.temp_dir)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    _print_summary(con, report, out)
    return report


# Ray's job head waits only 10 s for the node's job agent; on a loaded machine a fresh head's
# agent can take longer to register, and the submission is refused before the job starts.
AGENT_NOT_READY = "No available agent to submit job"
SUBMIT_ATTEMPTS = 8  # waits 5, 10, 15, 15, ... s between them: about 1.5 min in all


def _run(con: Console, what: str, cmd: list[str], log: Path, bar, head: LocalRay | None = None):
    """Run one logged command, its `step N/M` lines moving `bar`; a job submission refused
    because the head's job agent is not up yet is tried again (nothing ran)."""
    on_line = con.follow_steps(bar) if bar is not None else (lambda line: None)
    for attempt in range(1, SUBMIT_ATTEMPTS + 1):
        try:
            seconds = run_logged(what, cmd, log, on_line, env=head.env if head else None, cwd=REPO)
            break
        except JobFailed as exc:
            if attempt == SUBMIT_ATTEMPTS or AGENT_NOT_READY not in exc.log.read_text():
                raise
            con.say(f"    the Ray job agent is not ready yet; submitting again ({attempt})")
            time.sleep(min(5 * attempt, 15))
    if bar is not None and bar.total:
        bar.n = bar.total
        bar.refresh()
    return seconds


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _report(paths: dict[str, Path], counts: dict, timings: dict, serving: dict, total: float):
    def stage(key: str) -> dict:
        m = _load(paths[key] / "metrics.json")
        bundle = open_bundle(paths[key] / "model")  # verified, as serving will load it
        return {"metrics": m, "val_report": bundle.meta.val_report}

    return {
        "dataset": counts,
        "lineage": _load(paths["data"] / "lineage.json"),
        "stage1_base": stage("stage1"),
        "stage2_specialist": stage("stage2"),
        "calibration": _load(paths["calibration"] / "calibration.json"),
        "serving": serving,
        "timings_s": timings,
        "total_seconds": round(total, 1),
    }


def next_commands(out: Path) -> list[str]:
    """What to try after the demo: serve what it trained, score an image, read the report."""
    rel = _relative(out)
    overrides = ""
    if rel != DEFAULT_OUT:
        overrides = (
            f" \\\n      --set base.model_uri={rel}/stage1_base/model"
            f" --set specialist.model_uri={rel}/stage2_specialist/model"
        )
    return [
        "export HAZARD_API_KEY=change-me",
        f".venv/bin/hazard serve --config configs/tiny/serve.yaml --port 8000{overrides}",
        "# in another shell, with the same HAZARD_API_KEY:",
        f".venv/bin/hazard score {rel}/raw/images/high_risk_0.png --url http://127.0.0.1:8000",
        f"less {rel}/report.json",
    ]


def _relative(path: Path) -> Path:
    try:
        return path.resolve().relative_to(REPO)
    except ValueError:
        return path.resolve()


def _print_summary(con: Console, r: dict, out: Path) -> None:
    s1, s2 = r["stage1_base"]["metrics"], r["stage2_specialist"]["metrics"]
    cal = r["calibration"]["test"]
    sv = r["serving"]
    con.say("\n" + "=" * 72)
    con.say("hazard-cascade demo summary")
    con.say("=" * 72)
    con.say(
        f"stage 1 base        val macro-F1 {s1['val_macro_f1']:.3f} (chance 0.20), "
        f"acc {s1['val_accuracy']:.3f}, best step {s1['best_step']}/{s1['step']}, "
        f"trained {s1['train_seconds']}s"
    )
    con.say(
        f"stage 2 specialist  val macro-F1 {s2['val_macro_f1']:.3f}, high-risk recall "
        f"{s2['val_high_risk_recall']}, best step {s2['best_step']}/{s2['step']}, "
        f"trained {s2['train_seconds']}s"
    )
    val = r["calibration"]["val"]
    con.say(
        f"cascade (val)       macro-F1 stage 1 alone {val['base']['macro_f1']:.3f} -> fused "
        f"{val['fused']['macro_f1']:.3f}; high-risk recall {val['base']['high_risk_recall']:.3f}"
        f" -> {val['fused']['high_risk_recall']:.3f}; escalation {val['escalation_rate']:.2f}"
    )
    con.say(
        f"cascade (test)      macro-F1 base {cal['base']['macro_f1']:.3f} -> fused "
        f"{cal['fused']['macro_f1']:.3f}; high-risk recall {cal['base']['high_risk_recall']:.3f}"
        f" -> {cal['fused']['high_risk_recall']:.3f}; escalation {cal['escalation_rate']:.2f}"
    )
    con.say(
        f"HTTP (test, n={sv['n']})  macro-F1 {sv['metrics']['macro_f1']:.3f}, mean latency "
        f"{sv['mean_latency_ms']} ms, errors: "
        + ", ".join(f"{e['request']} -> {e['status']}" for e in sv["error_examples"])
    )
    con.say(f"timings (s)         {json.dumps(r['timings_s'])}; total {r['total_seconds']}s")
    con.say(f"report              {_relative(out)}/report.json; logs in {_relative(out)}/logs/")
    con.say(
        f"plots               {_relative(out)}/stage1_base/plots/, "
        f"{_relative(out)}/stage2_specialist/plots/, {_relative(out)}/calibration/plots/"
    )
    con.say("\nnext:")
    for cmd in next_commands(out):
        con.say(f"  {cmd}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hazard demo", description="Run hazard-cascade end to end on the tiny model."
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / DEFAULT_OUT, help="run folder (default runs/demo)"
    )
    parser.add_argument("--n-per-label", type=int, default=60, help="synthetic images per label")
    parser.add_argument("--steps", type=int, default=120, help="optimizer steps per stage")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers per stage")
    parser.add_argument("--score-limit", type=int, default=40, help="test images sent over HTTP")
    args = parser.parse_args(argv)
    try:
        run_demo(args.out, args.n_per_label, args.steps, args.workers, args.score_limit)
    except JobFailed as exc:
        Console(STEPS).failed(exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
