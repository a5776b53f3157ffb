"""One rollout at a time per cluster: a `coordination.k8s.io/v1` Lease in the release's namespace.

`RolloutLock` takes the Lease `<release>-rollout`, renews it every third of its duration in a
daemon thread and deletes it at the end (only while it still holds it). A Lease that another
deployer holds and renewed within its duration refuses the lock (`LockHeld`); an expired one
is taken over. Every write carries the resourceVersion it read, so of two deployers racing for
one Lease the API server lets exactly one write through and answers the other 409 (`LockHeld`).
A renewal that fails (Lease deleted or taken, or not renewed for a whole duration) sets
`lost`; `check()` raises `LockLost`, so the rollout stops before its next change.

Expiry compares the Lease's renewTime with this machine's clock: deployers' clocks must agree
to well within the duration (NTP does that).
"""

from __future__ import annotations

import getpass
import logging
import math
import os
import re
import socket
import threading
import time
from datetime import UTC, datetime, timedelta

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from hazard.deploy.cluster import REQUEST_TIMEOUT_S, KubeError, _api_error

log = logging.getLogger(__name__)

DEFAULT_DURATION_S = 120.0
RBAC_HINT = (
    "the deployer's Role needs get, create, update and delete on leases "
    "(coordination.k8s.io) in this namespace: see k8s/rbac.yaml"
)
LABELS = {"app.kubernetes.io/managed-by": "hazard-deploy"}
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class LockHeld(RuntimeError):
    """Another deployer holds the rollout lock (or won the race for it)."""

    def __init__(self, message: str, holder: str, since: datetime | None, expires: datetime | None):
        super().__init__(message)
        self.holder = holder
        self.since = since
        self.expires = expires


class LockLost(RuntimeError):
    """The rollout lock was lost while held: stop before the next change."""


def lease_name(release: str) -> str:
    """The Lease's name for a release: `<release>-rollout`, lowercase."""
    name = f"{release}-rollout".lower()
    if len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        raise ValueError(f"release {release!r}: {name!r} is not a DNS subdomain name")
    return name


def holder_identity(rollout_id: str) -> str:
    """`<user>@<host> pid <pid> <rollout id>`: who holds the lock, for the message of others."""
    return f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()} {rollout_id}"


def micro_time(when: datetime) -> datetime:
    """`when` in UTC, never on a whole second: the client writes datetimes with `isoformat()`,
    which drops a zero fraction, and the API server parses a MicroTime with exactly six digits."""
    when = when.astimezone(UTC)
    return when if when.microsecond else when.replace(microsecond=1)


def _stamp(when: datetime | None) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if when else "?"


