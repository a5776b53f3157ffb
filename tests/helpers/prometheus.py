"""A real Prometheus server on loopback for the metric-analysis tests (Debian's `prometheus`).

`prometheus_server` writes a config scraping the given targets every second, starts the
binary with its TSDB under a temp folder, waits for `/-/ready` and stops it afterwards. Without
the binary the test skips with the command that installs it (`.ci/run` runs that command).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from hazard.demo.local_ray import free_port, stop_process_group

INSTALL_HINT = "prometheus is not installed: apt-get update && apt-get install -y prometheus"
SCRAPE_INTERVAL_S = 1


def prometheus_binary() -> str:
    """The `prometheus` on PATH; skips the test with the install command when there is none."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip(INSTALL_HINT)
    return binary


@contextlib.contextmanager
def prometheus_server(tmp: Path, targets: list[str]) -> Iterator[str]:
    """A Prometheus scraping `targets` ("host:port", path /metrics) every SCRAPE_INTERVAL_S;
    yields its base URL."""
    binary = prometheus_binary()
    tmp.mkdir(parents=True, exist_ok=True)
    interval = f"{SCRAPE_INTERVAL_S}s"
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {
                "job_name": "hazard",
                "scrape_timeout": interval,
                "static_configs": [{"targets": targets}],
            }
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp / "prometheus.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.path={tmp / 'data'}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while not _ready(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        stop_process_group(proc, term_wait_s=10, kill_wait_s=5)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for_value(
    prom_url: str, promql: str, done: Callable[[float | None], bool], timeout_s: float = 60
) -> float | None:
    """Poll an instant query until `done(value)`; returns the value (fails the test on timeout)."""
    from hazard.deploy.analysis import query

    deadline = time.monotonic() + timeout_s
    while True:
        value = query(prom_url, promql)
        if done(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{promql} still {value} after {timeout_s}s")
        time.sleep(0.5)
