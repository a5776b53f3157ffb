"""The served application's HTTP contract (docs/architecture.md, "HTTP API"), end to end.

Real Ray (2 CPUs), real Ray Serve on a free 127.0.0.1 port, real HTTP (httpx), and two model
bundles built from the cached tiny Qwen2.5-VL (untrained for the task, but a real checkpoint
loaded through the same path as the 7B/3B). Four applications, one per configuration, are
deployed together once (replica start-up dominates the run time, and starting them side by side
overlaps it): the cascade (θ = 0, always escalate, a non-default correction), base-only (θ = 1),
and two back-pressure set-ups with tiny queues. The fusion of each comes from its specialist
bundle's metadata, as the calibration job records it.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
from collections.abc import Iterator

import httpx
import pytest
from fastapi.routing import APIRoute
from PIL import Image
from ray import serve

from hazard.config.serve import ServeConfig
from hazard.core.fusion import CorrectionParams, fuse, hazard_score, predict_label
from hazard.core.labels import HIGH_RISK, RISK_LABELS
from serve.app import compose_app
from serve.ingress import app as ingress_app
from serve.schemas import (
    BatchItemError,
    BatchResult,
    Explanation,
    Health,
    ItemError,
    ModelInfo,
    ModelRef,
    ModelsResult,
    Readiness,
    ScoreResult,
)
from tests.helpers.serve import b64, fusion, image_bytes, make_bundle, serve_cluster

pytestmark = pytest.mark.slow

API_KEY = "test-key-" + os.urandom(8).hex()
AUTH = {"Authorization": f"Bearer {API_KEY}"}
LIMITS = dict(
    max_batch_items=4, max_image_bytes=100_000, max_image_pixels=1_000_000, max_body_bytes=300_000
)
BASE = ("hazard-base-test", "1.2.3")
SPEC = ("hazard-specialist-test", "4.5.6")
RETRY_AFTER_S = 7
# 8 model replicas + 4 ingresses must fit in 2 CPUs (the defaults reserve 1 per model).
SMALL = dict(
    ingress={"num_cpus": 0.05},
    base_replicas={"num_cpus": 0.15},
    specialist_replicas={"num_cpus": 0.15},
)
SEEN_STATUS: list[tuple[str, int]] = []  # every response of the module, for the no-500 check
# The cascade's fusion, far from the defaults (k = clip(0.5 + 1.5 p, 0.5, 2)): k = 0.3 whatever
# the specialist says, so p(high_risk) shrinks where the default correction keeps or raises it.
ALWAYS = fusion(theta=0.0, slope=0.0, intercept=0.3, k_min=0.1, k_max=0.3)
NEVER = fusion(theta=1.0)


def _apps(tmp, tiny_model_path) -> dict[str, tuple[str, serve.Application]]:
    """{key: (route prefix, application)} of the four configurations."""
    base = make_bundle(tiny_model_path, tmp / "base", *BASE, stage="base")
    always, never = (
        make_bundle(tiny_model_path, tmp / key, *SPEC, stage="specialist", fusion=spec)
        for key, spec in (("spec_always", ALWAYS), ("spec_never", NEVER))
    )

    def config(spec, **kw) -> ServeConfig:
        specialist = {"name": SPEC[0], "version": SPEC[1], "model_uri": str(spec)}
        base_model = {"name": BASE[0], "version": BASE[1], "model_uri": str(base)}
        return ServeConfig(base=base_model, specialist=specialist, **LIMITS, **SMALL, **kw)

    # Each batch waits its full 3 s for company: a request holds its model slot that long, so a
    # burst sent at once meets full queues (a margin for a loaded 2-core machine).
    # No health probe (a real forward through the same batch queue) joins a held batch and
    # ends its wait early during the tests.
    slow = config(
        never, model_batch_wait_s=3.0, retry_after_s=RETRY_AFTER_S, health_check_period_s=120
    )
    tiny_queue = {"max_ongoing_requests": 1, "max_queued_requests": 1}
    return {
        "cascade": ("/", compose_app(config(always))),
        "base_only": ("/theta1", compose_app(config(never))),
        "scorer_queue": ("/scorerq", compose_app(slow, scorer_options=tiny_queue)),
        "ingress_queue": ("/ingressq", compose_app(slow, ingress_options=tiny_queue)),
    }


@pytest.fixture(scope="module")
def urls(tmp_path_factory, tiny_model_path) -> dict[str, str]:
    """Base URL of each configuration's application."""
    # The key reaches the ingress replicas through the job's runtime_env: serve.run gives the
    # driver's runtime_env to every deployment that has none of its own.
    with serve_cluster({"HAZARD_API_KEY": API_KEY}) as root:
        apps = _apps(tmp_path_factory.mktemp("serve"), tiny_model_path)
        serve.run_many(
            [
                serve.RunTarget(app, name=key, route_prefix=prefix)
                for key, (prefix, app) in apps.items()
            ]
        )
        yield {key: root + prefix.rstrip("/") for key, (prefix, _) in apps.items()}


