"""`hazard deploy` fleet policy against the stand-ins: waves with parallel clusters and soak,
failing fast, verified rollback, per-cluster `set:`, the JSON report and `--resume`.

The same rig as test_deploy.py (real `kubernetes` client and HTTP, helm stand-in on PATH);
timeouts and intervals are fractions of a second.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers.deploy import (
    RELEASE,
    rayservice,
    releases,
    seed_release,
)
from tests.helpers.deploy_rig import CONTEXTS, Rig, deploy, helm, make_rig, row, upgrade

FLEET = ["staging", "prod-eu", "prod-us"]
WAVES = [
    {"name": "canary", "clusters": ["staging"], "soakSeconds": 0.4},
    {"name": "prod", "clusters": ["prod-eu", "prod-us"], "maxParallel": 2},
]


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch):
    """Three clusters in two waves: staging (soak 0.4 s), then prod-eu and prod-us together."""
    rig = make_rig(tmp_path, monkeypatch, FLEET, WAVES)
    for n, name in enumerate(FLEET):
        seed_release(rig.state, CONTEXTS[name], revisions=3 + n)
        rig.kube[name].script(RELEASE, rayservice(generation=9, observed=9))
    yield rig
    rig.close()


@pytest.fixture
def rig(tmp_path: Path, monkeypatch):
    rig = make_rig(tmp_path, monkeypatch, ["staging"])
    seed_release(rig.state, CONTEXTS["staging"], revisions=4)
    yield rig
    rig.close()


def is_upgrade(argv: list[str]) -> bool:
    """A real `helm upgrade`, not its server-side dry run."""
    return argv[1] == "upgrade" and "--dry-run=server" not in argv


def upgraded_at(rig: Rig, cluster: str) -> int:
    """Index of `cluster`'s `helm upgrade` among all helm calls."""
    calls = rig.calls()
    return next(i for i, c in enumerate(calls) if is_upgrade(c) and CONTEXTS[cluster] in c)


def test_two_waves_the_second_in_parallel_after_the_canary_soaked(fleet: Rig, capsys):
    # each prod cluster needs 12 readiness answers (9 x 503 first): long enough to overlap
    for name in ("prod-eu", "prod-us"):
        fleet.serve[name].readyz = [503] * 9 + [200]
    report = fleet.dir / "out" / "rollout.json"

    code = deploy(fleet, "--set", "image.tag=0.2.0", "--report", str(report))
    out = capsys.readouterr().out

    assert code == 0, out
    # the canary's upgrade, gates and soak all came before either prod cluster started
    soak_end = max(fleet.serve["staging"].times)
    first_prod = min(fleet.serve[n].times[0] for n in ("prod-eu", "prod-us"))
    assert soak_end < first_prod
    assert upgraded_at(fleet, "staging") < min(
        upgraded_at(fleet, "prod-eu"), upgraded_at(fleet, "prod-us")
    )
    # the soak kept checking both /readyz and /v1/models after the gates (3 + 3 + >= 2 rounds)
    staging = fleet.serve["staging"].paths("GET")
    assert staging.count("/readyz") >= 5 and staging.count("/v1/models") >= 5
    # prod-eu and prod-us ran at the same time: each one's requests span the other's start
    eu, us = fleet.serve["prod-eu"].times, fleet.serve["prod-us"].times
    assert eu[0] < us[-1] and us[0] < eu[-1]
    doc = json.loads(report.read_text())
    assert doc["exit"] == {"code": 0, "name": "OK"}
    assert doc["sets"] == ["image.tag=0.2.0"]
    assert [w["clusters"] for w in doc["waves"]] == [["staging"], ["prod-eu", "prod-us"]]
    expected_revisions = {"staging": (3, 4), "prod-eu": (4, 5), "prod-us": (5, 6)}
    for name, (before, after) in expected_revisions.items():
        c = doc["clusters"][name]
        assert (c["before"], c["after"], c["outcome"]) == (before, after, "upgraded")
        steps = ["operator", "lock", "dry-run", "upgrade", "running", "health", "version"]
        steps.append("smoke")
        assert list(c["steps"]) == steps + (["soak"] if name == "staging" else [])
        assert all(s["ok"] for s in c["steps"].values())
    assert doc["clusters"]["staging"]["steps"]["soak"]["seconds"] >= 0.4
    assert "== wave prod: prod-eu, prod-us (up to 2 at once, soak 0s)" in out
    for name in FLEET:
        assert releases(fleet.state)[fleet.key(name)][-1]["status"] == "deployed"