class RolloutLock:
    """The rollout lock of `release` in `namespace`, held as `holder` (see `holder_identity`).

    Use as a context manager, or `acquire()` ... `release()`; call `check()` before each change.
    """

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        release: str,
        holder: str,
        duration_s: float = DEFAULT_DURATION_S,
    ):
        if duration_s < 1:
            raise ValueError(f"lease duration {duration_s} s: must be at least 1 s")
        if not holder.strip():
            raise ValueError("the lock's holder identity is empty")
        self.namespace = namespace
        self.name = lease_name(release)
        self.holder = holder
        self.duration_s = float(duration_s)
        self._leases = client.CoordinationV1Api(api)
        self._timeout = min(REQUEST_TIMEOUT_S, max(1.0, self.duration_s / 3))
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._renewed = 0.0  # time.monotonic() when our last successful write was sent
        self._lost: str | None = None
        self._held = False

    @property
    def where(self) -> str:
        return f"lease {self.namespace}/{self.name}"

    # ------------------------------------------------------------------ API calls

    def _call(self, what: str, fn, *args, passthrough: tuple[int, ...] = (404, 409), **kwargs):
        """One API call: an ApiException with a status in `passthrough` is raised as it is,
        other failures as KubeError (a 401/403 with the RBAC hint)."""
        try:
            return fn(*args, _request_timeout=self._timeout, **kwargs)
        except ApiException as exc:
            if exc.status in passthrough:
                raise
            err = _api_error(exc, f"{what} {self.where}")
            if err.denied:
                err = KubeError(f"{err}: {RBAC_HINT}", err.status)
            raise err from exc
        except (HTTPError, ValueError) as exc:
            raise _api_error(exc, f"{what} {self.where}") from exc

    def _read(self) -> client.V1Lease | None:
        """The Lease, or None when there is none."""
        try:
            return self._call(
                "get",
                self._leases.read_namespaced_lease,
                self.name,
                self.namespace,
                passthrough=(404,),
            )
        except ApiException:
            return None

    def _held_error(self, lease: client.V1Lease | None, race: bool = False) -> LockHeld:
        spec = lease.spec if lease and lease.spec else client.V1LeaseSpec()
        holder = spec.holder_identity or "another deployer"
        expires = self._expires(spec)
        how = "was taken by" if race else "is held by"
        return LockHeld(
            f"the rollout lock ({self.where}) {how} {holder} since {_stamp(spec.acquire_time)}; "
            f"it expires at {_stamp(expires)} unless renewed: wait for that rollout to end "
            "(or, if it died, for the lease to expire) and run again",
            holder,
            spec.acquire_time,
            expires,
        )

    # ------------------------------------------------------------------ acquire / release

    def acquire(self) -> RolloutLock:
        """Take the Lease (create it, or take over a free or expired one) and start renewing.
        Raises LockHeld when another deployer holds it, KubeError when the API fails."""
        if self._held:
            raise RuntimeError(f"{self.where} is already held by this lock")
        sent = time.monotonic()
        for _ in range(2):  # a second round only when the Lease vanished between read and write
            lease = self._read()
            try:
                self._take(lease)
                break
            except ApiException as exc:
                if exc.status == 409:  # another deployer wrote first
                    raise self._held_error(self._read(), race=True) from exc
                # 404: the Lease vanished between our read and our update: read it again
        else:
            raise KubeError(f"update {self.where}: deleted under us twice", 404)
        with self._mutex:
            self._renewed = sent
            self._lost = None
            self._held = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name=self.name, daemon=True)
        self._thread.start()
        return self

    def _take(self, lease: client.V1Lease | None) -> None:
        """Create the Lease as ours, or write us over `lease` (its resourceVersion guards the
        write); raises LockHeld while another holder's lease has not expired."""
        now = datetime.now(UTC)
        if lease is None:
            lease = client.V1Lease(
                metadata=client.V1ObjectMeta(name=self.name, labels=LABELS),
                spec=client.V1LeaseSpec(lease_transitions=0),
            )
        spec = lease.spec = lease.spec or client.V1LeaseSpec()
        if spec.holder_identity != self.holder:
            if spec.holder_identity:
                expires = self._expires(spec)
                if expires is not None and expires > now:
                    raise self._held_error(lease)
                log.warning("%s: taking over from %s (expired)", self.where, spec.holder_identity)
            if lease.metadata.resource_version:
                spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.holder_identity = self.holder
        spec.lease_duration_seconds = math.ceil(self.duration_s)
        spec.acquire_time = spec.renew_time = micro_time(now)
        if lease.metadata.resource_version is None:
            self._call(  # a 404 here: the namespace does not exist (KubeError)
                "create",
                self._leases.create_namespaced_lease,
                self.namespace,
                lease,
                passthrough=(409,),
            )
        else:
            self._call(
                "update", self._leases.replace_namespaced_lease, self.name, self.namespace, lease
            )

    @staticmethod
    def _expires(spec: client.V1LeaseSpec) -> datetime | None:
        """renewTime + leaseDurationSeconds; None when the Lease says neither (free to take)."""
        if spec.renew_time is None or not spec.lease_duration_seconds:
            return None
        return spec.renew_time + timedelta(seconds=spec.lease_duration_seconds)

    def release(self) -> None:
        """Stop renewing and delete the Lease if this lock still holds it (a lost lock is left
        alone: it expires on its own). Raises KubeError when the API fails."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        lost = self.lost
        with self._mutex:
            held, self._held = self._held, False
        if not held or lost:
            return
        lease = self._read()
        if lease is None or (lease.spec and lease.spec.holder_identity) != self.holder:
            log.warning("%s: no longer ours at release; left as it is", self.where)
            return
        options = client.V1DeleteOptions(
            preconditions=client.V1Preconditions(resource_version=lease.metadata.resource_version)
        )
        try:
            self._call(
                "delete",
                self._leases.delete_namespaced_lease,
                self.name,
                self.namespace,
                body=options,
            )
        except ApiException as exc:  # changed or deleted since our read: not ours to delete
            log.warning("%s: changed at release (HTTP %s); left as it is", self.where, exc.status)

    def __enter__(self) -> RolloutLock:
        return self.acquire()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.release()
            return
        try:  # the rollout's own error matters more than a failed release
            self.release()
        except KubeError as err:
            log.warning("%s: not released (%s); it expires on its own", self.where, err)

    # ------------------------------------------------------------------ renewal

    @property
    def lost(self) -> str | None:
        """Why the lock is lost (a sentence), or None while it is held."""
        with self._mutex:
            if not self._held:
                return self._lost
            if self._lost is None:
                silent = time.monotonic() - self._renewed
                if silent >= self.duration_s:
                    return f"{self.where} not renewed for {silent:.1f} s (its duration)"
            return self._lost

    def check(self) -> None:
        """Raise LockLost unless the lock is held and renewed within its duration."""
        if not self._held and self._lost is None:
            raise LockLost(f"{self.where} is not held")
        reason = self.lost
        if reason:
            raise LockLost(f"rollout lock lost: {reason}; another rollout may be running")

    def _lose(self, reason: str) -> None:
        with self._mutex:
            self._lost = self._lost or reason
        log.error("%s: rollout lock lost: %s", self.where, reason)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.duration_s / 3):
            if reason := self.lost:
                self._lose(reason)
                return
            try:
                self._renew()
            except LockLost as exc:
                self._lose(str(exc))
                return
            except KubeError as exc:
                if exc.denied:
                    self._lose(str(exc))
                    return
                log.warning("%s: renewal failed, retrying: %s", self.where, exc)

    def _renew(self) -> None:
        """Read the Lease and, if it is still ours, write a new renewTime over that version
        (a 409 means it changed in between: the next round reads it again)."""
        sent = time.monotonic()
        lease = self._read()
        if lease is None:
            raise LockLost(f"{self.where} was deleted")
        spec = lease.spec or client.V1LeaseSpec()
        if spec.holder_identity != self.holder:
            raise LockLost(f"{self.where} is now held by {spec.holder_identity or 'nobody'}")
        spec.renew_time = micro_time(datetime.now(UTC))
        try:
            self._call(
                "renew", self._leases.replace_namespaced_lease, self.name, self.namespace, lease
            )
        except ApiException as exc:
            if exc.status == 404:
                raise LockLost(f"{self.where} was deleted") from exc
            return  # 409: changed between our read and write; the next round reads it again
        with self._mutex:
            self._renewed = sent