def _record(response: httpx.Response) -> None:
    SEEN_STATUS.append(
        (f"{response.request.method} {response.request.url.path}", response.status_code)
    )


@pytest.fixture(scope="module")
def client(urls):
    with httpx.Client(timeout=60, event_hooks={"response": [_record]}) as c:
        yield c


@pytest.fixture
def cascade(urls):
    return urls["cascade"]


@pytest.fixture
def base_only(urls):
    return urls["base_only"]


# -- helpers ----------------------------------------------------------------------------------
PATHS = {  # each route and the model its 200 body is
    "/v1/score": ScoreResult,
    "/v1/score/batch": BatchResult,
    "/v1/models": ModelsResult,
    "/readyz": Readiness,
    "/healthz": Health,
}


def assert_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body, dict) and body.get("detail"), body
    return body


def assert_score(body: dict, item_id: str | None, escalated: bool) -> None:
    assert set(body) == {
        "id",
        "risk_level",
        "probabilities",
        "hazard_score",
        "escalated",
        "models",
        "latency_ms",
    }, body
    assert body["id"] == item_id
    probs = body["probabilities"]
    assert list(probs) == list(RISK_LABELS)
    assert all(0.0 <= p <= 1.0 for p in probs.values())
    assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-6)
    assert body["risk_level"] in RISK_LABELS
    assert body["risk_level"] == max(RISK_LABELS, key=probs.__getitem__)
    assert 0.0 <= body["hazard_score"] <= 1.0
    assert body["escalated"] is escalated
    assert body["latency_ms"] >= 0
    expected = [BASE, SPEC] if escalated else [BASE]
    assert [(m["name"], m["version"]) for m in body["models"]] == expected


def multipart(data: bytes, name: str = "corridor.png", field: str = "file") -> dict:
    return {"files": {field: (name, data, "image/png")}}


def noise_png(side: int) -> bytes:
    """An incompressible PNG of about side*side*3 bytes."""
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(buf, format="PNG")
    return buf.getvalue()


# -- health, docs, models -----------------------------------------------------------------------
def test_healthz_readyz(client, cascade):
    assert client.get(f"{cascade}/healthz").json() == {"status": "ok"}
    ready = client.get(f"{cascade}/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {
        "status": "ready",
        "ready": True,
        "models": {"base": "ready", "specialist": "ready"},
    }


def test_docs_and_openapi(client, cascade):
    docs = client.get(f"{cascade}/docs")
    assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
    spec = client.get(f"{cascade}/openapi.json").json()
    assert {"/v1/score", "/v1/score/batch", "/v1/models", "/healthz", "/readyz"} <= set(
        spec["paths"]
    )


def test_models_needs_auth_and_lists_both(client, cascade):
    assert_error(client.get(f"{cascade}/v1/models"), 401)
    body = client.get(f"{cascade}/v1/models", headers=AUTH).json()
    assert [(m["role"], m["name"], m["version"]) for m in body["models"]] == [
        ("base", *BASE),
        ("specialist", *SPEC),
    ]
    assert all(m["labels"] == list(RISK_LABELS) for m in body["models"])
    assert body["labels"] == list(RISK_LABELS)
    assert body["fusion"] == {"correction": ALWAYS["correction"], "theta": 0.0}