def test_deploy_failed_rolls_back_within_the_fail_fast_bound(rig: Rig, capsys):
    """The new cluster's app is DEPLOY_FAILED: no waiting out the 30 s status timeout."""
    failing = rayservice(
        generation=5, observed=5, upgrading="True", pending="hc-new",
        pending_app_status="DEPLOY_FAILED",
    )  # fmt: skip
    rig.kube["staging"].script(RELEASE, failing)
    rig.edit(failFast={"seconds": 0.5})

    start = time.monotonic()
    code = deploy(rig, "--set", "image.tag=0.2.0")
    elapsed = time.monotonic() - start
    out = capsys.readouterr().out

    assert code == 3, out
    assert elapsed < 10  # the status gate's timeout is 30 s
    assert re.search(
        r"^staging running: failing for [01]s \(failFast 0\.5s\): hazard-cascade: app "
        r"hazard-cascade DEPLOY_FAILED \(pending cluster hc-new\)$",
        out,
        re.M,
    )
    assert rig.calls("staging")[-3][1:4] == ["rollback", RELEASE, "4"]
    assert row(out, "staging").endswith("rolled back to revision 4, healthy")


def test_a_brief_failing_state_shorter_than_the_bound_does_not_roll_back(rig: Rig, capsys):
    blip = rayservice(generation=5, observed=5, app_status="UNHEALTHY")
    rig.kube["staging"].script(RELEASE, blip, blip, blip, rayservice(generation=5, observed=5))
    rig.edit(failFast={"seconds": 5})

    code = deploy(rig)
    out = capsys.readouterr().out

    assert code == 0, out
    assert "app hazard-cascade UNHEALTHY" in out


def test_a_new_pods_crash_loop_fails_fast_and_other_pods_are_ignored(rig: Rig, capsys):
    upgrading = rayservice(generation=5, observed=5, upgrading="True", pending="hc-new")
    rig.kube["staging"].script(RELEASE, upgrading)
    rig.kube["staging"].warnings = [
        ("batch-job-x", "BackOff", "Back-off restarting failed container main"),
        ("hc-new-head-8x2kq", "BackOff", "Back-off restarting failed container ray-head"),
        ("hc-new-gpu-worker-q1", "Failed", "Error: ImagePullBackOff"),
    ]
    rig.edit(failFast={"seconds": 0})

    code = deploy(rig)
    out = capsys.readouterr().out

    assert code == 3, out
    (line,) = [ln for ln in out.splitlines() if ln.startswith("staging running: ")]
    assert line == (
        "staging running: failing for 0s (failFast 0s): "
        "Pod/hc-new-gpu-worker-q1 Failed: Error: ImagePullBackOff; "
        "Pod/hc-new-head-8x2kq BackOff: Back-off restarting failed container ray-head"
    )


def test_a_rollback_whose_gates_fail_exits_6(rig: Rig, capsys):
    rig.kube["staging"].script(RELEASE, rayservice(generation=5, observed=5))
    rig.serve["staging"].answer = {"risk_level": "low_risk"}  # the smoke fails
    rig.serve["staging"].after_rollback["readyz"] = [503]  # and the old version is down too
    rig.timeouts(health=0.5)

    code = deploy(rig)
    out = capsys.readouterr().out

    assert code == 6, out
    assert row(out, "staging").endswith("rolled back to revision 4, NOT healthy (rollback-health)")
    assert "staging rollback-health: 0/3 in a row after" in out
    assert "exit 6  a cluster was rolled back but the previous version did not pass" in out


