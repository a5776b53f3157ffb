"""`hazard deploy` end to end against stand-ins (tests/helpers/deploy.py,
tests/helpers/deploy_rig.py).

The real command runs in-process: the real `kubernetes` client talks HTTP to a stand-in API
server per cluster (RayService status scripted), helm is a scripted stand-in on PATH that logs
its argv, and the health and smoke requests go to a real HTTP server per cluster. Timeouts and
intervals are fractions of a second, so the file runs in a few seconds.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.helpers.deploy import (
    RELEASE,
    fail_on,
    helm_calls,
    rayservice,
    releases,
    render,
    seed_release,
    served,
    write_kubeconfig,
)
from tests.helpers.deploy_rig import (
    CHART,
    CONTEXTS,
    KEY_ENV,
    SMOKE_PNG,
    Rig,
    before_upgrade,
    deploy,
    helm,
    make_rig,
    row,
    upgrade,
)


@pytest.fixture
def rig(tmp_path: Path, monkeypatch):
    """Two clusters (staging, prod-eu), one wave each."""
    rig = make_rig(tmp_path, monkeypatch, ["staging", "prod-eu"])
    yield rig
    rig.close()


def test_rollout_over_two_clusters_upgrades_both_in_order(rig: Rig, capsys):
    seed_release(rig.state, CONTEXTS["staging"], revisions=4)
    seed_release(rig.state, CONTEXTS["prod-eu"], revisions=7)
    # staging: the operator first lags a generation, then runs a blue/green upgrade, then is done
    rig.kube["staging"].script(
        RELEASE,
        rayservice(generation=5, observed=4),
        rayservice(generation=5, observed=5, upgrading="True", pending="hc-new"),
        rayservice(generation=5, observed=5, cluster="hc-new"),
    )
    rig.kube["staging"].add_pods("hc-new", ready=3)
    rig.kube["prod-eu"].script(
        RELEASE,
        rayservice(generation=8, observed=8, app_status="DEPLOYING"),
        rayservice(generation=8, observed=8),
    )
    # a 503 between 200s resets the count: 5 requests are needed for 3 in a row
    rig.serve["staging"].readyz = [200, 503, 200, 200, 200]

    code = deploy(rig, "--set", "image.tag=0.2.0")
    out = capsys.readouterr().out

    assert code == 0, out
    for cluster in rig.kube:
        assert rig.calls(cluster) == [
            *before_upgrade(rig, cluster, "image.tag=0.2.0", first=cluster == "staging"),
            upgrade(rig, cluster, "image.tag=0.2.0"),
        ]
    assert [c["argv"][-1] for c in helm_calls(rig.log)][:4] == [CONTEXTS["staging"]] * 4
    assert {c["driver"] for c in helm_calls(rig.log)} == {"configmap"}
    assert re.search(r"^staging\s+4\s+5\s+ok .*\s3/3\s.*upgraded$", row(out, "staging"))
    assert re.search(r"^prod-eu\s+7\s+8\s+ok .*upgraded$", row(out, "prod-eu"))
    state = releases(rig.state)
    assert state[rig.key("staging")][-1]["manifest"] == render(
        RELEASE, str(rig.values["staging"]), ["image.tag=0.2.0"]
    )
    assert rig.serve["staging"].paths("GET").count("/readyz") == 5
    assert rig.serve["prod-eu"].paths("GET").count("/readyz") == 3
    for cluster in rig.kube:  # the version gate: 3 answers in a row naming the rendered versions
        assert rig.serve[cluster].paths("GET").count("/v1/models") == 3
    for cluster in rig.kube:  # one smoke request each, the bundled image, with the key
        (upload,) = rig.serve[cluster].uploads()
        assert SMOKE_PNG in upload
    assert rig.kube["staging"].rayservice_gets() >= 3
    assert "UpgradeInProgress (BothActivePendingClustersExist)" in out
    assert "operator has not reconciled generation 5 yet" in out


def test_failed_gate_on_second_cluster_rolls_it_back_and_keeps_the_first(rig: Rig, capsys):
    seed_release(rig.state, CONTEXTS["staging"], revisions=4)
    seed_release(rig.state, CONTEXTS["prod-eu"], revisions=7)
    rig.kube["staging"].script(RELEASE, rayservice(generation=5, observed=5))
    rig.kube["prod-eu"].script(RELEASE, rayservice(generation=8, observed=8))
    rig.kube["prod-eu"].warnings = [("hc-worker-0", "BackOff", "Back-off restarting container")]
    rig.serve["prod-eu"].readyz = [200, 200, 503]  # never three in a row
    rig.timeouts(health=3)  # staging passes at once; prod-eu fails when it runs out

    code = deploy(rig, "--set", "image.tag=0.2.0")
    out = capsys.readouterr().out

    assert code == 3, out
    assert rig.calls("prod-eu")[-3:] == [
        helm("prod-eu", "rollback", RELEASE, "7"),
        helm("prod-eu", "get", "manifest", RELEASE),
        helm("prod-eu", "history", RELEASE, "--output", "json"),
    ]
    assert rig.calls("staging")[3] == upgrade(rig, "staging", "image.tag=0.2.0")
    assert not [c for c in rig.calls("staging") if c[1] == "rollback"]
    state = releases(rig.state)
    staging, prod = state[rig.key("staging")], state[rig.key("prod-eu")]
    assert [(r["revision"], r["status"]) for r in staging][-1] == (5, "deployed")
    assert "0.2.0" in staging[-1]["manifest"]
    assert [(r["revision"], r["status"]) for r in prod][-3:] == [
        (7, "superseded"),
        (8, "superseded"),
        (9, "deployed"),
    ]
    assert prod[-1]["manifest"] == prod[6]["manifest"]  # revision 9 is revision 7 again
    assert re.search(r"^staging\s+4\s+5\s.*upgraded$", row(out, "staging"))
    prod_row = row(out, "prod-eu")
    assert re.search(
        r"^prod-eu\s+7\s+9\s+ok .*FAIL .*rolled back to revision 7, healthy$", prod_row
    )
    assert re.search(r"^prod-eu health: 0/3 in a row after \d+s; last: HTTP 503", out, re.M)
    assert "Pod/hc-worker-0 BackOff: Back-off restarting container" in out
    assert rig.serve["prod-eu"].uploads() == []  # no smoke request after a failed health gate


def test_rayservice_never_running_rolls_back_and_leaves_later_clusters_untouched(rig: Rig, capsys):
    seed_release(rig.state, CONTEXTS["staging"], revisions=2)
    seed_release(rig.state, CONTEXTS["prod-eu"], revisions=7)
    rig.kube["staging"].script(
        RELEASE, rayservice(generation=3, observed=3, app_status="DEPLOYING")
    )
    rig.timeouts(running=0.5)

    code = deploy(rig, "--set", "image.tag=0.2.0")
    out = capsys.readouterr().out

    assert code == 3, out
    assert rig.calls("staging") == [
        *before_upgrade(rig, "staging", "image.tag=0.2.0"),
        upgrade(rig, "staging", "image.tag=0.2.0"),
        helm("staging", "rollback", RELEASE, "2"),
        helm("staging", "get", "manifest", RELEASE),
        helm("staging", "history", RELEASE, "--output", "json"),
    ]
    assert rig.calls("prod-eu") == []
    assert rig.kube["prod-eu"].rayservice_gets() == 0 and rig.serve["prod-eu"].requests == []
    assert rig.kube["prod-eu"].leases.get() is None  # its lock taken at the start, released
    # no health check before the apps run; after the rollback, the previous version's gates
    assert rig.serve["staging"].paths() == ["/readyz"] * 3 + ["/v1/models"] * 3
    assert re.search(
        r"^staging running: not running after \d+s: app hazard-cascade DEPLOYING \(last status: "
        r"hazard-cascade: generation 3/3 Ready=True\(NonZeroServeEndpoints\) ",
        out,
        re.M,
    )
    assert "app hazard-cascade DEPLOYING" in out
    assert re.search(r"^prod-eu\s+-\s+-\s.*not started: the rollout stopped$", row(out, "prod-eu"))


def test_new_generation_running_but_old_versions_served_fails_the_version_gate(rig, capsys):
    """KubeRay reports the new generation with the old app still RUNNING, and the old replicas
    answer /readyz and /v1/models: the version gate fails and the cluster is rolled back."""
    seed_release(rig.state, CONTEXTS["staging"], revisions=4)
    rig.kube["staging"].script(RELEASE, rayservice(generation=5, observed=5))
    rig.serve["staging"].models = [served(base="1.0.0")]  # the old version, throughout
    rig.timeouts(health=0.5)  # the version gate shares the health gate's streak and timeout

    code = deploy(rig, "--set", "serve.app.args.base.version=2.0.0")
    out = capsys.readouterr().out

    assert code == 3, out
    assert rig.calls("staging")[-3:] == [
        helm("staging", "rollback", RELEASE, "4"),
        helm("staging", "get", "manifest", RELEASE),
        helm("staging", "history", RELEASE, "--output", "json"),
    ]
    assert re.search(
        r"^staging version: 0/3 in a row after \d+s; last: serving base hazard-base 1\.0\.0 "
        r"\(expected hazard-base 2\.0\.0\)$",
        out,
        re.M,
    )
    assert rig.serve["staging"].uploads() == []  # no smoke request from the old replicas
    assert rig.calls("prod-eu") == []


def test_the_version_gate_waits_for_the_new_versions_then_smoke_checks_them(rig, capsys):
    """Old versions for two reads, then the new ones: 3 new answers in a row pass; a smoke
    answer scored by the old base fails."""
    seed_release(rig.state, CONTEXTS["staging"], revisions=4)
    rig.kube["staging"].script(RELEASE, rayservice(generation=5, observed=5))
    new = served(base="2.0.0")
    rig.serve["staging"].models = [served(), served(), new]
    old_answer = dict(rig.serve["staging"].answer)  # scored by base 1.0.0
    rig.serve["staging"].answer = {**old_answer, "models": new[:1]}

    code = deploy(rig, "--only", "staging", "--set", "serve.app.args.base.version=2.0.0")
    out = capsys.readouterr().out
    assert code == 0, out
    assert rig.serve["staging"].paths("GET").count("/v1/models") == 5  # 2 old + 3 in a row
    assert re.search(r"^staging\s+4\s+5\s+ok .*upgraded$", row(out, "staging"))

    rig.serve["staging"].answer = old_answer
    rig.serve["staging"].after_rollback["models"] = [new]  # revision 5 served base 2.0.0
    code = deploy(rig, "--only", "staging", "--set", "serve.app.args.base.version=2.0.0")
    out = capsys.readouterr().out
    assert code == 3, out
    assert "staging smoke: scored by base hazard-base 1.0.0 (expected hazard-base 2.0.0)" in out


def test_first_install_that_fails_is_uninstalled(rig: Rig, capsys):
    invalid = rayservice(generation=1, observed=1, ready="False", ready_reason="ValidationFailed")
    rig.kube["staging"].script(RELEASE, invalid)

    code = deploy(rig, "--only", "staging")
    out = capsys.readouterr().out

    assert code == 3, out
    assert rig.calls("staging")[-3:] == [
        helm("staging", "get", "manifest", RELEASE),  # the RayServices the uninstall removes
        helm("staging", "uninstall", RELEASE),
        helm("staging", "history", RELEASE, "--output", "json"),
    ]
    assert rig.key("staging") not in releases(rig.state)
    assert "Ready=False (ValidationFailed)" in out  # terminal: no wait for the timeout
    # the gate's one read, the pods', then the check that the uninstall removed it (404)
    assert rig.kube["staging"].rayservice_gets() == 3
    assert re.search(r"^staging\s+-\s+-\s.*uninstalled \(there was no previous revision\)$",
                     row(out, "staging"))  # fmt: skip


def test_failed_rollback_exits_4(rig: Rig, capsys):
    seed_release(rig.state, CONTEXTS["staging"], revisions=4)
    rig.kube["staging"].script(RELEASE, rayservice(generation=5, observed=5))
    rig.serve["staging"].answer = {"risk_level": "low_risk"}  # not a valid score
    fail_on(rig.state, CONTEXTS["staging"], "rollback")

    code = deploy(rig)
    out = capsys.readouterr().out

    assert code == 4, out
    assert rig.calls("staging")[-1] == helm("staging", "rollback", RELEASE, "4")
    assert "staging smoke: invalid score: probabilities must name exactly" in out
    assert "staging rollback: " in out and "rollback failed: Unauthorized" in out
    assert re.search(r"^staging\s+4\s+5\s.*rollback FAILED$", row(out, "staging"))
    assert rig.calls("prod-eu") == []


def test_api_server_refusing_the_deployer_fails_fast(rig: Rig, capsys):
    """A 403 on the RayService ends the status gate at once; the rollback runs but cannot be
    checked: exit 6."""
    seed_release(rig.state, CONTEXTS["staging"], revisions=1)
    rig.kube["staging"].deny = {"rayservices"}

    code = deploy(rig, "--only", "staging")
    out = capsys.readouterr().out

    assert code == 6, out
    assert "HTTP 403" in out and "k8s/rbac.yaml" in out
    assert rig.calls("staging")[-3][1:4] == ["rollback", RELEASE, "1"]
    assert "staging rollback-running: get rayservice hazard-cascade: HTTP 403" in out
    assert "rolled back to revision 1, NOT healthy (rollback-running)" in out


def test_a_refused_token_stops_at_the_lock_before_any_change(rig: Rig, capsys):
    seed_release(rig.state, CONTEXTS["staging"], revisions=1)
    rig.kube["prod-eu"].token = "someone-else"  # the kubeconfig's token is now refused

    code = deploy(rig)
    out = capsys.readouterr().out

    assert code == 5, out
    assert "[prod-eu] cannot take the rollout lock: get lease" in out and "HTTP 401" in out
    assert "k8s/rbac.yaml" in out
    assert [c[1] for c in rig.calls()] == []  # no helm call at all, on either cluster
    assert rig.kube["staging"].leases.get() is None  # staging's lock given back


def test_dry_run_prints_the_diff_and_changes_nothing(rig: Rig, capsys, monkeypatch):
    seed_release(rig.state, CONTEXTS["staging"], revisions=4)
    monkeypatch.delenv(KEY_ENV)  # a dry run needs no API key
    before = rig.state.read_text()

    code = deploy(rig, "--dry-run", "--set", "image.tag=0.2.0")
    out = capsys.readouterr().out

    assert code == 0, out
    template = ["template", RELEASE, CHART, "--values"]
    assert rig.calls("staging") == [
        helm("staging", "history", RELEASE, "--output", "json"),
        helm("staging", "get", "manifest", RELEASE),
        helm("staging", *template, str(rig.values["staging"]), "--set", "image.tag=0.2.0",
             "--no-hooks", "--skip-tests", "--is-upgrade"),
    ]  # fmt: skip
    assert rig.calls("prod-eu") == [
        helm("prod-eu", "history", RELEASE, "--output", "json"),
        helm("prod-eu", *template, str(rig.values["prod-eu"]), "--set", "image.tag=0.2.0",
             "--no-hooks", "--skip-tests"),
    ]  # fmt: skip
    assert rig.state.read_text() == before
    assert all(s.requests == [] for s in [*rig.kube.values(), *rig.serve.values()])
    image = "ghcr.io/hazard-cascade/hazard-cascade"
    assert "--- hazard-cascade revision 4\n+++ hazard-cascade (would apply)" in out
    assert re.search(rf"^-\s+image: {image}:0\.1\.0$", out, re.M)
    assert re.search(rf"^\+\s+image: {image}:0\.2\.0$", out, re.M)
    assert "--- hazard-cascade (not installed)" in out
    assert "would run: helm upgrade --install hazard-cascade" in out
    assert "/v1/models serving base hazard-base 1.0.0, specialist hazard-specialist 1.0.0 x3" in out


def test_bad_clusters_file_is_a_clear_usage_error(rig: Rig, capsys):
    raw = yaml.safe_load(rig.clusters_file.read_text())
    raw["clusters"][1]["serviceUrl"] = "hazard.example.com/readyz"
    raw["clusters"][0]["healthUrl"] = "https://old.example.com/readyz"
    rig.clusters_file.write_text(yaml.safe_dump(raw))

    code = deploy(rig)
    err = capsys.readouterr().err

    assert code == 2
    assert "clusters.0.healthUrl: Extra inputs are not permitted" in err
    assert "clusters.1.serviceUrl: String should match pattern" in err
    assert helm_calls(rig.log) == []


@pytest.mark.parametrize(
    "change, message",
    [
        ("unset-key", f"${KEY_ENV} is not set"),
        ("unknown-context", "kube context hazard-prod-eu not in the kubeconfig"),
        ("only-unknown", "no cluster named nope (clusters: staging, prod-eu)"),
        ("bad-set", "--set takes KEY=VALUE, got image.tag"),
    ],
)
def test_usage_errors_stop_before_any_cluster_is_touched(rig, capsys, monkeypatch, change, message):
    args = []
    if change == "unset-key":
        monkeypatch.delenv(KEY_ENV)
    elif change == "unknown-context":
        write_kubeconfig(Path(rig.dir / "kubeconfig"), {"hazard-staging": rig.kube["staging"]})
    elif change == "only-unknown":
        args = ["--only", "nope"]
    else:
        args = ["--set", "image.tag"]

    code = deploy(rig, *args)

    assert code == 2
    assert message in capsys.readouterr().err
    assert helm_calls(rig.log) == []