# -- scoring ------------------------------------------------------------------------------------
def test_score_multipart_escalates_with_theta_zero(client, cascade):
    r = client.post(f"{cascade}/v1/score", headers=AUTH, **multipart(image_bytes(), "a.png"))
    assert r.status_code == 200, r.text
    assert_score(r.json(), "a.png", escalated=True)


def test_score_json_escalates_with_theta_zero(client, cascade):
    payload = {"id": "cam-7/frame-42", "image": b64(image_bytes(fmt="JPEG"))}
    r = client.post(f"{cascade}/v1/score", headers=AUTH, json=payload)
    assert r.status_code == 200, r.text
    assert_score(r.json(), "cam-7/frame-42", escalated=True)


def test_score_json_accepts_line_wrapped_base64(client, cascade):
    text = b64(image_bytes((80, 60), (10, 120, 200)))
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    r = client.post(f"{cascade}/v1/score", headers=AUTH, json={"id": "w", "image": wrapped})
    assert r.status_code == 200, r.text
    assert_score(r.json(), "w", escalated=True)


def test_batch_in_order_with_per_item_error(client, cascade):
    items = [
        {"id": "first", "image": b64(image_bytes(color=(0, 0, 0)))},
        {"id": "broken", "image": b64(b"this is not an image")},
        {"id": "last", "image": b64(image_bytes(fmt="WEBP"))},
    ]
    r = client.post(f"{cascade}/v1/score/batch", headers=AUTH, json={"items": items})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [res["id"] for res in results] == ["first", "broken", "last"]
    assert_score(results[0], "first", escalated=True)
    assert_score(results[2], "last", escalated=True)
    assert set(results[1]) == {"id", "error"}
    assert results[1]["error"]["status"] == 400 and results[1]["error"]["detail"]


def fields(model) -> set[str]:
    return set(model.model_fields)


def assert_declared(model, body: dict) -> None:
    """`body` is what `model` writes: validating it and writing it back gives it unchanged."""
    assert model.model_validate(body).model_dump(mode="json", exclude_unset=True) == body


