"""The end-to-end demo on the embedded default: local Ray, local files, tiny Qwen2.5-VL.

    hazard demo [--out runs/demo] [--n-per-label 60] [--steps 120]

1. writes a synthetic labelled corridor folder (with a few corrupt entries);
2. starts a local Ray head (token auth on) and submits, with `ray job submit`, the data job,
   stage 1, stage 2 and the calibration job;
3. deploys the Serve application with `serve deploy`, waits for /readyz and scores the held-out
   test images over HTTP (with an API key);
4. writes `<out>/report.json` and prints a summary; stops Serve and Ray whatever happens.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import yaml

from hazard.config import load_config
from hazard.config.serve import ServeConfig
from hazard.metrics import classification_report
from hazard.demo.synthetic import write_folder_dataset
from hazard.demo.tiny_qwen import ensure_tiny_model
from hazard.serve_file import serve_config

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _say(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


class LocalRay:
    """A local Ray head started with `ray start` and always stopped with `ray stop`."""

    def __init__(self, num_cpus: int, temp_dir: Path):
        self.gcs_port, self.dash_port = _free_port(), _free_port()
        self.num_cpus, self.temp_dir = num_cpus, temp_dir
        self.env = dict(
            os.environ,
            RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "token"),
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        self.address = f"http://127.0.0.1:{self.dash_port}"

    def __enter__(self) -> LocalRay:
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={self.gcs_port}",
            f"--num-cpus={self.num_cpus}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dash_port}",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
        ]
        # Its own process group, so that stopping it never touches other Ray clusters here
        # (`ray stop` would stop every Ray process of the user).
        self.proc = subprocess.Popen(
            cmd,
            env=self.env,
            cwd=REPO,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.address}/api/version", timeout=2).status_code < 500:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.__exit__()
        raise TimeoutError("the local Ray head did not come up within 120 s")

    def __exit__(self, *exc) -> None:
        """Stop the head's whole process group: TERM, then KILL what is left after 15 s."""
        pgid = os.getpgid(self.proc.pid)
        for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.time() + wait_s
            while time.time() < deadline and _group_alive(pgid):
                time.sleep(0.5)
            if not _group_alive(pgid):
                break
        self.proc.wait(timeout=5)

    def submit(self, module: str, *args: str) -> float:
        """`ray job submit` and stream its logs; raises if the job fails. Returns seconds."""
        cmd = [
            str(BIN / "ray"),
            "job",
            "submit",
            f"--address={self.address}",
            "--working-dir",
            str(REPO),
            "--runtime-env-json",
            json.dumps(
                {
                    "excludes": [".venv", "runs", ".git", "*.egg-info"],
                    # pins every process of the job to this head, even beside other local clusters
                    "env_vars": {"RAY_ADDRESS": f"127.0.0.1:{self.gcs_port}"},
                }
            ),
            "--",
            "python",
            "-m",
            module,
            *args,
        ]
        start = time.time()
        subprocess.run(cmd, check=True, env=self.env, cwd=REPO)
        return round(time.time() - start, 1)

    def serve(self, *args: str) -> None:
        subprocess.run(
            [str(BIN / "serve"), *args, f"--address={self.address}"],
            check=True,
            env=self.env,
            cwd=REPO,
        )


def _wait_ready(url: str, timeout_s: float) -> None:
    """Poll /readyz until it answers 200; TimeoutError after `timeout_s`."""
    start = time.time()
    while time.time() - start < timeout_s:
        try:
            if httpx.get(f"{url}/readyz", timeout=30).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise TimeoutError(f"{url}/readyz not ready after {timeout_s}s")


