"""The gates a cluster passes after `helm upgrade`, each returning a `GateResult`.

1. `wait_running`: every RayService of the release reports its Serve apps RUNNING for the new spec;
   a failing sign (an app DEPLOY_FAILED or UNHEALTHY, a new pod's crash loop or image pull)
   that lasts `failFast.seconds` ends the wait early;
2. `health_gate`: `GET /readyz` answers 200 N times in a row within a timeout;
3. `version_gate`: `GET /v1/models` (through the Service the users call) names the rendered
   models' names and versions N times in a row: KubeRay can report the new generation while the
   old Serve app still reads RUNNING, and then the old replicas answer `/readyz`;
4. `smoke`: `POST /v1/score` of the bundled image with the API key answers a valid score from
   the rendered models;
5. `soak`: for the wave's soak time, /readyz and /v1/models keep answering as in 2 and 3.
`wait_gone` checks an uninstall: the release's RayServices are gone.
Progress goes through `say` (one line when the state changes, at least every PROGRESS_EVERY_S).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx

from hazard.client import post_image
from hazard.core.labels import RISK_LABELS
from hazard.deploy.cluster import KubeError
from hazard.deploy.plan import FailFast, HealthGate, Poll
from hazard.deploy.target import ClusterTarget

Say = Callable[[str], None]
PROGRESS_EVERY_S = 30.0


@dataclass(frozen=True)
class GateResult:
    ok: bool
    detail: str
    seconds: float


class _Progress:
    """Says a waiting line when it changed or every PROGRESS_EVERY_S."""

    def __init__(self, say: Say, what: str, timeout: float):
        self.say, self.what, self.timeout = say, what, timeout
        self.start = time.monotonic()
        self.last_text, self.last_time = "", -math.inf

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def __call__(self, text: str) -> None:
        now = time.monotonic()
        if text != self.last_text or now - self.last_time >= PROGRESS_EVERY_S:
            self.say(f"{self.what} ({self.elapsed:.0f}s/{self.timeout:.0f}s): {text}")
            self.last_text, self.last_time = text, now

    def result(self, ok: bool, detail: str) -> GateResult:
        return GateResult(ok, detail, self.elapsed)

    def sleep(self, interval: float) -> None:
        time.sleep(max(0.0, min(interval, self.timeout - self.elapsed)))


class _FailFast:
    """Ends a wait once failing signs have lasted `fail_fast.seconds` without a break."""

    def __init__(self, target: ClusterTarget, fail_fast: FailFast | None, since: datetime | None):
        self.target, self.fail_fast, self.since = target, fail_fast, since
        self.first_seen: float | None = None

    def pod_signs(self, ray_clusters: list[str]) -> list[str]:
        """Warning events since the upgrade of pods of `ray_clusters` that cannot start."""
        if self.fail_fast is None or self.since is None or not ray_clusters:
            return []
        try:
            events = self.target.warnings(self.since, limit=None)
        except KubeError:
            return []  # events are a hint; the status is the gate
        return sorted(
            {
                f"{e.object} {e.reason}: {e.message}"
                for e in events
                if e.pod_cannot_start(ray_clusters)
            }
        )

    def verdict(self, signs: list[str]) -> str | None:
        """The failure once `signs` lasted long enough (None: keep waiting)."""
        if self.fail_fast is None or not signs:
            self.first_seen = None
            return None
        now = time.monotonic()
        self.first_seen = self.first_seen if self.first_seen is not None else now
        lasted = now - self.first_seen
        if lasted < self.fail_fast.seconds:
            return None
        return f"failing for {lasted:.0f}s (failFast {self.fail_fast.seconds:g}s): " + "; ".join(
            signs
        )


def wait_running(
    target: ClusterTarget,
    services: dict[str, list[str]],
    poll: Poll,
    say: Say,
    fail_fast: FailFast | None = None,
    since: datetime | None = None,
) -> GateResult:
    """Wait until each RayService has reconciled its spec, is Ready, not upgrading or rolling
    back, and reports each of its apps RUNNING on the active cluster. With `fail_fast`, apps
    DEPLOY_FAILED/UNHEALTHY or Warning events (after `since`) of the RayServices' pods crash
    looping or failing to pull their image end the wait once they lasted `fail_fast.seconds`."""
    names = ", ".join(services)
    progress = _Progress(say, f"waiting for RayService {names}", poll.timeout_seconds)
    if not services:
        return progress.result(False, "the release renders no RayService")
    seen: dict[str, str] = {}  # the last full status of each RayService, for the failure detail
    early = _FailFast(target, fail_fast, since)
    while True:
        blockers, signs, ray_clusters = [], [], []
        for name, apps in services.items():
            try:
                state = target.service_state(name)
            except KubeError as exc:
                if exc.denied:
                    return progress.result(False, f"{exc} (the deployer's Role: k8s/rbac.yaml)")
                blockers.append(str(exc))
                continue
            if state is None:
                blockers.append(f"{name} not found")
                continue
            seen[name] = state.describe()
            if failure := state.failure():
                return progress.result(False, f"{name}: {failure}")
            if blocker := state.blocker(apps):
                blockers.append(f"{name}: {blocker}" if len(services) > 1 else blocker)
            if failing := state.failing_apps(apps):
                signs.append(f"{name}: {failing}")
            ray_clusters += state.clusters()
        if not blockers:
            return progress.result(True, f"{names}: apps RUNNING")
        signs += early.pod_signs(ray_clusters)
        if verdict := early.verdict(signs):
            return progress.result(False, verdict)
        if progress.elapsed >= poll.timeout_seconds:
            detail = f"not running after {progress.elapsed:.0f}s: " + "; ".join(blockers)
            last = "; ".join(f"{n}: {d}" for n, d in seen.items())
            return progress.result(False, detail + (f" (last status: {last})" if last else ""))
        progress("; ".join(blockers) + (f"; failing: {'; '.join(signs)}" if signs else ""))
        progress.sleep(poll.interval_seconds)


def _streak_gate(
    url: str,
    gate: HealthGate,
    say: Say,
    what: str,
    check: Callable[[httpx.Response], tuple[bool, str]],
    headers: dict[str, str] | None = None,
    passed: str = "",
) -> GateResult:
    """`GET url` until `check(response)` -> (ok, what was seen) held `successes_required` times
    in a row within the gate's timeout; an answer that fails it, or a connection error, resets
    the count."""
    need = gate.successes_required
    progress = _Progress(say, f"{what} {url}", gate.timeout_seconds)
    streak, last = 0, "no answer yet"
    with httpx.Client(timeout=min(10.0, gate.timeout_seconds)) as http:
        while True:
            try:
                ok, last = check(http.get(url, headers=headers))
            except httpx.HTTPError as exc:
                ok, last = False, f"{type(exc).__name__}: {exc}"
            streak = streak + 1 if ok else 0
            if streak >= need:
                return progress.result(True, f"{passed}{need}/{need} in a row")
            if progress.elapsed >= gate.timeout_seconds:
                detail = f"{streak}/{need} in a row after {progress.elapsed:.0f}s; last: {last}"
                return progress.result(False, detail)
            progress(f"{streak}/{need} in a row; last: {last}")
            progress.sleep(gate.interval_seconds)


def health_gate(service_url: str, gate: HealthGate, say: Say) -> GateResult:
    """`GET /readyz` until it answered 200 `successes_required` times in a row."""

    def ready(resp: httpx.Response) -> tuple[bool, str]:
        ok = resp.status_code == 200
        return ok, f"HTTP {resp.status_code}" + ("" if ok else f" {resp.text[:120]}")

    return _streak_gate(f"{service_url}/readyz", gate, say, "health gate", ready)


Models = dict[str, dict[str, str]]  # role -> {"name", "version"}


def model_mismatch(answered: object, want: Models, all_roles: bool) -> str | None:
    """Why a `models` list ([{"role", "name", "version", ...}]) is not `want` (None: it is).
    `all_roles`: every role of `want` must be listed (/v1/models); else the listed ones must
    match and the base must be there (a score lists the models it used)."""
    if not isinstance(answered, list) or not all(isinstance(m, dict) for m in answered):
        return f"models is not a list of objects: {answered!r}"
    got = {m.get("role"): {"name": m.get("name"), "version": m.get("version")} for m in answered}
    need = want if all_roles else {r: w for r, w in want.items() if r in got or r == "base"}
    wrong = [
        f"{role} {got.get(role, {}).get('name')} {got.get(role, {}).get('version')} "
        f"(expected {w['name']} {w['version']})"
        for role, w in need.items()
        if got.get(role) != w
    ]
    return "; ".join(wrong) or None


def version_gate(
    service_url: str, want: Models, gate: HealthGate, api_key: str, say: Say
) -> GateResult:
    """`GET /v1/models` until it named `want`'s names and versions `successes_required` times
    in a row (the same streak and timeout as the health gate)."""
    if not want:
        return GateResult(False, "the release renders no model name and version to check", 0.0)

    def serving(resp: httpx.Response) -> tuple[bool, str]:
        if resp.status_code != 200:
            return False, f"HTTP {resp.status_code} {resp.text[:120]}"
        try:
            wrong = model_mismatch(resp.json().get("models"), want, all_roles=True)
        except (ValueError, AttributeError) as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return not wrong, f"serving {wrong}" if wrong else "serving the rendered versions"

    expected = ", ".join(f"{r} {w['name']} {w['version']}" for r, w in sorted(want.items()))
    headers = {"Authorization": f"Bearer {api_key}"}
    url = f"{service_url}/v1/models"
    return _streak_gate(url, gate, say, "version gate", serving, headers, f"{expected}, ")


def wait_gone(target: ClusterTarget, services: list[str], poll: Poll, say: Say) -> GateResult:
    """Wait until none of `services` (RayService names) exists any more (after an uninstall)."""
    progress = _Progress(
        say, f"waiting for RayService {', '.join(services)} to go", poll.timeout_seconds
    )
    while True:
        try:
            left = [n for n in services if target.service_state(n) is not None]
        except KubeError as exc:
            left = [str(exc)]
        if not left:
            return progress.result(True, "RayService gone" if services else "nothing to remove")
        if progress.elapsed >= poll.timeout_seconds:
            return progress.result(
                False, f"still there after {progress.elapsed:.0f}s: {', '.join(left)}"
            )
        progress(f"still there: {', '.join(left)}")
        progress.sleep(poll.interval_seconds)


def soak(
    service_url: str, want: Models, gate: HealthGate, api_key: str, seconds: float, say: Say
) -> GateResult:
    """For `seconds`, every `gate.interval_seconds`: /readyz must answer 200 and /v1/models
    the rendered versions; `successes_required` failed rounds in a row fail the soak."""
    progress = _Progress(say, f"soak {service_url}", seconds)
    headers = {"Authorization": f"Bearer {api_key}"}
    rounds = failures = 0
    last = ""
    with httpx.Client(timeout=min(10.0, gate.timeout_seconds)) as http:
        while True:
            try:
                ready = http.get(f"{service_url}/readyz")
                answer = http.get(f"{service_url}/v1/models", headers=headers)
                if ready.status_code != 200:
                    problem = f"/readyz HTTP {ready.status_code}"
                elif answer.status_code != 200:
                    problem = f"/v1/models HTTP {answer.status_code}"
                else:
                    wrong = model_mismatch(answer.json().get("models"), want, all_roles=True)
                    problem = f"serving {wrong}" if wrong else ""
            except (httpx.HTTPError, ValueError, AttributeError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            rounds += 1
            failures = failures + 1 if problem else 0
            last = problem or last
            if failures >= gate.successes_required:
                return progress.result(
                    False,
                    f"{failures} failed checks in a row after {progress.elapsed:.0f}s: {problem}",
                )
            if progress.elapsed >= seconds:
                extra = f"; last failure: {last}" if last else ""
                return progress.result(True, f"{rounds} checks over {seconds:g}s{extra}")
            progress(problem or "healthy so far")
            progress.sleep(gate.interval_seconds)


def _retry_after(resp: httpx.Response) -> float:
    """Seconds a 503 asks to wait (its `Retry-After`, 1 s when absent or unreadable, at most 30)."""
    try:
        return min(30.0, max(0.0, float(resp.headers.get("Retry-After", "1"))))
    except ValueError:
        return 1.0


def score_problems(answer: object) -> list[str]:
    """What makes a /v1/score answer invalid (empty: valid)."""
    if not isinstance(answer, dict):
        return [f"answer is {type(answer).__name__}, not an object"]
    problems = []
    probs = answer.get("probabilities")
    if not isinstance(probs, dict) or set(probs) != set(RISK_LABELS):
        return [f"probabilities must name exactly {list(RISK_LABELS)}, got {probs!r}"]
    values = [probs[k] for k in RISK_LABELS]
    if not all(isinstance(v, int | float) and 0 <= v <= 1 for v in values):
        problems.append(f"probabilities outside [0, 1]: {values}")
    elif abs(sum(values) - 1) > 1e-3:
        problems.append(f"probabilities sum to {sum(values):.6f}, not 1")
    level = answer.get("risk_level")
    if level not in RISK_LABELS:
        problems.append(f"risk_level {level!r} is not one of the labels")
    elif not problems and probs[level] < max(values) - 1e-9:
        problems.append(f"risk_level {level} is not the most probable label")
    score = answer.get("hazard_score")
    if not isinstance(score, int | float) or not 0 <= score <= 1:
        problems.append(f"hazard_score {score!r} is not in [0, 1]")
    if not isinstance(answer.get("escalated"), bool):
        problems.append("escalated is not a boolean")
    if not answer.get("models"):
        problems.append("models is empty")
    return problems


def smoke(
    service_url: str, image: Path, api_key: str, timeout: float, want: Models | None = None
) -> GateResult:
    """Score `image` through `POST /v1/score` with the API key; the answer must be valid and,
    given `want`, come from those models' versions. A 503 (the app refusing under load, with
    `Retry-After`) or a connection error is retried within `timeout`: a busy production app is
    not a failed release."""
    start = time.monotonic()
    tries, last = 0, ""
    with httpx.Client(timeout=timeout) as http:
        while True:
            tries += 1
            try:
                resp = post_image(http, service_url, image, api_key)
            except httpx.HTTPError as exc:
                resp, last = None, f"{type(exc).__name__}: {exc}"
            if resp is not None and resp.status_code != 503:
                break
            if resp is not None:
                last = f"HTTP 503 {resp.text[:200]}"
            wait = _retry_after(resp) if resp is not None else 1.0
            if wait >= timeout - (time.monotonic() - start):
                detail = f"no answer but 503/connection errors in {tries} tries; last: {last}"
                return GateResult(False, detail[:300], time.monotonic() - start)
            time.sleep(wait)
    if resp.status_code != 200:
        detail = f"{image}: HTTP {resp.status_code}: {resp.text}"
        return GateResult(False, detail[:300], time.monotonic() - start)
    try:
        answer = resp.json()
    except ValueError as exc:
        return GateResult(False, f"answer is not JSON: {exc}", time.monotonic() - start)
    elapsed = time.monotonic() - start
    if problems := score_problems(answer):
        return GateResult(False, "invalid score: " + "; ".join(problems), elapsed)
    if want and (wrong := model_mismatch(answer["models"], want, all_roles=False)):
        return GateResult(False, f"scored by {wrong}", elapsed)
    detail = f"{answer['risk_level']} (hazard_score {answer['hazard_score']:.2f})"
    return GateResult(True, detail, elapsed)