def api_routes(routes) -> Iterator[APIRoute]:
    """The APIRoutes under `routes`, through included routers (Serve's ingress includes its
    class's routes)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        else:
            yield from api_routes(getattr(getattr(route, "original_router", route), "routes", ()))


def test_every_route_declares_its_response_model():
    """The routes return their response models: none writes a body FastAPI does not check."""
    routes = {r.path: r.response_model for r in api_routes(ingress_app.routes) if r.path in PATHS}
    assert routes == PATHS


def test_each_body_has_exactly_its_models_fields(client, cascade):
    """A response field is declared once: every key of each real body is a field of its model,
    and every field is in the body (`explanation` only when asked for). A key a route added by
    hand, or a field no route fills, fails here."""
    image = {"id": "decl", "image": b64(image_bytes())}
    explained = client.post(f"{cascade}/v1/score?explain=true", headers=AUTH, json=image)
    assert explained.status_code == 200, explained.text
    body = explained.json()
    assert set(body) == fields(ScoreResult)
    assert set(body["explanation"]) == fields(Explanation)
    assert all(set(m) == fields(ModelRef) for m in body["models"])
    assert_declared(ScoreResult, body)
    plain = client.post(f"{cascade}/v1/score", headers=AUTH, json=image).json()
    assert set(plain) == fields(ScoreResult) - {"explanation"}
    assert_declared(ScoreResult, plain)

    items = [image, {"id": None, "image": b64(b"not an image")}]
    results = client.post(f"{cascade}/v1/score/batch", headers=AUTH, json={"items": items})
    ok, failed = results.json()["results"]
    assert set(ok) == fields(ScoreResult) - {"explanation"}
    assert set(failed) == fields(BatchItemError) and set(failed["error"]) == fields(ItemError)
    assert failed["id"] is None  # a null id stays in the body
    assert_declared(ScoreResult, ok)
    assert_declared(BatchItemError, failed)

    models = client.get(f"{cascade}/v1/models", headers=AUTH).json()
    assert set(models) == fields(ModelsResult)
    assert all(set(m) == fields(ModelInfo) for m in models["models"])
    assert_declared(ModelsResult, models)
    for path, model in (("/readyz", Readiness), ("/healthz", Health)):
        got = client.get(f"{cascade}{path}").json()
        assert set(got) == fields(model), path
        assert_declared(model, got)


def test_batch_over_max_items_is_413(client, cascade):
    item = {"id": "x", "image": b64(image_bytes())}
    r = client.post(f"{cascade}/v1/score/batch", headers=AUTH, json={"items": [item] * 5})
    assert_error(r, 413)


# -- auth ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"X-API-Key": "wrong"},
        {"Authorization": API_KEY},  # no Bearer scheme
    ],
    ids=["none", "wrong-bearer", "wrong-x-api-key", "no-scheme"],
)
def test_auth_refused(client, cascade, headers):
    body = {"id": "a", "image": b64(image_bytes())}
    r = client.post(f"{cascade}/v1/score", headers=headers, json=body)
    assert_error(r, 401)
    assert r.headers.get("www-authenticate") == "Bearer"
    r = client.post(f"{cascade}/v1/score/batch", headers=headers, json={"items": [body]})
    assert_error(r, 401)


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": f"Bearer {API_KEY}"}, {"X-API-Key": API_KEY}],
    ids=["bearer", "x-api-key"],
)
def test_auth_accepted_either_header(client, cascade, headers):
    r = client.post(f"{cascade}/v1/score", headers=headers, **multipart(image_bytes()))
    assert r.status_code == 200, r.text


# -- bad input: never a 500 -------------------------------------------------------------------
def test_undecodable_image_is_400(client, cascade):
    assert_error(
        client.post(f"{cascade}/v1/score", headers=AUTH, **multipart(b"\x89PNG junk")), 400
    )
    r = client.post(f"{cascade}/v1/score", headers=AUTH, json={"id": "j", "image": b64(b"junk")})
    assert_error(r, 400)


def test_bad_base64_is_400(client, cascade):
    r = client.post(f"{cascade}/v1/score", headers=AUTH, json={"id": "b", "image": "@@not-b64@@"})
    assert_error(r, 400)


def test_unsupported_image_format_is_400(client, cascade):
    gif = image_bytes(fmt="GIF")
    assert_error(client.post(f"{cascade}/v1/score", headers=AUTH, **multipart(gif, "a.gif")), 400)


def test_extreme_aspect_ratio_is_400(client, cascade):
    # Qwen2.5-VL's processor raises on aspect ratios >= 200: a 400 here, not a model-side 500
    sliver = image_bytes((1, 300))
    assert_error(client.post(f"{cascade}/v1/score", headers=AUTH, **multipart(sliver)), 400)


def test_image_over_max_bytes_is_413(client, cascade):
    big = noise_png(200)  # ~120 kB > max_image_bytes, body still under max_body_bytes
    assert LIMITS["max_image_bytes"] < len(big) < LIMITS["max_body_bytes"] // 2
    assert_error(client.post(f"{cascade}/v1/score", headers=AUTH, **multipart(big)), 413)
    r = client.post(f"{cascade}/v1/score", headers=AUTH, json={"id": "big", "image": b64(big)})
    assert_error(r, 413)


def test_image_over_max_pixels_is_413(client, cascade):
    wide = image_bytes((1100, 1000))  # 1.1 MP, a few kB
    assert len(wide) < LIMITS["max_image_bytes"]
    assert_error(client.post(f"{cascade}/v1/score", headers=AUTH, **multipart(wide)), 413)
    r = client.post(f"{cascade}/v1/score", headers=AUTH, json={"id": "px", "image": b64(wide)})
    assert_error(r, 413)


def test_body_over_max_body_bytes_is_413(client, cascade):
    body = json.dumps({"id": "pad", "image": b64(image_bytes())}) + " " * 400_000
    headers = dict(AUTH, **{"Content-Type": "application/json"})
    assert_error(client.post(f"{cascade}/v1/score", headers=headers, content=body), 413)
    assert_error(client.post(f"{cascade}/v1/score/batch", headers=headers, content=body), 413)
    blob = os.urandom(400_000)
    assert_error(client.post(f"{cascade}/v1/score", headers=AUTH, **multipart(blob)), 413)


def test_chunked_body_over_max_body_bytes_is_413(client, cascade):
    def chunks():  # no Content-Length: the limit must hold while streaming
        yield b'{"id": "chunked", "image": "'
        for _ in range(40):
            yield b"A" * 10_000
        yield b'"}'

    headers = dict(AUTH, **{"Content-Type": "application/json"})
    assert_error(client.post(f"{cascade}/v1/score", headers=headers, content=chunks()), 413)


@pytest.mark.parametrize("path", ["/v1/score", "/v1/score/batch"])
def test_text_plain_is_415(client, cascade, path):
    headers = dict(AUTH, **{"Content-Type": "text/plain"})
    assert_error(client.post(f"{cascade}{path}", headers=headers, content=b"hello"), 415)


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/score", b'{"id": "no-image"}'),
        ("/v1/score", b'{"id": "x", "image": 5}'),
        ("/v1/score", b'{"id": "x", "image": '),  # not JSON at all
        ("/v1/score/batch", b'{"items": "nope"}'),
        ("/v1/score/batch", b'{"items": [{"id": "x"}]}'),
    ],
    ids=["missing-image", "wrong-type", "truncated-json", "items-not-list", "item-no-image"],
)
def test_json_schema_error_is_422(client, cascade, path, body):
    headers = dict(AUTH, **{"Content-Type": "application/json"})
    assert_error(client.post(f"{cascade}{path}", headers=headers, content=body), 422)


def test_multipart_without_file_is_422(client, cascade):
    r = client.post(f"{cascade}/v1/score", headers=AUTH, **multipart(image_bytes(), field="image"))
    assert_error(r, 422)
    r = client.post(
        f"{cascade}/v1/score", headers=AUTH, files={"x": (None, "y")}, data={"file": "t"}
    )
    assert_error(r, 422)


def test_malformed_multipart_is_400(client, cascade):
    headers = dict(AUTH, **{"Content-Type": "multipart/form-data"})  # no boundary
    assert_error(client.post(f"{cascade}/v1/score", headers=headers, content=b"--x\r\n"), 400)


def test_unknown_route_and_method_are_json(client, cascade):
    assert_error(client.get(f"{cascade}/v1/nope"), 404)
    assert_error(client.get(f"{cascade}/v1/score", headers=AUTH), 405)


# -- escalation off -----------------------------------------------------------------------------
def test_theta_one_never_escalates(client, base_only):
    r = client.post(
        f"{base_only}/v1/score", headers=AUTH, json={"id": "n", "image": b64(image_bytes())}
    )
    assert r.status_code == 200, r.text
    assert_score(r.json(), "n", escalated=False)
    items = [{"id": str(i), "image": b64(image_bytes(color=(i * 60, 90, 30)))} for i in range(3)]
    r = client.post(f"{base_only}/v1/score/batch", headers=AUTH, json={"items": items})
    assert r.status_code == 200, r.text
    for i, res in enumerate(r.json()["results"]):
        assert_score(res, str(i), escalated=False)
    assert client.get(f"{base_only}/v1/models", headers=AUTH).json()["fusion"]["theta"] == 1.0


def test_cascade_fuses_with_the_specialist_bundles_correction(client, cascade, base_only):
    """The base-only app answers p_base itself; both bundles hold the same tiny weights, so the
    specialist's p(high_risk) is p_base's. The cascade must answer their fusion under the
    bundle's correction, computed here with hazard.core.fusion, not the default one."""
    image = {"id": "f", "image": b64(image_bytes())}  # the tiny model: p(high_risk) ~ 0.9
    p_base = client.post(f"{base_only}/v1/score", headers=AUTH, json=image).json()["probabilities"]
    got = client.post(f"{cascade}/v1/score", headers=AUTH, json=image).json()
    params = CorrectionParams(**ALWAYS["correction"])
    want = fuse(p_base, p_base[HIGH_RISK], params)
    default = fuse(p_base, p_base[HIGH_RISK])
    assert default[HIGH_RISK] - want[HIGH_RISK] > 0.1  # the bundle's correction matters here
    assert got["escalated"] is True
    for label in RISK_LABELS:
        assert got["probabilities"][label] == pytest.approx(want[label], abs=1e-4), label
    assert got["hazard_score"] == pytest.approx(hazard_score(want), abs=1e-4)
    assert got["risk_level"] == predict_label(want)


