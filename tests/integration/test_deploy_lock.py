"""The rollout lock (hazard/deploy/lock.py) against the stand-in API server's Leases.

The real `kubernetes` client, built from a kubeconfig as `KubeReader` builds it, talks HTTP
to `KubeStandIn`, whose `LeaseStore` checks resourceVersions as the API server does. Lease
durations are a few seconds, so the file runs in about ten.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from kubernetes import client, config

from hazard.deploy.cluster import KubeError
from hazard.deploy.lock import (
    LockHeld,
    LockLost,
    RolloutLock,
    holder_identity,
    lease_name,
    micro_time,
)
from tests.helpers.deploy import _MICRO_TIME, NAMESPACE, RELEASE, KubeStandIn, write_kubeconfig

ALICE = "alice@ci-1 pid 101 r-alice"
BOB = "bob@ci-2 pid 202 r-bob"


@pytest.fixture
def kube():
    server = KubeStandIn("lock-token")
    yield server
    server.close()


@pytest.fixture
def api(kube, tmp_path):
    path = write_kubeconfig(tmp_path / "kubeconfig", {"test": kube})
    api = config.new_client_from_config(config_file=str(path), context="test", persist_config=False)
    yield api
    api.close()


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _lease_puts(kube: KubeStandIn) -> int:
    return sum("/leases/" in p for p in kube.paths("PUT"))


def _wait(predicate, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# ------------------------------------------------------------------------ names and times


def test_lease_name_is_a_lowercase_dns_name():
    assert lease_name("Hazard-Cascade") == "hazard-cascade-rollout"
    for bad in ("hazard_cascade", "", "-x", "a" * 250):
        with pytest.raises(ValueError, match="DNS subdomain"):
            lease_name(bad)


def test_holder_identity_names_user_host_pid_and_rollout():
    import getpass
    import os
    import socket

    who = holder_identity("r-42")
    assert who == f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()} r-42"


def test_micro_time_on_a_whole_second_still_parses():
    """isoformat() drops a zero fraction; the API server's MicroTime needs six digits."""
    whole = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    sent = client.ApiClient().sanitize_for_serialization(micro_time(whole))
    assert _MICRO_TIME.fullmatch(sent), sent
    assert abs(_time(sent) - whole) <= timedelta(microseconds=1)
    assert not _MICRO_TIME.fullmatch(whole.isoformat())  # what the stand-in would refuse


def test_bad_arguments_are_refused(api):
    with pytest.raises(ValueError, match="at least 1 s"):
        RolloutLock(api, NAMESPACE, RELEASE, ALICE, duration_s=0.5)
    with pytest.raises(ValueError, match="holder identity is empty"):
        RolloutLock(api, NAMESPACE, RELEASE, " ")


# ------------------------------------------------------------------------ acquire / renew / release