def test_a_global_set_conflicting_with_a_cluster_set_is_refused(rig: Rig, capsys):
    raw = yaml.safe_load(rig.clusters_file.read_text())
    raw["clusters"][0]["set"] = {"image.tag": "0.2.0-canary", "serve.app.args.dtype": "bfloat16"}
    rig.clusters_file.write_text(yaml.safe_dump(raw))

    assert deploy(rig, "--set", "image.tag=0.2.0") == 2
    err = capsys.readouterr().err
    assert "--set image.tag=0.2.0 conflicts with clusters.staging.set image.tag=0.2.0-canary" in err
    assert rig.calls("staging") == []

    rig.kube["staging"].script(RELEASE, rayservice(generation=5, observed=5))
    assert deploy(rig, "--set", "s3.region=eu-west-1") == 0, capsys.readouterr().out
    sets = ["s3.region=eu-west-1", "image.tag=0.2.0-canary", "serve.app.args.dtype=bfloat16"]
    assert rig.calls("staging")[2:4] == [
        upgrade(rig, "staging", *sets, dry=True),
        upgrade(rig, "staging", *sets),
    ]


def test_resume_continues_a_stopped_rollout_from_its_report(fleet: Rig, capsys):
    fleet.edit(waves=[{**w, "maxParallel": 1} for w in WAVES])
    fleet.serve["prod-eu"].readyz = [503]  # prod-eu fails its health gate
    fleet.timeouts(health=0.5)
    report = fleet.dir / "rollout.json"

    code = deploy(fleet, "--set", "image.tag=0.2.0", "--report", str(report))
    out = capsys.readouterr().out

    assert code == 3, out
    doc = json.loads(report.read_text())
    outcomes = {n: (c["outcome"], c["after"]) for n, c in doc["clusters"].items()}
    assert outcomes == {
        "staging": ("upgraded", 4),
        "prod-eu": ("rolled back to revision 4, healthy", 6),
        "prod-us": ("not started: the rollout stopped", None),
    }
    assert "left upgraded by this stopped rollout: staging (revision 4)" in out

    assert deploy(fleet, "--set", "image.tag=0.3.0", "--resume", str(report)) == 2
    assert "a resumed rollout must deploy the same values" in capsys.readouterr().err
    overlay = fleet.values["prod-us"].read_text()
    fleet.values["prod-us"].write_text(overlay + "extra: 1\n")
    assert deploy(fleet, "--set", "image.tag=0.2.0", "--resume", str(report)) == 2
    assert "--resume: values/prod-us changed since" in capsys.readouterr().err
    fleet.values["prod-us"].write_text(overlay)

    fleet.serve["prod-eu"].readyz = [200]  # fixed
    calls_before = len(fleet.calls())
    code = deploy(fleet, "--set", "image.tag=0.2.0", "--resume", str(report))
    out = capsys.readouterr().out

    assert code == 0, out
    resumed = fleet.calls()[calls_before:]
    assert helm("staging", "history", RELEASE, "--output", "json") in resumed
    assert not [c for c in resumed if c[1] == "upgrade" and CONTEXTS["staging"] in c]
    assert [c[-1] for c in resumed if is_upgrade(c)] == ["hazard-prod-eu", "hazard-prod-us"]
    doc = json.loads(report.read_text())
    assert doc["clusters"]["staging"]["outcome"] == "upgraded (earlier run, revision 4)"
    assert {n: c["after"] for n, c in doc["clusters"].items()} == {
        "staging": 4, "prod-eu": 7, "prod-us": 6,
    }  # fmt: skip
    assert doc["exit"]["code"] == 0