# -- back-pressure ------------------------------------------------------------------------------
async def _burst(url: str, n: int) -> list[httpx.Response]:
    payload = {"id": "burst", "image": b64(image_bytes())}
    async with httpx.AsyncClient(timeout=60) as ac:
        responses = await asyncio.gather(
            *(ac.post(f"{url}/v1/score", headers=AUTH, json=payload) for _ in range(n))
        )
    for r in responses:
        _record(r)
    return list(responses)


def test_model_queue_full_is_503_json_with_retry_after(urls):
    """BaseScorer: 1 ongoing + 1 queued, each request held 3 s: of 6 simultaneous requests at
    most 2 are admitted; the ingress turns the others' BackPressureError into JSON 503s."""
    url = urls["scorer_queue"]
    responses = asyncio.run(_burst(url, 6))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 503}, statuses
    assert 1 <= statuses.count(200) <= 2, statuses
    for r in responses:
        if r.status_code == 503:
            assert_error(r, 503)
            assert r.headers["retry-after"] == str(RETRY_AFTER_S)
        else:
            assert_score(r.json(), "burst", escalated=False)


def test_ingress_queue_full_is_503_with_retry_after(urls):
    """HazardAPI: 1 ongoing + 1 queued at the proxy, each request held 3 s: Serve's proxy
    answers the rest 503 with the configured Retry-After. The proxy writes that body itself, as
    plain text: the one error body the app cannot make JSON."""
    url = urls["ingress_queue"]
    responses = asyncio.run(_burst(url, 5))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 503}, statuses
    assert 1 <= statuses.count(200) <= 2, statuses
    for r in responses:
        if r.status_code == 503:
            assert r.headers["retry-after"] == str(RETRY_AFTER_S)


