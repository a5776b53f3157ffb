"""The served app's OpenAPI contract and its fail-closed auth, over real HTTP on loopback.

Real Ray (2 CPUs), real Serve, the tiny Qwen2.5-VL bundles; schemathesis (its `st run` CLI, as
a user runs it) generates requests from the running app's own /openapi.json with the API key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from ray import serve

from hazard.config.serve import ServeConfig
from serve.app import build_app, compose_app
from serve.auth import MissingApiKey
from tests.helpers.serve import b64, fusion, image_bytes, make_bundle, serve_cluster

pytestmark = pytest.mark.slow

API_KEY = "openapi-key-" + os.urandom(8).hex()
UNSET = "HAZARD_TEST_KEY_NEVER_SET"
SMALL = dict(  # two apps in 2 CPUs
    ingress={"num_cpus": 0.1},
    base_replicas={"num_cpus": 0.3},
    specialist_replicas={"num_cpus": 0.3},
)
LIMITS = dict(max_batch_items=4, max_image_bytes=100_000, max_body_bytes=300_000)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_path):
    """(base URL of the app, config maker); `/` has auth on, `/open` auth disabled."""
    assert UNSET not in os.environ
    tmp = tmp_path_factory.mktemp("openapi")
    base = make_bundle(tiny_model_path, tmp / "base", "b", "1", stage="base")
    spec = make_bundle(
        tiny_model_path, tmp / "spec", "s", "2", stage="specialist", fusion=fusion(0.5)
    )

    def config(**kw) -> ServeConfig:
        return ServeConfig(
            base={"name": "b", "version": "1", "model_uri": str(base)},
            specialist={"name": "s", "version": "2", "model_uri": str(spec)},
            **LIMITS,
            **{**SMALL, **kw},
        )

    with serve_cluster({"HAZARD_API_KEY": API_KEY}) as root:
        serve.run_many(
            [
                serve.RunTarget(build_app(config().model_dump()), name="main", route_prefix="/"),
                serve.RunTarget(
                    compose_app(config(auth="disabled", api_key_env=UNSET)),
                    name="open",
                    route_prefix="/open",
                ),
            ]
        )
        yield root, config


# -- auth fails closed ------------------------------------------------------------------------
def test_build_app_refuses_to_start_without_the_key(setup):
    _, config = setup
    with pytest.raises(MissingApiKey, match=UNSET):
        build_app(config(api_key_env=UNSET).model_dump())


def test_ingress_replica_refuses_to_start_without_the_key(setup):
    """The replica-side check (a RayService's key is in the pods' env only): the deployment
    fails with the env var's name, it does not serve without auth."""
    _, config = setup
    app = compose_app(
        config(api_key_env=UNSET),
        scorer_options={"ray_actor_options": {"num_cpus": 0.05}},
        ingress_options={"max_constructor_retry_count": 1, "ray_actor_options": {"num_cpus": 0}},
    )
    try:
        with pytest.raises(RuntimeError, match="nokey failed"):
            serve.run(app, name="nokey", route_prefix="/nokey")
        status = serve.status().applications["nokey"]
        assert status.status == "DEPLOY_FAILED"
        message = status.deployments["HazardAPI"].message
        assert "MissingApiKey" in message and UNSET in message, message
    finally:
        serve.delete("nokey")


def test_auth_disabled_needs_no_key(setup):
    url, _ = setup
    r = httpx.post(f"{url}/open/v1/score", json={"id": "o", "image": b64(image_bytes())})
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "o"


def test_wrong_key_401_right_key_200(setup):
    url, _ = setup
    body = {"id": "k", "image": b64(image_bytes())}
    for headers in ({}, {"Authorization": "Bearer nope"}, {"X-API-Key": API_KEY[:-1]}):
        r = httpx.post(f"{url}/v1/score", json=body, headers=headers, timeout=60)
        assert r.status_code == 401, (headers, r.text)
        assert r.json() == {"detail": "missing or wrong API key"}
    r = httpx.post(f"{url}/v1/score", json=body, headers={"X-API-Key": API_KEY}, timeout=60)
    assert r.status_code == 200, r.text