def test_acquire_renew_release(kube, api):
    before = datetime.now(UTC)
    lock = RolloutLock(api, NAMESPACE, RELEASE, ALICE, duration_s=3)
    with lock:
        first = kube.leases.get()
        after = datetime.now(UTC)
        spec = first["metadata"]["name"], first["spec"]
        assert spec[0] == f"{RELEASE}-rollout"
        assert spec[1]["holderIdentity"] == ALICE
        assert spec[1]["leaseDurationSeconds"] == 3
        assert spec[1]["acquireTime"] == spec[1]["renewTime"]
        assert before <= _time(spec[1]["renewTime"]) <= after
        # renewed every duration/3 = 1 s
        _wait(lambda: _lease_puts(kube) >= 2, timeout_s=6)
        lock.check()
        assert lock.lost is None
        later = kube.leases.get()
        assert int(later["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
        gap = _time(later["spec"]["renewTime"]) - _time(first["spec"]["renewTime"])
        assert gap >= timedelta(seconds=1.5)  # two renewals one interval (1 s) apart at least
        assert later["spec"]["acquireTime"] == first["spec"]["acquireTime"]
        assert later["spec"]["holderIdentity"] == ALICE
    assert kube.leases.get() is None
    assert kube.paths("DELETE") == [
        f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{RELEASE}-rollout"
    ]
    with pytest.raises(LockLost, match="not held"):
        lock.check()


def test_an_error_in_the_rollout_still_releases(kube, api):
    with (
        pytest.raises(RuntimeError, match="gate failed"),
        RolloutLock(api, NAMESPACE, RELEASE, ALICE),
    ):
        assert kube.leases.get()["spec"]["holderIdentity"] == ALICE
        raise RuntimeError("gate failed")
    assert kube.leases.get() is None


def test_a_second_rollout_is_refused_naming_the_holder(kube, api):
    first = RolloutLock(api, NAMESPACE, RELEASE, ALICE).acquire()
    held = kube.leases.get()
    with pytest.raises(LockHeld) as info:
        RolloutLock(api, NAMESPACE, RELEASE, BOB).acquire()
    err = info.value
    assert err.holder == ALICE
    assert err.since == _time(held["spec"]["acquireTime"])
    assert err.expires == _time(held["spec"]["renewTime"]) + timedelta(seconds=120)
    message = str(err)
    assert ALICE in message and "is held by" in message
    assert err.since.strftime("%Y-%m-%dT%H:%M:%SZ") in message
    assert err.expires.strftime("%Y-%m-%dT%H:%M:%SZ") in message
    assert kube.leases.get() == held  # the refused lock wrote nothing
    first.release()
    with RolloutLock(api, NAMESPACE, RELEASE, BOB):
        assert kube.leases.get()["spec"]["holderIdentity"] == BOB


@pytest.mark.parametrize(
    ("holder", "renewed_ago_s", "taken"),
    [
        (BOB, 600, True),  # expired 480 s ago
        (BOB, 110, False),  # expires in 10 s
        ("", 0, True),  # released by clearing the holder
    ],
)
def test_an_expired_or_free_lease_is_taken_over(kube, api, holder, renewed_ago_s, taken):
    seeded = kube.leases.seed(holder, renewed_ago_s=renewed_ago_s, duration_s=120)
    lock = RolloutLock(api, NAMESPACE, RELEASE, ALICE)
    if not taken:
        with pytest.raises(LockHeld) as info:
            lock.acquire()
        left = info.value.expires - datetime.now(UTC)
        assert timedelta(seconds=8) < left <= timedelta(seconds=10), left
        assert kube.leases.get() == seeded
        return
    before = datetime.now(UTC)
    with lock:
        now = kube.leases.get()["spec"]
        assert now["holderIdentity"] == ALICE
        assert now["leaseTransitions"] == seeded["spec"]["leaseTransitions"] + 1 == 1
        assert _time(now["acquireTime"]) >= before


# ------------------------------------------------------------------------ races


@pytest.mark.parametrize("expired", [False, True], ids=["create", "update"])
def test_losing_the_race_between_read_and_write(kube, api, expired):
    """Another deployer writes between our read and our write: our write gets 409."""
    if expired:
        kube.leases.seed(BOB, renewed_ago_s=600)
    kube.leases.race_next_write("carol@ci-3 pid 303 r-carol")
    with pytest.raises(LockHeld, match="was taken by carol@ci-3 pid 303 r-carol") as info:
        RolloutLock(api, NAMESPACE, RELEASE, ALICE).acquire()
    assert info.value.holder == "carol@ci-3 pid 303 r-carol"
    assert kube.leases.conflicts == 1
    assert kube.leases.get()["spec"]["holderIdentity"] == "carol@ci-3 pid 303 r-carol"


def _race(locks: list[RolloutLock]) -> dict[str, object]:
    """Each lock's acquire() in its own thread, started together: holder -> "won" or LockHeld."""
    start = threading.Barrier(len(locks))
    outcome: dict[str, object] = {}

    def run(lock: RolloutLock) -> None:
        start.wait()
        try:
            lock.acquire()
            outcome[lock.holder] = "won"
        except LockHeld as exc:
            outcome[lock.holder] = exc

    threads = [threading.Thread(target=run, args=(lock,)) for lock in locks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return outcome


def test_two_deployers_racing_exactly_one_wins(kube, api):
    for round_ in range(12):
        if round_ % 2:  # odd rounds race to take over an expired lease, even ones to create it
            kube.leases.seed(BOB, renewed_ago_s=600)
        locks = [
            RolloutLock(api, NAMESPACE, RELEASE, f"d{i}@ci pid {i} r-{round_}") for i in (1, 2)
        ]
        outcome = _race(locks)
        winners = [h for h, o in outcome.items() if o == "won"]
        assert len(winners) == 1, outcome
        (loser,) = [o for o in outcome.values() if o != "won"]
        assert loser.holder == winners[0]
        assert kube.leases.get()["spec"]["holderIdentity"] == winners[0]
        next(lock for lock in locks if lock.holder == winners[0]).release()
        assert kube.leases.get() is None
    print(f"409s answered in 12 rounds: {kube.leases.conflicts}")


# ------------------------------------------------------------------------ RBAC and losing the lock


def test_forbidden_leases_name_the_role(kube, api):
    kube.leases.forbidden = True
    with pytest.raises(KubeError) as info:
        RolloutLock(api, NAMESPACE, RELEASE, ALICE).acquire()
    assert info.value.status == 403 and info.value.denied
    assert "HTTP 403" in str(info.value)
    assert "leases" in str(info.value) and "k8s/rbac.yaml" in str(info.value)


def test_a_deleted_lease_is_lost(kube, api):
    lock = RolloutLock(api, NAMESPACE, RELEASE, ALICE, duration_s=3).acquire()
    kube.leases.delete()
    _wait(lambda: lock.lost is not None, timeout_s=5)
    assert "was deleted" in lock.lost
    with pytest.raises(LockLost, match="was deleted"):
        lock.check()
    lock.release()
    assert kube.leases.get() is None and not kube.paths("DELETE")


def test_a_lease_taken_by_another_is_lost_and_left_alone(kube, api):
    lock = RolloutLock(api, NAMESPACE, RELEASE, ALICE, duration_s=3).acquire()
    taken = kube.leases.seed(BOB)
    _wait(lambda: lock.lost is not None, timeout_s=5)
    with pytest.raises(LockLost, match=f"now held by {BOB}"):
        lock.check()
    lock.release()
    assert kube.leases.get() == taken


def test_release_leaves_a_lease_someone_else_took(kube, api):
    """Taken between two renewals (120 s apart): release reads it and does not delete it."""
    lock = RolloutLock(api, NAMESPACE, RELEASE, ALICE).acquire()
    taken = kube.leases.seed(BOB)
    lock.release()
    assert kube.leases.get() == taken and not kube.paths("DELETE")


def test_renewal_forbidden_is_lost_at_once(kube, api):
    lock = RolloutLock(api, NAMESPACE, RELEASE, ALICE, duration_s=3).acquire()
    kube.leases.forbidden = True
    _wait(lambda: lock.lost is not None, timeout_s=5)
    assert "HTTP 403" in lock.lost and "k8s/rbac.yaml" in lock.lost
    lock.release()


def test_api_down_beyond_the_duration_is_lost(kube, api):
    lock = RolloutLock(api, NAMESPACE, RELEASE, ALICE, duration_s=2).acquire()
    acquired = time.monotonic()
    lock.check()
    kube.close()
    _wait(lambda: lock.lost is not None, timeout_s=10)
    assert time.monotonic() - acquired >= 2  # not before the duration has passed
    with pytest.raises(LockLost, match="not renewed for"):
        lock.check()
    lock.release()  # nothing to reach: a lost lock is left to expire
