"""The one-task application (`serve.task_app`, `POST /v1/answer`), end to end.

Real Ray (2 CPUs), real Ray Serve on a free 127.0.0.1 port, real HTTP (httpx). Two bundles of
the cached tiny Qwen2.5-VL, deployed together once: `multiple_choice` (row prompts, A-D, up to
four images) and `high_risk_binary` (the template prompt, one image). The probabilities each
answers are checked against `choice_log_likelihoods`, softmaxed, computed here for the same
messages on the same decoded images.
"""

from __future__ import annotations

import os

import httpx
import pytest
import torch
from ray import serve

from hazard.config.serve import TaskServeConfig
from hazard.core.schema import IMAGE_PLACEHOLDER
from hazard.infra.bundle import read_meta
from hazard.model.vlm import (
    choice_log_likelihoods,
    conversation_messages,
    load_model,
    load_processor,
    open_stored_image,
    template_messages,
)
from serve.task_app import compose_task_app
from tests.helpers.serve import b64, image_bytes, make_bundle, serve_cluster

pytestmark = pytest.mark.slow

API_KEY = "task-key-" + os.urandom(8).hex()
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MCQ = ("hazard-mcq-test", "2.0.1")
BINARY = ("hazard-binary-test", "0.3.0")
SMALL = dict(ingress={"num_cpus": 0.05}, replicas={"num_cpus": 0.3}, health_check_period_s=600)
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40), (10, 10, 10)]
QUESTION = "Which picture is red?\nA. first\nB. second\nC. third\nD. fourth\nAnswer:"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_model_path):
    tmp = tmp_path_factory.mktemp("task_bundles")
    return {
        "mcq": make_bundle(
            tiny_model_path, tmp / "mcq", *MCQ, stage="base", task="multiple_choice"
        ),
        "binary": make_bundle(
            tiny_model_path, tmp / "bin", *BINARY, stage="base", task="high_risk_binary"
        ),
    }


@pytest.fixture(scope="module")
def urls(bundles) -> dict[str, str]:
    def app(key, who):
        model = {"name": who[0], "version": who[1], "model_uri": str(bundles[key])}
        cfg = TaskServeConfig(model=model, max_images=4, max_body_bytes=200_000, **SMALL)
        return compose_task_app(cfg)

    with serve_cluster({"HAZARD_API_KEY": API_KEY}) as root:
        serve.run_many(
            [
                serve.RunTarget(app("mcq", MCQ), name="mcq", route_prefix="/mcq"),
                serve.RunTarget(app("binary", BINARY), name="binary", route_prefix="/binary"),
            ]
        )
        yield {"mcq": root + "/mcq", "binary": root + "/binary"}


@pytest.fixture(scope="module")
def client(urls):
    with httpx.Client(timeout=120) as c:
        yield c


def expected(bundle, messages, images: list[bytes], choices) -> dict[str, float]:
    """softmax(choice_log_likelihoods) of the sample, computed here from the bundle's files."""
    meta = read_meta(bundle)
    model = load_model(bundle)
    processor = load_processor(bundle, meta.max_pixels, meta.min_pixels)
    pics = [open_stored_image(data) for data in images]
    logp = choice_log_likelihoods(model, processor, [(messages, pics)], tuple(choices))
    return dict(zip(choices, torch.softmax(logp, dim=-1)[0].tolist(), strict=True))


@pytest.mark.parametrize("n_images", [1, 4])
def test_multiple_choice_answers_its_likelihoods(client, urls, bundles, n_images):
    images = [image_bytes((64 + 8 * i, 48), COLOURS[i]) for i in range(n_images)]
    places = " ".join(f"Picture {i + 1}: {IMAGE_PLACEHOLDER}" for i in range(n_images))
    prompt = f"{places}\n{QUESTION}"
    r = client.post(
        urls["mcq"] + "/v1/answer",
        json={
            "id": "q1",
            "images": [b64(d) for d in images],
            "prompt": prompt,
            "system": "Be brief.",
        },
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]
    want = expected(bundles["mcq"], conversation_messages(turns), images, "ABCD")
    assert list(body["probabilities"]) == list("ABCD")
    for choice, p in want.items():
        assert body["probabilities"][choice] == pytest.approx(p, abs=1e-5)
    assert body["answer"] == max(want, key=want.get)
    assert body["id"] == "q1" and body["task"] == "multiple_choice"
    assert body["model"] == {"name": MCQ[0], "version": MCQ[1]}


