"""Metric analysis against a real Prometheus (Debian's `prometheus`) scraping a real local
`hazard serve`, upgraded in place version after version as KubeRay upgrades a RayService's
Serve config: the baseline is read on version 1, then a good version passes, a version whose
base bundle lets a photo overflow the sequence budget (500s) breaches the error ratio, and a
version that holds each batch 0.6 s breaches the p99 latency.

Every value is checked against what the test sent. Each version's series exist before its
window opens and every request of it lands inside, so `increase()` scales each counter's true
count by an extrapolation factor in [1, W_ext / W_sampled] (`rate_tolerance`), and ratios
stay within that factor of the exact figures. The p99 is checked exactly instead: the latency
buckets' raw samples must hold the sent latencies, and the p99 must be what Prometheus's
extrapolation and interpolation make of them (`assert_p99`).

The last test runs `hazard deploy` itself on one cluster whose service is this app and whose
Prometheus is this one (the kube API and helm are the stand-ins of tests/helpers/deploy.py,
the API server's "KubeRay" serving each revision helm deploys): a good version passes its
analysis, an erroring one is rolled back.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import ray
import yaml

from hazard.config.serve import APP_NAME
from hazard.demo.local_ray import stop_process_group
from hazard.deploy.analysis import (
    LATENCY_BUCKETS,
    MetricAnalysis,
    PrometheusError,
    analyse,
    baseline,
    query,
)
from serve.metrics import LATENCY_BOUNDS_S
from tests.helpers.deploy import (
    APP,
    NAMESPACE,
    RELEASE,
    KubeStandIn,
    rayservice,
    release_key,
    releases,
    write_kubeconfig,
)
from tests.helpers.deploy_rig import CONTEXTS, KEY_ENV, deploy, make_rig
from tests.helpers.prometheus import (
    SCRAPE_INTERVAL_S,
    prometheus_binary,
    prometheus_server,
    wait_for_value,
)
from tests.helpers.serve import b64, free_port, fusion, image_bytes, make_bundle

pytestmark = pytest.mark.slow

API_KEY = "analysis-key-" + os.urandom(8).hex()
AUTH = {"Authorization": f"Bearer {API_KEY}"}
BUDGET = 112 * 112
SMALL = image_bytes((64, 48), (200, 30, 30))
# 2240 x 1680 needs 80 x 60 = 4,800 image tokens at full size: over the engine's 4,096-token
# sequence budget unless the bundle's max_pixels downscales it (the good bundles: to BUDGET).
BIG = image_bytes((2240, 1680), (30, 30, 200))
LABELS = {"application": APP_NAME}
MIN_WINDOW_S = 20
SCORE_ROUTE = f'application="{APP_NAME}",route="/v1/score"'
HAZARD = str(Path(sys.executable).with_name("hazard"))


@dataclass
class Sent:
    """What one version's measured traffic got back, and the window that holds it."""

    statuses: list[int]
    latencies_s: list[float]  # each 200's latency_ms: the `total` stage value it observed
    start: float
    at: float

    @property
    def window(self) -> int:
        return math.ceil(self.at - self.start)


