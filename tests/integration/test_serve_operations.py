"""The app under load and in operation, over real HTTP on a local Ray: admission sheds excess
at once and past its deadline, a batch's decoded pixels are bounded after the ingress
downscales, the base deployment scales up under load and back down after it, Prometheus
metrics count what was served, and every response carries its X-Request-Id, also found in the
JSON log lines of that request."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve

from hazard.config.serve import ServeConfig
from hazard.core.fusion import CorrectionParams, fuse, hazard_score, predict_label, should_escalate
from hazard.core.labels import HIGH_RISK, RISK_LABELS
from serve.app import compose_app
from tests.helpers.serve import (
    b64,
    free_port,
    fusion,
    image_bytes,
    make_bundle,
    serve_cluster,
)

pytestmark = pytest.mark.slow

API_KEY = "ops-key-" + os.urandom(8).hex()
AUTH = {"Authorization": f"Bearer {API_KEY}"}
RETRY_AFTER_S = 3
BUDGET = 112 * 112  # the bundles' max_pixels: the ingress downscales every image to it
TINY_CPU = {"num_cpus": 0.1}
MEDIUM = "medium_risk"
PAIR_COLORS = {"red": (200, 30, 30), "blue": (30, 30, 200), "white": (240, 240, 240)}
PAIR: dict = {}  # the /pair app's bundles and the base's probabilities, set by the fixture


def probabilities(bundle: Path, png: bytes) -> dict[str, float]:
    """A bundle's label probabilities for one image, through hazard.model.vlm in this process (not
    through serving): the independent value the served numbers are checked against."""
    from PIL import Image

    from hazard.infra.bundle import open_bundle
    from hazard.model.vlm import label_probabilities, load_model, load_processor

    opened = open_bundle(str(bundle))
    meta = opened.meta
    model = load_model(opened.path).eval()
    processor = load_processor(opened.path, meta.max_pixels, meta.min_pixels)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    probs = label_probabilities(model, processor, [[image]], meta.prompt, tuple(meta.labels))
    return dict(zip(meta.labels, probs[0].tolist(), strict=True))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_model_path):
    """(root URL, metrics URL) with the apps /slow, /obs, /metered and /scale running."""
    tmp = tmp_path_factory.mktemp("ops")
    base = make_bundle(tiny_model_path, tmp / "base", "b", "1", stage="base", max_pixels=BUDGET)
    spec = make_bundle(
        tiny_model_path,
        tmp / "spec",
        "s",
        "2",
        stage="specialist",
        fusion=fusion(0.0),  # always escalate: both stages timed
        max_pixels=BUDGET,
    )

    # /pair: a specialist with other weights than the base, and a theta between two images'
    # escalation masses (computed here in process, apart from serving), so one escalates.
    p_base = {k: probabilities(base, image_bytes(color=c)) for k, c in PAIR_COLORS.items()}
    mass = {k: p[MEDIUM] + p[HIGH_RISK] for k, p in p_base.items()}
    lo, hi = min(mass, key=mass.get), max(mass, key=mass.get)
    assert mass[hi] - mass[lo] > 1e-3, mass  # the base must tell them apart
    theta = (mass[hi] + mass[lo]) / 2
    pair_spec = make_bundle(
        tiny_model_path,
        tmp / "pair_spec",
        "s",
        "2",
        stage="specialist",
        fusion=fusion(theta, slope=2.0, intercept=0.1),
        max_pixels=BUDGET,
        perturb_seed=7,
    )

    def config(spec=spec, **kw) -> ServeConfig:
        replicas = dict(TINY_CPU, **kw.pop("base_replicas", {}))
        return ServeConfig(
            base={"name": "b", "version": "1", "model_uri": str(base)},
            specialist={"name": "s", "version": "2", "model_uri": str(spec)},
            retry_after_s=RETRY_AFTER_S,
            ingress={"num_cpus": 0.05},
            base_replicas=replicas,
            specialist_replicas=TINY_CPU,
            **kw,
        )

    # /slow: a base replica that takes one request at a time and holds each 2 s (its batch of
    # 2 never fills): admission lets 2 images in (batch 2 x 1 in flight), queues 2 more (one
    # capacity's worth: no rate measured yet), refuses the rest; the queued ones meet their
    # 0.3 s deadline long before a slot frees.
    slow = config(
        model_batch_size=2,
        model_batch_wait_s=2.0,
        admission={"batches_in_flight": 1, "max_wait_s": 0.3},
        health_check_period_s=60,  # no probe joins (and fills) a waiting batch
    )
    one_at_a_time = {"max_ongoing_requests": 1, "max_queued_requests": 100}
    # /obs: batches bounded at 2.5 budgets of decoded pixels.
    obs = config(max_batch_pixels=int(2.5 * BUDGET), max_image_pixels=4_000_000)
    # /scale: the base deployment scales 1 -> 2 when its ongoing requests pass 1 per replica.
    scale = config(
        model_batch_size=2,
        base_replicas={
            "min_replicas": 1,
            "max_replicas": 2,
            "target_ongoing_requests": 1,
            "upscale_delay_s": 1,
            "downscale_delay_s": 3,
        },
    )
    metrics_port = free_port()
    with serve_cluster({"HAZARD_API_KEY": API_KEY}, metrics_port=metrics_port) as root:
        serve.run_many(
            [
                serve.RunTarget(
                    compose_app(slow, scorer_options=one_at_a_time),
                    name="slow",
                    route_prefix="/slow",
                ),
                serve.RunTarget(compose_app(obs), name="obs", route_prefix="/obs"),
                # only the metrics test calls it: its counters start at zero
                serve.RunTarget(compose_app(config()), name="metered", route_prefix="/metered"),
                serve.RunTarget(compose_app(scale), name="scale", route_prefix="/scale"),
                serve.RunTarget(
                    compose_app(config(spec=pair_spec)), name="pair", route_prefix="/pair"
                ),
            ]
        )
        PAIR.update(base=base, spec=pair_spec, p_base=p_base, lo=lo, hi=hi, theta=theta)
        yield root, f"http://127.0.0.1:{metrics_port}/metrics"


def _score(client: httpx.Client, url: str, headers: dict | None = None) -> httpx.Response:
    body = {"id": "x", "image": b64(image_bytes())}
    return client.post(url, json=body, headers=headers or AUTH)


# -- the cascade's numbers -------------------------------------------------------------------
def test_two_different_bundles_are_served_with_their_own_numbers_and_fusion(cluster):
    """Each response equals the base's probabilities, the (other) specialist's p(high_risk)
    and their fusion under the specialist bundle's correction, all computed here; the image
    above theta escalates, the one below does not."""
    root, _ = cluster
    params = CorrectionParams(**fusion(0, slope=2.0, intercept=0.1)["correction"])
    with httpx.Client(timeout=60) as client:
        for key in (PAIR["hi"], PAIR["lo"]):
            png = image_bytes(color=PAIR_COLORS[key])
            got = client.post(
                f"{root}/pair/v1/score", json={"id": key, "image": b64(png)}, headers=AUTH
            ).json()
            p_base = PAIR["p_base"][key]
            escalate = should_escalate(p_base, PAIR["theta"])
            assert escalate is (key == PAIR["hi"])
            p_high = None
            if escalate:
                p_spec = probabilities(PAIR["spec"], png)
                assert abs(p_spec[HIGH_RISK] - p_base[HIGH_RISK]) > 1e-2  # other weights
                p_high = p_spec[HIGH_RISK]
            want = fuse(p_base, p_high, params)
            assert got["escalated"] is escalate
            assert [m["role"] for m in got["models"]] == (
                ["base", "specialist"] if escalate else ["base"]
            )
            for label in RISK_LABELS:
                assert got["probabilities"][label] == pytest.approx(want[label], abs=1e-4)
            assert got["hazard_score"] == pytest.approx(hazard_score(want), abs=1e-4)
            assert got["risk_level"] == predict_label(want)


# -- admission ---------------------------------------------------------------------------------
def test_overload_is_shed_at_once_and_waiting_past_the_deadline_is_refused(cluster):
    root, _ = cluster
    url = f"{root}/slow/v1/score"
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(8) as pool:
        assert client.get(f"{root}/slow/readyz").status_code == 200
        responses = list(pool.map(lambda _: _score(client, url), range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 2 + [503] * 6
    refused = [r for r in responses if r.status_code == 503]
    details = sorted(r.json()["detail"].split(";")[0] for r in refused)
    # 2 waited and met the deadline; 4 found the queue (2 images) full.
    assert sum("waited 0.3 s" in d for d in details) == 2
    assert sum("2 images at the models and 2 waiting" in d for d in details) == 4
    # Retry-After is 3 x (1 + refused/completed images/s), nothing completed yet (counted as
    # 1/s): each refusal adds ln2/5 = 0.139/s to the refused rate (5 s half-life, under 5%
    # decay within the test), so the first refusal is told ceil(3 x 1.139) = 4 s, the sixth
    # at most ceil(3 x 1.83) = 6, and from the fourth on (0.53/s) at least 5.
    waits = sorted(int(r.headers["retry-after"]) for r in refused)
    assert waits[0] == 4 and waits[-1] in (5, 6) and set(waits) <= {4, 5, 6}
    assert sum(w >= 5 for w in waits) >= 3
    assert {r.headers["content-type"] for r in refused} == {"application/json"}
    for r in responses:
        if r.status_code == 200:
            assert r.json()["models"][0]["name"] == "b"


def test_a_batch_is_admitted_by_its_number_of_images(cluster):
    """Capacity 2: a batch of 2 is admitted whole; a second one, arriving while the first
    holds both slots, waits and meets its deadline (never computed)."""
    root, _ = cluster
    url = f"{root}/slow/v1/score/batch"
    body = {"items": [{"id": str(i), "image": b64(image_bytes())} for i in range(2)]}
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(2) as pool:
        first = pool.submit(client.post, url, json=body, headers=AUTH)
        time.sleep(0.5)  # the first batch is at the model (held 2 s)
        second = client.post(url, json=body, headers=AUTH)
        first = first.result()
    assert first.status_code == 200 and [r["id"] for r in first.json()["results"]] == ["0", "1"]
    assert second.status_code == 503 and "waited 0.3 s" in second.json()["detail"]


# -- bounded memory per request ----------------------------------------------------------------
def test_batch_pixels_are_counted_after_the_ingress_downscales(cluster):
    """Each 1600x1200 photo (1.92 MP) is downscaled to the 12,544-pixel budget on decode: two
    (2 budgets) fit under the 2.5-budget batch bound, three do not. Counted at full size even
    one would not fit."""
    root, _ = cluster
    url = f"{root}/obs/v1/score/batch"
    photo = b64(image_bytes((1600, 1200), (90, 140, 200), fmt="JPEG"))
    with httpx.Client(timeout=120) as client:
        two = client.post(url, json={"items": [{"image": photo}] * 2}, headers=AUTH)
        three = client.post(url, json={"items": [{"image": photo}] * 3}, headers=AUTH)
    assert two.status_code == 200, two.text
    assert [r["risk_level"] is not None for r in two.json()["results"]] == [True, True]
    assert three.status_code == 413
    # 1600x1200 downscaled to at most 12,544 pixels keeping 4:3: 129x96 = 12,384 each.
    assert three.json()["detail"] == (
        f"the batch decodes to {3 * 129 * 96} pixels; the limit is {int(2.5 * BUDGET)}"
    )


# -- request ids and metrics -------------------------------------------------------------------
def _session_logs() -> Path:
    from ray._private.worker import _global_node

    return Path(_global_node.get_session_dir_path()) / "logs" / "serve"


def _log_records(request_id: str) -> list[dict]:
    """JSON log records of Serve's replica logs that carry `request_id`."""
    records = []
    for path in _session_logs().glob("replica_obs_*.log"):
        for line in path.read_text().splitlines():
            if request_id in line:
                records.append(json.loads(line))  # JSON encoding: every line parses
    return records