def test_template_task_asks_the_bundle_prompt(client, urls, bundles):
    from hazard.core.tasks import get_task

    data = image_bytes((72, 56), COLOURS[3])
    r = client.post(urls["binary"] + "/v1/answer", json={"images": [b64(data)]}, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    spec = get_task("high_risk_binary")
    want = expected(bundles["binary"], template_messages(spec.prompt, None, 1), [data], spec.labels)
    assert list(body["probabilities"]) == list(spec.labels)
    for choice, p in want.items():
        assert body["probabilities"][choice] == pytest.approx(p, abs=1e-5)
    assert body["answer"] == max(want, key=want.get) and body["id"] is None


def test_models_readiness_and_openapi(client, urls):
    for key, who, task in (("mcq", MCQ, "multiple_choice"), ("binary", BINARY, "high_risk_binary")):
        assert client.get(urls[key] + "/healthz").json() == {"status": "ok"}
        ready = client.get(urls[key] + "/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        assert client.get(urls[key] + "/v1/models").status_code == 401
        info = client.get(urls[key] + "/v1/models", headers=AUTH).json()
        assert (info["name"], info["version"], info["task"]) == (*who, task)
    info = client.get(urls["mcq"] + "/v1/models", headers=AUTH).json()
    assert info["labels"] == list("ABCD") and info["max_images"] == 4
    assert info["prompt_source"] == "row"
    binary = client.get(urls["binary"] + "/v1/models", headers=AUTH).json()
    assert binary["max_images"] == 1 and binary["prompt_source"] == "template"
    doc = client.get(urls["mcq"] + "/openapi.json").json()
    assert "/v1/answer" in doc["paths"] and "AnswerRequest" in doc["components"]["schemas"]


ONE = b64(image_bytes())
BAD_REQUESTS = [
    # (app, json body or raw bytes, headers, status, words in detail)
    (
        "mcq",
        {"images": [ONE, ONE], "prompt": f"{IMAGE_PLACEHOLDER} A or B?"},
        AUTH,
        422,
        "1 <image> place(s) but 2 image(s)",
    ),
    ("mcq", {"images": [ONE]}, AUTH, 422, "needs `prompt`"),
    ("mcq", {"images": [ONE] * 5, "prompt": IMAGE_PLACEHOLDER * 5}, AUTH, 413, "at most 4"),
    (
        "mcq",
        {"images": [ONE], "prompt": IMAGE_PLACEHOLDER, "system": IMAGE_PLACEHOLDER},
        AUTH,
        422,
        "system must not hold",
    ),
    ("mcq", {"images": [], "prompt": "x"}, AUTH, 422, "images"),
    (
        "binary",
        {"images": [ONE], "prompt": f"{IMAGE_PLACEHOLDER} risky?"},
        AUTH,
        422,
        "leave out `prompt`",
    ),
    ("binary", {"images": [ONE, ONE]}, AUTH, 413, "at most 1"),
    ("binary", {"image": ONE}, AUTH, 422, "image"),
    ("binary", {"images": ["not base64!"]}, AUTH, 400, "not valid base64"),
    ("binary", {"images": [b64(b"\x89PNG but not an image")]}, AUTH, 400, ""),
    ("binary", {"images": [ONE]}, {}, 401, "API key"),
    ("binary", {"images": [ONE]}, {"Authorization": "Bearer wrong"}, 401, "API key"),
    ("binary", b"images=1", {**AUTH, "content-type": "text/plain"}, 415, "send JSON"),
    ("binary", b"x" * 300_000, {**AUTH, "content-type": "application/json"}, 413, "body over"),
]


@pytest.mark.parametrize(
    "app, body, headers, status, words",
    BAD_REQUESTS,
    ids=[f"{a}-{s}-{w[:24]}" for a, _, _, s, w in BAD_REQUESTS],
)
def test_bad_requests_get_a_clear_4xx(client, urls, app, body, headers, status, words):
    url = urls[app] + "/v1/answer"
    if isinstance(body, bytes):
        r = client.post(url, content=body, headers=headers)
    else:
        r = client.post(url, json=body, headers=headers)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