class Stack:
    """Ray with its metrics exported, Prometheus scraping them, and `hazard serve` processes
    each deploying one version of the app (the latest replaces the one before)."""

    def __init__(self, tmp: Path, root: str, port: int, prom: str, bundles: dict[str, Path]):
        self.tmp, self.root, self.port, self.prom, self.bundles = tmp, root, port, prom, bundles
        self.procs: list[subprocess.Popen] = []

    def deploy(self, version: str, base: str = "good", **overrides) -> None:
        """`hazard serve` of a config naming `version`; returns when /v1/models serves it."""
        cfg = {
            "base": {"name": "b", "version": version, "model_uri": str(self.bundles[base])},
            "specialist": {"name": "s", "version": "1", "model_uri": str(self.bundles["spec"])},
            "auth": "api_key",
            "ingress": {"num_cpus": 0.05},
            "base_replicas": {"num_cpus": 0.1},
            "specialist_replicas": {"num_cpus": 0.1},
            "health_check_period_s": 60,  # its probes' forwards do not join measured batches
            **overrides,
        }
        path = self.tmp / f"serve-{version}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        env = dict(
            os.environ,
            HAZARD_API_KEY=API_KEY,
            RAY_ADDRESS=ray.get_runtime_context().gcs_address,
        )
        log = (self.tmp / f"serve-{version}.log").open("w")
        self.procs.append(
            subprocess.Popen(
                [HAZARD, "serve", "--config", str(path), "--port", str(self.port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.procs[-1].poll() is not None:
                pytest.fail(
                    f"hazard serve exited: {(self.tmp / f'serve-{version}.log').read_text()}"
                )
            try:
                models = httpx.get(f"{self.root}/v1/models", headers=AUTH, timeout=5).json()
                if {m.get("role"): m.get("version") for m in models["models"]}.get(
                    "base"
                ) == version:
                    return
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                pass
            time.sleep(1)
        pytest.fail(f"version {version} not served within 180 s")

    def ingress_replicas(self) -> set[str]:
        """`replica` label values of the app's /v1/score request counters in Prometheus."""
        resp = httpx.get(
            f"{self.prom}/api/v1/series",
            params={"match[]": f"ray_hazard_requests_total{{{SCORE_ROUTE}}}"},
            timeout=10,
        )
        return {s["replica"] for s in resp.json()["data"] if "replica" in s}

    def requests_seen(self, replica: str) -> str:
        """PromQL of the /v1/score requests counted by one ingress replica."""
        return f'sum(ray_hazard_requests_total{{{SCORE_ROUTE},replica="{replica}"}})'

    def measure(self, images: list[bytes], concurrent: bool = False) -> Sent:
        """Prime the new version's series (one SMALL, one BIG), open the window once Prometheus
        holds them, send `images` (sequentially, or all at once), close the window once it
        holds every request."""
        before = self.ingress_replicas()
        primed = [self._score(SMALL), self._score(BIG)]
        # the new ingress replica's series: the one Prometheus did not hold before priming
        deadline = time.monotonic() + 60
        while not (new := self.ingress_replicas() - before) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(new) == 1, (before, new)
        seen = self.requests_seen(new.pop())
        wait_for_value(self.prom, seen, lambda v: v == len(primed))
        time.sleep(1.2 * SCRAPE_INTERVAL_S)  # no sample of the window predates the priming
        start = time.time()
        time.sleep(1.5 * SCRAPE_INTERVAL_S)  # a sample inside the window before the traffic
        if concurrent:
            with ThreadPoolExecutor(len(images)) as pool:
                responses = list(pool.map(self._score, images))
        else:
            responses = [self._score(png) for png in images]
        wait_for_value(self.prom, seen, lambda v: v == len(primed) + len(images))
        time.sleep(1.5 * SCRAPE_INTERVAL_S)  # a sample inside the window after the traffic
        time.sleep(max(0.0, start + MIN_WINDOW_S - time.time()))  # a tolerance of <= 12%
        ok = [r.json()["latency_ms"] / 1000 for r in responses if r.status_code == 200]
        return Sent([r.status_code for r in responses], ok, start, time.time())

    def _score(self, png: bytes) -> httpx.Response:
        return httpx.post(
            f"{self.root}/v1/score", json={"image": b64(png)}, headers=AUTH, timeout=120
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_path):
    prometheus_binary()  # skip before starting anything when it is not installed
    tmp = tmp_path_factory.mktemp("analysis")
    spec = fusion(0.0)  # always consult the specialist: escalation rate 1
    bundles = {
        "good": make_bundle(tiny_model_path, tmp / "good", "b", "1", "base", max_pixels=BUDGET),
        # no downscale worth the name: BIG needs more tokens than the sequence budget
        "overflow": make_bundle(
            tiny_model_path, tmp / "overflow", "b", "3", "base", max_pixels=4_000_000
        ),
        "spec": make_bundle(
            tiny_model_path, tmp / "spec", "s", "1", "specialist", fusion=spec, max_pixels=BUDGET
        ),
    }
    metrics_port = free_port()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _metrics_export_port=metrics_port,
        _system_config={"metrics_report_interval_ms": 1000},
    )
    try:
        with prometheus_server(tmp / "prometheus", [f"127.0.0.1:{metrics_port}"]) as prom:
            port = free_port()
            s = Stack(tmp, f"http://127.0.0.1:{port}", port, prom, bundles)
            try:
                s.deploy("1")
                yield s
            finally:
                for proc in s.procs:
                    stop_process_group(proc, term_wait_s=10, kill_wait_s=5)
    finally:
        ray.shutdown()


def policy(window: int, **overrides) -> MetricAnalysis:
    """The tests' policy: 8 requests are enough traffic; absolute and baseline limits."""
    return MetricAnalysis.model_validate(
        {
            "windowSeconds": window,
            "labels": LABELS,
            "minRequests": 8,
            "errorRatio": {"max": 0.05, "maxIncrease": 0.02},
            "refusalRatio": {"max": 0.05},
            "p99Latency": {"maxRatio": 2.0},
            "escalationRate": {"maxIncrease": 0.1, "maxDecrease": 0.1},
            **overrides,
        }
    )


def rate_tolerance(window: int) -> float:
    """The largest factor `increase()` can scale a count by here: the samples inside a
    `window`-second range span at least window - 2 scrape intervals, and Prometheus
    extrapolates each end by at most 1.1 average intervals."""
    i = SCRAPE_INTERVAL_S
    return (window + 0.2 * i) / (window - 2 * i)


def prometheus_increase(samples: list[tuple[int, float]], start_ms: int, end_ms: int) -> float:
    """`increase()` of one counter's raw samples over [start_ms, end_ms], as Prometheus
    computes it: the sampled rise, extrapolated towards each end of the range by up to 1.1
    average intervals, and at the start no further back than the counter's zero point."""
    (t0, v0), (t1, v1) = samples[0], samples[-1]
    rise = v1 - v0 + sum(a for (_, a), (_, b) in itertools.pairwise(samples) if b < a)
    sampled = (t1 - t0) / 1000
    average = sampled / (len(samples) - 1)
    to_start, to_end = (t0 - start_ms) / 1000, (end_ms - t1) / 1000
    if rise > 0 and v0 >= 0:
        to_start = min(to_start, sampled * v0 / rise)
    extended = sampled
    for gap in (to_start, to_end):
        extended += gap if gap < 1.1 * average else average / 2
    return rise * extended / sampled


def bucket_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus's `histogram_quantile` over cumulative bucket counts by upper bound: made
    monotonic, then linear interpolation inside the bucket where the rank q x count falls."""
    bounds = sorted(buckets)
    counts = list(itertools.accumulate((buckets[b] for b in bounds), max))
    rank = q * counts[-1]
    i = next(k for k, c in enumerate(counts) if c >= rank)
    if i == len(bounds) - 1:  # in the +Inf bucket: its lower bound
        return bounds[-2]
    lo, below = (0.0, 0.0) if i == 0 else (bounds[i - 1], counts[i - 1])
    return lo + (bounds[i] - lo) * (rank - below) / (counts[i] - below)


def window_buckets(prom: str, sent: Sent) -> tuple[int, list[tuple[float, list]]]:
    """The `total` stage's bucket series in the window as Prometheus holds them: the window's
    end in ms and (upper bound, [(t_ms, value), ...]) for each series."""
    end_ms = round(float(f"{sent.at:.3f}") * 1000)
    selector = f'{LATENCY_BUCKETS}{{application="{APP_NAME}",stage="total"}}[{sent.window}s]'
    body = httpx.get(
        f"{prom}/api/v1/query", params={"query": selector, "time": f"{sent.at:.3f}"}, timeout=10
    ).json()
    assert body["status"] == "success" and body["data"]["resultType"] == "matrix", body
    series = [
        (float(s["metric"]["le"]), [(round(t * 1000), float(v)) for t, v in s["values"]])
        for s in body["data"]["result"]
    ]
    return end_ms, series


def assert_p99(prom: str, got: float, sent: Sent) -> None:
    """`got` is the p99 of exactly the latencies `sent` observed, as Prometheus reads it.

    First the data: over the window each bucket rose by the number of sent latencies at or
    under its bound (latency_ms is rounded to 10 us, so one within 10 us of a bound may fall
    either side). Then the query: each series' increase extrapolated as Prometheus does
    (series differ: a bucket whose count was small before the window stops at its zero point),
    summed by bound, and interpolated. The extrapolation is why the p99 of 20 latencies all
    under 50 ms can read 67 ms: the 50 ms bucket scaled by 1.08, the count by 1.10."""
    end_ms, series = window_buckets(prom, sent)
    rises: dict[float, float] = {}
    increases: dict[float, float] = {}
    for le, samples in series:
        assert all(b >= a for (_, a), (_, b) in itertools.pairwise(samples)), (le, samples)
        rises[le] = rises.get(le, 0.0) + samples[-1][1] - samples[0][1]
        if len(samples) > 1:
            inc = prometheus_increase(samples, end_ms - 1000 * sent.window, end_ms)
            increases[le] = increases.get(le, 0.0) + inc
    assert set(rises) == {*LATENCY_BOUNDS_S, math.inf}, sorted(rises)
    slack = 1e-5
    for le, rise in rises.items():
        at_most = sum(v <= le + slack for v in sent.latencies_s)
        at_least = sum(v <= le - slack for v in sent.latencies_s)
        assert at_least <= rise <= at_most, (le, rise, sorted(sent.latencies_s))
    want = bucket_quantile(0.99, increases)
    assert got == pytest.approx(want, rel=1e-9), (got, want, increases, sorted(sent.latencies_s))


def assert_near_count(got: float, sent: int, window: int) -> None:
    assert sent <= got <= sent * rate_tolerance(window) + 1e-9, (got, sent, window)


def assert_near_ratio(got: float, exact: float, window: int) -> None:
    f = rate_tolerance(window)
    assert exact / f - 1e-9 <= got <= exact * f + 1e-9, (got, exact, window)


GOOD_MIX = [SMALL] * 15 + [BIG] * 5


@pytest.fixture(scope="module")
def before(stack):
    """Version 1's traffic (20 images, all answered) and the baseline read over it."""
    sent = stack.measure(GOOD_MIX)
    assert sent.statuses == [200] * 20
    return sent, baseline(stack.prom, policy(sent.window), at=sent.at)


def test_the_baseline_holds_what_version_1_answered(stack, before):
    sent, base = before
    assert base.window_seconds == sent.window and base.at == sent.at
    assert_near_count(base.requests, 20, sent.window)
    assert base.values["error_ratio"] == 0.0  # no 5xx series: `or vector(0)`, not no data
    assert base.values["refusal_ratio"] == 0.0
    assert base.values["escalation_rate"] == pytest.approx(1.0)  # theta 0: all 20 escalated
    assert_p99(stack.prom, base.values["p99_latency"], sent)
    assert base.to_dict()["values"] == base.values  # JSON-ready for the rollout report


def test_a_good_upgrade_passes(stack, before):
    _, base = before
    stack.deploy("2")
    sent = stack.measure(GOOD_MIX)
    assert sent.statuses == [200] * 20
    result = analyse(stack.prom, policy(sent.window), baseline=base, at=sent.at)
    rows = {r.name: r for r in result.checks}
    assert result.ok, result.detail
    assert result.detail == f"4 checks passed over {sent.window}s"
    assert_near_count(result.requests, 20, sent.window)
    assert rows["error_ratio"].value == 0.0 and rows["error_ratio"].threshold == pytest.approx(0.02)
    assert rows["escalation_rate"].floor == pytest.approx(0.9)
    assert_p99(stack.prom, rows["p99_latency"].value, sent)
    assert rows["p99_latency"].threshold == pytest.approx(2 * base.values["p99_latency"])


def test_a_bundle_that_errors_breaches_the_error_ratio(stack, before):
    """5 of 20 requests answered 500 (the photo overflows the base's sequence budget): the
    error ratio is 0.25 within the extrapolation tolerance, over the 0.02 baseline limit."""
    _, base = before
    stack.deploy("3", base="overflow")
    sent = stack.measure(GOOD_MIX)
    assert sent.statuses == [200] * 15 + [500] * 5
    result = analyse(stack.prom, policy(sent.window), baseline=base, at=sent.at)
    rows = {r.name: r for r in result.checks}
    assert not result.ok
    errors = rows["error_ratio"]
    assert_near_ratio(errors.value, 5 / 20, sent.window)
    assert not errors.ok and errors.threshold == pytest.approx(0.02)  # baseline 0 + 0.02
    assert result.detail.startswith(f"error_ratio {errors.value:.4g} > 0.02 (baseline 0 + 0.02)")
    assert result.detail.endswith(f"query: {errors.query}")
    assert 'status=~"5.."' in errors.query
    assert rows["refusal_ratio"].ok and rows["escalation_rate"].ok
    assert rows["escalation_rate"].value == pytest.approx(1.0)  # 15 of 15 scored


def test_a_slow_version_breaches_the_p99_latency(stack, before):
    """Each model holds its batch 0.6 s waiting for more (batch size 16; 8 images sent at
    once): every image's total latency falls in the (1, 2.5] s bucket, so the p99 reads
    1 + 1.5 x 0.99 = 2.485 s, over twice the baseline's."""
    _, base = before
    stack.deploy("4", model_batch_size=16, model_batch_wait_s=0.6)
    sent = stack.measure([SMALL] * 8, concurrent=True)
    assert sent.statuses == [200] * 8
    assert all(1.0 < s <= 2.5 for s in sent.latencies_s), sent.latencies_s
    result = analyse(stack.prom, policy(sent.window), baseline=base, at=sent.at)
    rows = {r.name: r for r in result.checks}
    p99 = rows["p99_latency"]
    assert_p99(stack.prom, p99.value, sent)
    assert p99.value == pytest.approx(1 + 1.5 * 0.99, abs=0.02)
    assert not result.ok and not p99.ok
    assert result.detail.startswith(f"p99_latency {p99.value:.4g} > ")
    assert result.detail.endswith(f"query: {p99.query}")
    assert rows["error_ratio"].ok and rows["error_ratio"].value == 0.0


def test_too_little_traffic_is_said_and_fails_only_when_asked(stack, before):
    """Version 1's window again, asking for more requests than it held."""
    sent, base = before
    lenient = analyse(stack.prom, policy(sent.window, minRequests=1000), baseline=base, at=sent.at)
    strict = analyse(
        stack.prom,
        policy(sent.window, minRequests=1000, failOnLowTraffic=True),
        baseline=base,
        at=sent.at,
    )
    assert lenient.ok and all("not enough traffic" in r.detail for r in lenient.checks)
    assert all("(baseline not compared: " in r.detail for r in lenient.checks)
    assert not strict.ok and "not enough traffic" in strict.detail


def test_prometheus_errors_name_the_url_and_the_query(stack):
    with pytest.raises(PrometheusError) as bad:
        query(stack.prom, "sum(rate(ray_hazard_requests_total[5m]")
    assert f"{stack.prom}/api/v1/query" in str(bad.value)
    assert "sum(rate(ray_hazard_requests_total[5m]" in str(bad.value)
    assert "bad_data" in str(bad.value)
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PrometheusError, match=f"Prometheus at {down}/api/v1/query"):
        query(down, "up")
    with pytest.raises(PrometheusError, match="HTTP 404, not a Prometheus answer"):
        query(f"{stack.prom}/no-such-prefix", "up")  # a URL that is not the API's root
    assert query(stack.prom, 'up{job="no-such-job"}') is None  # empty: no data, not 0


# -- `hazard deploy` gated on this Prometheus ---------------------------------------------------
SOAK_S, WINDOW_S = 12, 10  # the window ends with the soak and starts 2 s into it
# the base version the chart renders -> the Stack.deploy arguments that serve it
SERVED_AS = {"5": {"base": "good"}, "6": {"base": "overflow"}}
PATTERN = [SMALL, SMALL, SMALL, BIG]  # the load's cycle: version 6 answers BIG with a 500
ERRORS_QUERY = (
    f'(sum(increase(ray_hazard_requests_total{{application="{APP_NAME}",'
    'route=~"/v1/score|/v1/score/batch",status=~"5..",status!="503"}[10s])) or vector(0)) / '
    f'sum(increase(ray_hazard_requests_total{{application="{APP_NAME}",'
    'route=~"/v1/score|/v1/score/batch"}[10s]))'
)


class KubeRayStandIn(KubeStandIn):
    """An API server whose "KubeRay" applies what helm deployed, in place as it applies a
    `serveConfigV2` change: a newly deployed revision (an upgrade or a rollback) is a new
    generation whose app is DEPLOYING while `apply(manifest)` runs in a thread, then RUNNING
    (DEPLOY_FAILED with the error when it raised)."""

    def __init__(self, token: str, helm: tuple[Path, str], apply: Callable[[str], None]):
        super().__init__(token)
        self.helm, self.apply = helm, apply
        self.revision: int | None = None  # the deployed revision last seen
        self.generation = 1
        self.applying = threading.Thread()  # never started: nothing to apply yet
        self.error = ""

    def _rayservice(self, name: str) -> dict | None:
        state, context = self.helm
        revisions = releases(state).get(release_key(context, NAMESPACE, RELEASE), [])
        deployed = [r for r in revisions if r["status"] == "deployed"]
        if not deployed:
            return None
        latest = deployed[-1]
        if latest["revision"] != self.revision:
            self.revision, self.error = latest["revision"], ""
            self.generation += 1
            self.applying = threading.Thread(
                target=self._apply, args=(latest["manifest"],), daemon=True
            )
            self.applying.start()
        g = self.generation
        if self.applying.is_alive():
            return rayservice(name, g, g, app_status="DEPLOYING")
        obj = rayservice(name, g, g, app_status="DEPLOY_FAILED" if self.error else "RUNNING")
        obj["status"]["activeServiceStatus"]["applicationStatuses"][APP]["message"] = self.error
        return obj

    def _apply(self, manifest: str) -> None:
        try:
            self.apply(manifest)
        except BaseException as exc:  # pytest.fail raises a BaseException
            self.error = f"{type(exc).__name__}: {exc}"[:300]


def serve_release(stack: Stack, applied: list[str]) -> Callable[[str], None]:
    """The "operator's" apply: serve the rendered base version on the real Serve (in place,
    as `stack.deploy` upgrades it), appending it to `applied`."""

    def apply(manifest: str) -> None:
        (service,) = [d for d in yaml.safe_load_all(manifest) if d and d["kind"] == "RayService"]
        (app,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
        base, spec = app["args"]["base"], app["args"]["specialist"]
        assert (base["name"], spec["name"], spec["version"]) == ("b", "s", "1"), app["args"]
        stack.deploy(base["version"], **SERVED_AS[base["version"]])
        applied.append(base["version"])

    return apply


@dataclass(frozen=True)
class Answer:
    at: float  # time.time() when answered
    big: bool
    status: int  # 0: no HTTP answer
    version: str | None  # the base version a 200 names


class Load:
    """A thread scoring PATTERN in a loop, one request at a time, until the block ends."""

    def __init__(self, root: str, pause_s: float = 0.1):
        self.root, self.pause_s = root, pause_s
        self.answers: list[Answer] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=120)

    def _run(self) -> None:
        bodies = [(png is BIG, {"image": b64(png)}) for png in PATTERN]
        with httpx.Client(timeout=60) as http:
            for i in itertools.count():
                if self.stop.is_set():
                    return
                big, body = bodies[i % len(bodies)]
                status, version = 0, None
                try:
                    resp = http.post(f"{self.root}/v1/score", json=body, headers=AUTH)
                    status = resp.status_code
                    if status == 200:
                        models = {m["role"]: m["version"] for m in resp.json()["models"]}
                        version = models["base"]
                except httpx.HTTPError:
                    pass
                self.answers.append(Answer(time.time(), big, status, version))
                self.stop.wait(self.pause_s)

    def between(self, start: float, end: float) -> list[Answer]:
        return [a for a in self.answers if start <= a.at <= end]

    def wait_for(self, count: int, after: float, timeout_s: float = 30) -> list[Answer]:
        deadline = time.monotonic() + timeout_s
        while len(got := self.between(after, math.inf)) < count:
            assert time.monotonic() < deadline, f"{len(got)} answers after {after}"
            time.sleep(0.2)
        return got


def served_versions(stack: Stack) -> dict[str, str]:
    models = httpx.get(f"{stack.root}/v1/models", headers=AUTH, timeout=10).json()["models"]
    return {m["role"]: m["version"] for m in models}


@pytest.fixture
def rollout(stack, tmp_path, monkeypatch):
    """One cluster (wave `canary`, soak SOAK_S) whose serviceUrl is the real app and whose
    prometheusUrl the real Prometheus; the kube API (a KubeRayStandIn) and helm are stand-ins.
    Yields the rig and the versions the "operator" applied."""
    waves = [{"name": "canary", "clusters": ["staging"], "soakSeconds": SOAK_S}]
    rig = make_rig(tmp_path, monkeypatch, ["staging"], waves)
    applied: list[str] = []
    rig.kube["staging"].close()
    rig.kube["staging"] = KubeRayStandIn(
        "token-staging", (rig.state, CONTEXTS["staging"]), serve_release(stack, applied)
    )
    write_kubeconfig(tmp_path / "kubeconfig", {CONTEXTS["staging"]: rig.kube["staging"]})
    monkeypatch.setenv(KEY_ENV, API_KEY)
    raw = yaml.safe_load(rig.clusters_file.read_text())
    raw["serveRunning"] = {"timeoutSeconds": 180, "intervalSeconds": 0.25}
    raw["healthGate"] = {"timeoutSeconds": 60, "intervalSeconds": 0.25, "successesRequired": 3}
    raw["smoke"]["timeoutSeconds"] = 60
    raw["analysis"] = policy(WINDOW_S, minRequests=20, p99Latency={"maxRatio": 3.0}).model_dump(
        by_alias=True, exclude_none=True
    )
    names = {"base.name": "b", "specialist.name": "s", "specialist.version": "1"}
    raw["clusters"][0].update(
        serviceUrl=stack.root,
        prometheusUrl=stack.prom,
        set={f"serve.app.args.{k}": v for k, v in names.items()},
    )
    rig.clusters_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    yield rig, applied
    rig.close()


def test_hazard_deploy_passes_a_good_version_and_rolls_back_a_metric_breach(stack, rollout, capsys):
    """`hazard deploy` under steady traffic: version 5 (good) installs and passes its analysis;
    version 6 (a base that lets BIG overflow: a quarter of the traffic answered 500) breaches
    the error ratio over the baseline read on version 5's soak, is rolled back to revision 1
    and version 5 serves again."""
    rig, applied = rollout
    with Load(stack.root) as load:
        good = rig.dir / "good.json"
        code = deploy(rig, "--set", "serve.app.args.base.version=5", "--report", str(good))
        out = capsys.readouterr().out
        assert code == 0, out
        c = json.loads(good.read_text())["clusters"]["staging"]
        assert (c["before"], c["after"], c["outcome"]) == (None, 1, "upgraded")
        assert all(s["ok"] for s in c["steps"].values()) and "analysis" in c["steps"], c["steps"]
        assert c["analysis"]["ok"] and c["analysis"]["detail"] == "4 checks passed over 10s"
        assert c["analysis"]["requests"] >= 20  # judged, not "not enough traffic"
        rows = {r["name"]: r for r in c["analysis"]["checks"]}
        assert rows["error_ratio"]["value"] == 0.0 and rows["error_ratio"]["query"] == ERRORS_QUERY

        report = rig.dir / "breach.json"
        code = deploy(rig, "--set", "serve.app.args.base.version=6", "--report", str(report))
        out = capsys.readouterr().out
        returned = time.time()
        after = load.wait_for(8, after=returned)  # two cycles from the rolled-back version
    assert code == 3, out
    assert applied == ["5", "6", "5"]  # the install, the upgrade, the rollback
    doc = json.loads(report.read_text())
    assert doc["exit"] == {"code": 3, "name": "ROLLED_BACK"}
    c = doc["clusters"]["staging"]
    assert (c["before"], c["after"]) == (1, 3)  # helm records the rollback as revision 3
    assert c["outcome"] == "rolled back to revision 1, healthy"
    steps = list(c["steps"])
    assert steps[steps.index("baseline") + 1 :] == [
        *("upgrade", "running", "health", "version", "smoke", "soak", "analysis"),
        *("rollback", "rollback-running", "rollback-health", "rollback-version"),
    ], c["steps"]  # on failure: every step's detail
    assert [s for s, r in c["steps"].items() if not r["ok"]] == ["analysis"]
    # the baseline: version 5's soak, no errors, every image escalated (theta 0)
    assert re.fullmatch(
        r"\d+ requests: error_ratio 0, refusal_ratio 0, p99_latency \S+, escalation_rate 1",
        c["steps"]["baseline"]["detail"],
    ), c["steps"]["baseline"]["detail"]

    analysis = c["analysis"]
    rows = {r["name"]: r for r in analysis["checks"]}
    errors = rows["error_ratio"]
    assert not analysis["ok"] and not errors["ok"]
    assert analysis["window_seconds"] == WINDOW_S and errors["query"] == ERRORS_QUERY
    assert errors["baseline"] == 0.0 and errors["threshold"] == pytest.approx(0.02)
    # every answer of the soak came from version 6: SMALLs scored by it, BIGs 500
    soaked = load.between(analysis["at"] - SOAK_S, analysis["at"])
    assert len(soaked) >= 20
    assert {(a.big, a.status, a.version) for a in soaked} == {(False, 200, "6"), (True, 500, None)}
    # Prometheus counted a run of m consecutive requests of the cycle (a quarter BIG, so within
    # 3/(4m) of 1/4), m >= requests / rate_tolerance (the extrapolation cancels in the ratio)
    bound = 0.75 * rate_tolerance(WINDOW_S) / analysis["requests"]
    assert abs(errors["value"] - 0.25) <= bound, (errors["value"], bound)
    assert rows["refusal_ratio"]["ok"] and rows["refusal_ratio"]["value"] == 0.0
    assert rows["escalation_rate"]["ok"] and rows["escalation_rate"]["value"] == pytest.approx(1.0)
    assert analysis["detail"] == f"{errors['detail']}; query: {ERRORS_QUERY}"
    assert errors["detail"] == (f"error_ratio {errors['value']:.4g} > 0.02 (baseline 0 + 0.02)")
    assert c["steps"]["analysis"]["detail"] == analysis["detail"]
    assert c["steps"]["rollback-version"]["detail"].startswith("base b 5, specialist s 1, 3/3")
    assert ["rollback", RELEASE, "1"] in [argv[1:4] for argv in rig.calls("staging")]
    # the summary names the breached query; version 5 answers again, BIG included
    assert f"staging analysis: {analysis['detail']}" in out.splitlines()
    assert "exit 3  a cluster failed and was rolled back" in out
    assert served_versions(stack) == {"base": "5", "specialist": "1"}
    assert {(a.status, a.version) for a in after} == {(200, "5")} and any(a.big for a in after)