def test_dry_run_prints_each_value_that_differs_from_the_last_wave(fleet: Rig, capsys):
    fleet.values["staging"].write_text(
        yaml.safe_dump({"s3": {"region": "eu-west-1"}, "serve": {"worker": {"replicas": 1}}})
    )
    fleet.values["prod-eu"].write_text(
        yaml.safe_dump({"s3": {"region": "eu-west-1"}, "serve": {"worker": {"replicas": 4}}})
    )
    raw = yaml.safe_load(fleet.clusters_file.read_text())
    raw["clusters"][0]["set"] = {"serve.app.args.engine": "vllm"}
    fleet.clusters_file.write_text(yaml.safe_dump(raw))

    code = deploy(fleet, "--dry-run", "--set", "image.tag=0.2.0")
    out = capsys.readouterr().out

    assert code == 0, out
    lines = out.splitlines()
    start = lines.index("[staging] values that differ from prod-eu (last wave prod):")
    assert lines[start + 1 : start + 3] == [
        "  serve.app.args.engine: vllm (prod-eu: (chart default))",
        "  serve.worker.replicas: 1 (prod-eu: 4)",
    ]
    assert "[prod-eu] values that differ" not in out  # the last wave is the reference
    assert "  canary: staging (up to 1 at once, soak 0.4s;" in out