def test_readyz_names_each_model(setup):
    url, _ = setup
    r = httpx.get(f"{url}/readyz", timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "status": "ready",
        "ready": True,
        "models": {"base": "ready", "specialist": "ready"},
    }


# -- the contract -----------------------------------------------------------------------------
def test_openapi_declares_bodies_responses_and_errors(setup):
    url, _ = setup
    doc = httpx.get(f"{url}/openapi.json").json()
    paths = doc["paths"]
    score = paths["/v1/score"]["post"]
    content = score["requestBody"]["content"]
    assert content["multipart/form-data"]["schema"]["properties"]["file"] == {
        "type": "string",
        "format": "binary",
        "description": content["multipart/form-data"]["schema"]["properties"]["file"][
            "description"
        ],
    }
    assert content["multipart/form-data"]["schema"]["required"] == ["file"]
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/ScoreItem"}
    batch = paths["/v1/score/batch"]["post"]
    assert batch["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/BatchRequest"
    }
    schemas = doc["components"]["schemas"]
    assert set(schemas["ScoreItem"]["required"]) == {"image"}
    ref = "#/components/schemas/"
    errors = {"200", "400", "401", "413", "415", "422", "503"}
    assert set(score["responses"]) == errors | {"501"}  # explain=true without generation
    assert [p["name"] for p in score["parameters"]] == ["explain"]
    for op, ok in ((score, "ScoreResult"), (batch, "BatchResult")):
        assert set(op["responses"]) <= errors | {"501"}
        assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"] == ref + ok
        for status in ("400", "401", "413", "415", "422", "503"):
            schema = op["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": ref + "ErrorBody"}, status
        assert "Retry-After" in op["responses"]["503"]["headers"]
        assert op["security"] == [{"bearer": []}, {"apiKey": []}]
    assert schemas["ErrorBody"]["required"] == ["detail"]
    assert set(paths["/v1/models"]["get"]["responses"]) == {"200", "401", "503"}
    assert set(paths["/readyz"]["get"]["responses"]) == {"200", "503"}
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "apiKey"}


def test_schemathesis_finds_no_failure(setup, tmp_path):
    """`st run --checks all` over every route with the key: no failed check, no 5xx, and at
    least 1,000 requests (counted from its HAR report). Positive data may be refused 400/413:
    a JSON schema cannot say "a decodable image" or the deployment's byte limits."""
    url, _ = setup
    (tmp_path / "schemathesis.toml").write_text(
        '[checks.positive_data_acceptance]\nexpected-statuses = ["2xx", "400", "413"]\n'
    )
    har = tmp_path / "run.har"
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("st")),
            "--config-file",
            str(tmp_path / "schemathesis.toml"),
            "run",
            f"{url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",  # per operation and phase: ~1,250 requests, however slow the machine
            "500",
            "--seed",
            "8",
            "--workers",
            "2",
            "--request-timeout",
            "60",
            "--header",
            f"Authorization: Bearer {API_KEY}",
            "--report",
            "har",
            "--report-har-path",
            str(har),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    tail = proc.stdout[-6000:] + proc.stderr[-2000:]
    entries = json.loads(har.read_text())["log"]["entries"]
    statuses = [e["response"]["status"] for e in entries]
    paths = {httpx.URL(e["request"]["url"]).path for e in entries}
    print(f"schemathesis: {len(entries)} requests, statuses {sorted(set(statuses))}")
    print(proc.stdout[-1200:])
    assert proc.returncode == 0, tail
    assert len(entries) >= 1000, (len(entries), tail)
    assert not [s for s in statuses if s >= 500], tail
    assert {"/v1/score", "/v1/score/batch", "/v1/models", "/healthz", "/readyz"} <= paths