def _score_test_images(url: str, api_key: str, data_dir: Path, limit: int) -> dict:
    """POST held-out test images (JSON base64 and multipart), plus two bad requests."""
    table = pq.read_table(data_dir / "test", columns=["id", "images", "answer"]).to_pylist()
    headers = {"Authorization": f"Bearer {api_key}"}
    responses, truth, preds = [], [], []
    with httpx.Client(timeout=120) as client:
        for i, row in enumerate(table[:limit]):
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
    out = out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    timings: dict[str, float] = {}
    t0 = time.time()

    _say("1/7 tiny Qwen2.5-VL (built and pre-trained once per machine, then cached)")
    start = time.time()
    tiny = ensure_tiny_model()
    timings["tiny_model"] = round(time.time() - start, 1)
    print(f"    {tiny}")

    _say(f"2/7 synthetic corridor folder: {n_per_label} images per label + 4 corrupt entries")
    raw = out / "raw"
    counts = write_folder_dataset(raw, n_per_label=n_per_label, seed=0, corrupt=4)
    print(f"    {json.dumps(counts)}")

    data, s1, s2, cal = out / "data", out / "stage1_base", out / "stage2_specialist", out / "cal"
    common = [
        f"--set=data_dir={data}",
        f"--set=optim.max_steps={steps}",
        f"--set=scaling.num_workers={workers}",
    ]
    ray_temp = Path("/tmp") / f"hazard-ray-{os.getpid()}"
    with LocalRay(num_cpus=max(2, workers), temp_dir=ray_temp) as ray_head:
        print(f"    Ray head up; dashboard/Jobs API at {ray_head.address} (token auth)")
        _say("3/7 data job: import → validate/quarantine → augment → Parquet (ray job submit)")
        timings["data_job"] = ray_head.submit(
            "ray_jobs.prepare_data",
            "--config",
            "configs/tiny/data.yaml",
            f"--set=source.uri={raw}",
            f"--set=output_dir={data}",
        )
        _say(f"4/7 stage 1 base: DeepSpeed ZeRO-2 + LoRA, {workers} workers, {steps} steps")
        timings["stage1_job"] = ray_head.submit(
            "ray_jobs.train",
            "--config",
            "configs/tiny/stage1_base.yaml",
            *common,
            f"--set=output_dir={s1}",
        )
        _say("5/7 stage 2 specialist: high-risk enriched, class-weighted, vision LoRA")
        timings["stage2_job"] = ray_head.submit(
            "ray_jobs.train",
            "--config",
            "configs/tiny/stage2_specialist.yaml",
            *common,
            f"--set=output_dir={s2}",
        )
        _say("6/7 calibration: fit the correction coefficient and escalation threshold")
        timings["calibrate_job"] = ray_head.submit(
            "ray_jobs.calibrate",
            "--config",
            "configs/tiny/calibrate.yaml",
            f"--set=data_dir={data}",
            f"--set=base_uri={s1 / 'model'}",
            f"--set=specialist_uri={s2 / 'model'}",
            f"--set=output_dir={cal}",
        )

        _say("7/7 serving: serve deploy, wait for /readyz, score held-out images over HTTP")
        port = _free_port()
        api_key = secrets.token_urlsafe(24)
        serve_cfg = load_config(
            REPO / "configs/tiny/serve.yaml",
            ServeConfig,
            [
                f"base.model_uri={s1 / 'model'}",
                f"specialist.model_uri={s2 / 'model'}",
                f"fusion_uri={cal / 'fusion.json'}",
            ],
        )
        doc = serve_config(serve_cfg, host="127.0.0.1", port=port)
        # Replicas read the key from their environment, as from a Secret on Kubernetes.
        doc["applications"][0]["runtime_env"] = {"env_vars": {"HAZARD_API_KEY": api_key}}
        serve_file = out / "serve_config.yaml"
        serve_file.write_text(yaml.safe_dump(doc, sort_keys=False))
        start = time.time()
        ray_head.serve("deploy", str(serve_file))
        doc["applications"][0]["runtime_env"]["env_vars"]["HAZARD_API_KEY"] = "<redacted>"
        serve_file.write_text(yaml.safe_dump(doc, sort_keys=False))
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, timeout_s=300)
        timings["serve_ready"] = round(time.time() - start, 1)  # from `serve deploy` on
        serving = _score_test_images(url, api_key, data, score_limit)
        ray_head.serve("shutdown", "-y")

    report = _report(out, counts, timings, serving, time.time() - t0)
    report["ray_temp_dir"] = str(ray_temp)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    _print_summary(report, out / "report.json")
    return report


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _report(out: Path, counts: dict, timings: dict, serving: dict, total: float) -> dict:
    def stage(name: str) -> dict:
        m = _load(out / name / "metrics.json")
        bundle = _load(out / name / "model" / "hazard_model.json")
        return {"metrics": m, "val_report": bundle["val_report"]}

    return {
        "dataset": counts,
        "lineage": _load(out / "data" / "lineage.json"),
        "stage1_base": stage("stage1_base"),
        "stage2_specialist": stage("stage2_specialist"),
        "calibration": _load(out / "cal" / "calibration.json"),
        "serving": serving,
        "timings_s": timings,
        "total_seconds": round(total, 1),
    }


def _print_summary(r: dict, path: Path) -> None:
    s1, s2 = r["stage1_base"]["metrics"], r["stage2_specialist"]["metrics"]
    cal = r["calibration"]["test"]
    sv = r["serving"]
    chance = 1 / 5
    print("\n" + "=" * 72)
    print("hazard-cascade demo summary")
    print("=" * 72)
    print(
        f"stage 1 base        val macro-F1 {s1['val_macro_f1']:.3f} (chance {chance:.2f}), "
        f"acc {s1['val_accuracy']:.3f}, trained {s1['train_seconds']}s"
    )
    print(
        f"stage 2 specialist  val macro-F1 {s2['val_macro_f1']:.3f}, high-risk recall "
        f"{s2['val_high_risk_recall']}, trained {s2['train_seconds']}s"
    )
    print(
        f"cascade (test)      macro-F1 base {cal['base']['macro_f1']:.3f} -> fused "
        f"{cal['fused']['macro_f1']:.3f}; high-risk recall {cal['base']['high_risk_recall']}"
        f" -> {cal['fused']['high_risk_recall']}; escalation {cal['escalation_rate']:.2f}"
    )
    print(
        f"HTTP (test, n={sv['n']})  macro-F1 {sv['metrics']['macro_f1']:.3f}, mean latency "
        f"{sv['mean_latency_ms']} ms, errors: "
        + ", ".join(f"{e['request']} -> {e['status']}" for e in sv["error_examples"])
    )
    print(f"timings (s)         {json.dumps(r['timings_s'])}; total {r['total_seconds']}s")
    print(f"report              {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run hazard-cascade end to end on the tiny model.")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "demo")
    parser.add_argument("--n-per-label", type=int, default=60, help="synthetic images per label")
    parser.add_argument("--steps", type=int, default=120, help="optimizer steps per stage")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers per stage")
    parser.add_argument("--score-limit", type=int, default=40, help="test images sent over HTTP")
    args = parser.parse_args(argv)
    run_demo(args.out, args.n_per_label, args.steps, args.workers, args.score_limit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