def test_request_ids_are_echoed_generated_and_logged(cluster):
    root, _ = cluster
    url = f"{root}/obs/v1/score"
    with httpx.Client(timeout=60) as client:
        given = _score(client, url, headers={**AUTH, "X-Request-Id": "trace-0042"})
        generated = _score(client, url)
        refused = client.post(url, json={"image": "not base64!"}, headers=AUTH)
    assert given.status_code == 200 and given.headers["x-request-id"] == "trace-0042"
    assert generated.status_code == 200
    assert len(generated.headers["x-request-id"]) >= 16
    assert generated.headers["x-request-id"] != "trace-0042"
    assert refused.status_code == 400 and refused.headers["x-request-id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        records = _log_records("trace-0042")
        # the ingress's access line, and the base and specialist replicas' lines of the call
        deployments = {r.get("deployment", "").removeprefix("obs_") for r in records}
        if {"HazardAPI", "BaseScorer", "SpecialistScorer"} <= deployments:
            break
        time.sleep(1)
    assert {"HazardAPI", "BaseScorer", "SpecialistScorer"} <= deployments, records
    assert all(r["request_id"] == "trace-0042" for r in records)


def _scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """{(name, labels): value} of a Prometheus text exposition, for the app's metrics only."""
    out = {}
    for line in httpx.get(url, timeout=10).text.splitlines():
        if not line.startswith("ray_hazard_"):
            continue
        head, value = line.rsplit(" ", 1)
        name, _, labels = head.partition("{")
        pairs = frozenset(
            tuple(kv.split("=", 1)) for kv in labels.rstrip("}").replace('"', "").split(",") if kv
        )
        out[(name, pairs)] = out.get((name, pairs), 0.0) + float(value)
    return out


def _metric(scraped, name: str, app: str, **labels: str) -> float:
    """Sum of `name` over series of the app `app` with `labels`."""
    want = {(k, v) for k, v in labels.items()} | {("application", app)}
    return sum(v for (n, pairs), v in scraped.items() if n == name and want <= pairs)


def test_metrics_count_requests_stages_escalations_and_refusals(cluster):
    root, metrics_url = cluster
    url = f"{root}/metered/v1/score"
    with httpx.Client(timeout=60) as client:
        ok = [_score(client, url) for _ in range(3)]
        junk = {"image": b64(b"not an image")}
        bad = [client.post(url, json=junk, headers=AUTH) for _ in range(2)]
        unauth = client.post(url, json={"image": b64(image_bytes())})
    assert [r.status_code for r in ok] == [200] * 3
    assert [r.status_code for r in bad] == [400] * 2 and unauth.status_code == 401

    expected = {
        ("ray_hazard_requests_total", (("route", "/v1/score"), ("status", "200"))): 3,
        ("ray_hazard_requests_total", (("route", "/v1/score"), ("status", "400"))): 2,
        ("ray_hazard_requests_total", (("route", "/v1/score"), ("status", "401"))): 1,
        ("ray_hazard_images_scored_total", (("escalated", "true"),)): 3,
        ("ray_hazard_images_scored_total", (("escalated", "false"),)): 0,
        ("ray_hazard_images_refused_total", (("reason", "undecodable"),)): 2,
        ("ray_hazard_stage_latency_seconds_count", (("stage", "decode"),)): 3,
        ("ray_hazard_stage_latency_seconds_count", (("stage", "base"),)): 3,
        ("ray_hazard_stage_latency_seconds_count", (("stage", "specialist"),)): 3,
        ("ray_hazard_stage_latency_seconds_count", (("stage", "fusion"),)): 3,
        ("ray_hazard_stage_latency_seconds_count", (("stage", "total"),)): 3,
    }

    def current() -> tuple[dict, float, float]:
        now = _scrape(metrics_url)
        counts = {key: _metric(now, key[0], "metered", **dict(key[1])) for key in expected}
        # base images forwarded: the 3 scored ones plus the health probes' (1 each)
        forwarded = _metric(now, "ray_hazard_model_batch_size_sum", "metered", model="base")
        in_flight = _metric(now, "ray_hazard_queue_depth", "metered", state="in_flight")
        return counts, forwarded, in_flight

    # Ray exports every few seconds, each process its own; the ingress samples its queue gauge
    # once a second, so a scrape may still show the last request in flight: wait for all three.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got, forwarded, in_flight = current()
        if got == expected and forwarded >= 3 and in_flight == 0:
            break
        time.sleep(1)
    assert got == expected
    assert forwarded >= 3 and in_flight == 0


# -- autoscaling -------------------------------------------------------------------------------
def _running(app: str, deployment: str) -> int:
    status = serve.status().applications[app].deployments[deployment]
    return int(status.replica_states.get("RUNNING", 0))


def test_the_base_deployment_scales_up_under_load_and_down_after(cluster):
    root, _ = cluster
    url = f"{root}/scale/v1/score"
    stop = threading.Event()
    statuses: list[int] = []

    def client_loop() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                statuses.append(_score(client, url).status_code)

    assert _running("scale", "BaseScorer") == 1
    threads = [threading.Thread(target=client_loop) for _ in range(6)]
    for t in threads:
        t.start()
    seen = [1]
    try:
        deadline = time.monotonic() + 120
        while seen[-1] < 2 and time.monotonic() < deadline:
            time.sleep(1)
            seen.append(_running("scale", "BaseScorer"))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert max(seen) == 2, f"never scaled up: {seen}"
    deadline = time.monotonic() + 120
    while seen[-1] > 1 and time.monotonic() < deadline:
        time.sleep(1)
        seen.append(_running("scale", "BaseScorer"))
    assert seen[-1] == 1, f"never scaled back down: {seen}"
    assert set(statuses) <= {200, 503} and statuses.count(200) > 0
    assert ray.is_initialized()


# -- optional explanation ----------------------------------------------------------------------
def test_explain_adds_the_base_models_rationale_and_whether_it_agrees(cluster):
    """`?explain=true`: the text is the base model's greedy rationale for the scored label
    (generated here in process from the same bundle: equal), read back with hazard.core.answers."""
    from PIL import Image

    from hazard.core.answers import parse_risk_level
    from hazard.infra.bundle import open_bundle
    from hazard.model.vlm import explain_text, load_model, load_processor

    root, _ = cluster
    png = image_bytes(color=(30, 120, 60))
    body = {"id": "why", "image": b64(png)}
    with httpx.Client(timeout=120) as client:
        plain = client.post(f"{root}/obs/v1/score", json=body, headers=AUTH)
        got = client.post(f"{root}/obs/v1/score?explain=true", json=body, headers=AUTH)
        bad = client.post(f"{root}/obs/v1/score?explain=maybe", json=body, headers=AUTH)
    assert plain.status_code == 200 and "explanation" not in plain.json()
    assert bad.status_code == 422 and "explain" in bad.json()["detail"]
    assert got.status_code == 200, got.text
    result = got.json()
    assert result["probabilities"] == plain.json()["probabilities"]  # explaining changes nothing

    opened = open_bundle(PAIR["base"].as_posix())
    meta = opened.meta
    model = load_model(opened.path).eval()
    processor = load_processor(opened.path, meta.max_pixels, meta.min_pixels)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    want = explain_text(model, processor, image, meta.prompt, result["risk_level"])
    read = parse_risk_level(want)
    assert result["explanation"] == {
        "text": want,
        "label_in_text": read,
        "agrees": read == result["risk_level"],
    }