def test_readyz_names_the_model_that_is_not_ready(urls):
    """BaseScorer of the tiny-queue app is full (1 ongoing + 1 queued, each held 3 s): its
    probe is refused, the idle specialist answers. /readyz says which model, with
    no exception text."""
    url = urls["scorer_queue"]

    async def run() -> httpx.Response:
        payload = {"id": "hold", "image": b64(image_bytes())}
        async with httpx.AsyncClient(timeout=60) as ac:
            hold = []
            for _ in range(2):  # one after the other: the first ongoing, the second queued
                hold.append(
                    asyncio.create_task(ac.post(f"{url}/v1/score", headers=AUTH, json=payload))
                )
                await asyncio.sleep(0.7)
            ready = await ac.get(f"{url}/readyz")
            for r in await asyncio.gather(*hold):
                _record(r)
            return ready

    ready = asyncio.run(run())
    _record(ready)
    assert ready.status_code == 503, ready.text
    assert ready.json() == {
        "status": "not ready",
        "ready": False,
        "models": {"base": "not ready", "specialist": "ready"},
    }


def test_no_response_was_a_500():
    assert SEEN_STATUS, "no requests were recorded"
    bad = [(route, status) for route, status in SEEN_STATUS if status >= 500 and status != 503]
    assert not bad, bad