def test_a_second_concurrent_rollout_is_refused_by_the_lease(fleet: Rig, capsys):
    """The first rollout holds every cluster's Lease while staging is still coming up; a
    second one started meanwhile exits 7 naming the holder and changes nothing."""
    deploying = rayservice(generation=9, observed=9, app_status="DEPLOYING")
    fleet.kube["staging"].script(RELEASE, deploying)  # until the second rollout has been refused
    first: dict[str, int] = {}
    thread = threading.Thread(target=lambda: first.update(code=deploy(fleet)), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while fleet.kube["staging"].rayservice_gets() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # the first rollout has locked all three and upgraded staging
    holder = fleet.kube["prod-us"].leases.get()["spec"]["holderIdentity"]
    calls = len(fleet.calls())

    second = deploy(fleet, "--set", "image.tag=0.3.0")
    fleet.kube["staging"].script(RELEASE, rayservice(generation=9, observed=9))
    thread.join(60)
    out = capsys.readouterr().out

    assert second == 7, out
    assert first == {"code": 0}, out
    assert re.search(
        rf"\[staging\] cannot take the rollout lock: .*held by {re.escape(holder)}", out
    )
    assert not [c for c in fleet.calls()[calls:] if "0.3.0" in " ".join(c)]  # no helm call
    assert all(fleet.kube[n].leases.get() is None for n in FLEET)  # the first released all


def test_an_operator_outside_the_supported_range_is_refused_before_any_change(fleet: Rig, capsys):
    fleet.kube["prod-eu"].operator_image = "quay.io/kuberay/operator:v1.4.2"

    code = deploy(fleet, "--set", "image.tag=0.2.0")
    out = capsys.readouterr().out

    assert code == 8, out
    assert "prod-eu operator: KubeRay operator 1.4.2" in out and "NOT supported" in out
    assert "prod-eu operator: KubeRay operator 1.4.2 (image" in out
    assert ">=1.5.0" in out and "<1.8.0" in out
    assert not [c for c in fleet.calls() if c[1] == "upgrade"]  # no cluster changed, no dry run
    assert row(out, "prod-eu").endswith("not started: operator failed")
    for name in ("staging", "prod-us"):  # checked and fine, but the rollout never started
        assert row(out, name).endswith("not started: a preflight check failed")


def test_sigterm_stops_the_rollout_releases_the_locks_and_leaves_a_resumable_report(
    fleet: Rig, capsys
):
    """`hazard deploy` as its own process, SIGTERM while staging comes up: exit 130, no other
    cluster touched, every Lease released, and the report says where it stopped."""
    deploying = rayservice(generation=9, observed=9, app_status="DEPLOYING")
    fleet.kube["staging"].script(RELEASE, deploying)  # never runs
    fleet.timeouts(health=0.5)  # for the resumed run (a resume must keep the clusters file)
    report = fleet.dir / "rollout.json"
    argv = ["deploy", "--clusters", str(fleet.clusters_file), "--report", str(report)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hazard.cli", *argv], stdout=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while fleet.kube["staging"].rayservice_gets() < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)

    assert proc.returncode == 130, out
    doc = json.loads(report.read_text())
    assert doc["exit"] == {"code": 130, "name": "INTERRUPTED"}
    staging = doc["clusters"]["staging"]
    assert staging["after"] == 4 and "upgrade" in staging["steps"]
    assert "running" not in staging["steps"]  # stopped inside it
    assert doc["clusters"]["prod-eu"]["outcome"] == "not started"
    assert not [c for c in fleet.calls() if is_upgrade(c) and CONTEXTS["staging"] not in c]
    assert all(fleet.kube[n].leases.get() is None for n in FLEET)

    # resumed: staging's revision 4 never passed its gates, so its failure goes back to 3
    fleet.serve["staging"].readyz = [503]
    fleet.kube["staging"].script(RELEASE, rayservice(generation=10, observed=10))
    code = deploy(fleet, "--resume", str(report))
    out = capsys.readouterr().out
    assert code == 3, out
    assert "a failure rolls back to revision 3, as recorded before it" in out
    assert fleet.calls("staging")[-3] == helm("staging", "rollback", RELEASE, "3")


def test_the_server_side_dry_run_refusal_stops_the_cluster_before_its_upgrade(rig: Rig, capsys):
    """Each rendered object goes to the API server as a dry-run server-side apply with strict
    field validation; a refusal (here a webhook's) leaves the cluster unchanged: exit 5."""
    kube = rig.kube["staging"]
    kube.refuse["RayService"] = (422, 'admission webhook "vrayservice.kb.io" denied the request')

    code = deploy(rig, "--set", "image.tag=0.2.0")
    out = capsys.readouterr().out

    assert code == 5, out
    assert (
        "staging dry-run: the API server refuses: RayService/hazard-cascade: HTTP 422 "
        'admission webhook "vrayservice.kb.io" denied the request'
    ) in out
    assert not [c for c in rig.calls() if is_upgrade(c)]
    assert [(o["kind"], q["dryRun"], q["fieldValidation"]) for _, o, q in kube.dry_runs] == [
        ("ServiceAccount", ["All"], ["Strict"]),
        ("RayService", ["All"], ["Strict"]),
    ]
    sent = kube.dry_runs[1][1]  # what was dry-run is what helm rendered for the upgrade
    assert sent["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "image"
    ].endswith(":0.2.0")

    kube.refuse.clear()
    rig.kube["staging"].script(RELEASE, rayservice(generation=5, observed=5))
    report = rig.dir / "rollout.json"
    assert deploy(rig, "--set", "image.tag=0.2.0", "--report", str(report)) == 0
    step = json.loads(report.read_text())["clusters"]["staging"]["steps"]["dry-run"]
    assert step["ok"] and step["detail"] == "the API server admits all 2 objects (dry run)"


def test_the_smoke_request_retries_503_within_its_timeout(rig: Rig, capsys):
    """A production app refusing under load (503 + Retry-After) is not a failed release; a
    smoke request that only ever gets 503s within its timeout is."""
    rig.kube["staging"].script(RELEASE, rayservice(generation=5, observed=5))
    rig.serve["staging"].refusals = 2

    assert deploy(rig) == 0, capsys.readouterr().out
    assert len(rig.serve["staging"].uploads()) == 3  # two 503s, then the score

    rig.serve["staging"].refusals = 10**6
    rig.edit(smoke={"apiKeyEnv": "HC_DEPLOY_TEST_KEY", "timeoutSeconds": 0.5})
    code = deploy(rig)
    out = capsys.readouterr().out
    assert code == 3, out
    assert re.search(r"^staging smoke: no answer but 503/connection errors in \d+ tries; last: "
                     r"HTTP 503 ", out, re.M)  # fmt: skip
