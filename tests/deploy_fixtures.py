"""Stand-ins for `hazard deploy` tests: a Kubernetes API server, `helm`, and the serving app.

- `KubeStandIn`: a threaded HTTP server on loopback that answers what the `kubernetes` client
  asks a real API server for: GET of a RayService (status scripted: each GET takes the next
  object of its script, the last one stays), pods of a namespace by label selector and events
  by field selector. It requires the bearer token of its kube context.
- `write_kubeconfig`: one context per stand-in, each with its own token.
- `install_helm`: a `helm` on PATH (this module run as a script) that logs its argv and
  HELM_DRIVER to a JSON-lines file and keeps releases in a JSON state file: `history`,
  `get manifest`, `template`, `upgrade --install`, `rollback`, `uninstall`, as Helm 4 prints
  them; unknown commands or flags fail like helm does.
- `ServeStandIn`: GET /readyz (status codes scripted, last one stays), GET /v1/models (the
  served versions scripted, last one stays) and POST /v1/score (API key checked, the upload
  kept) on loopback.

Imports only the standard library and yaml: the helm stand-in runs it at every call.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import yaml

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "hazard-cascade"
RELEASE = "hazard-cascade"
APP = "hazard-cascade"
IMAGE_REPO = "ghcr.io/hazard-cascade/hazard-cascade"
# The models the stand-in chart renders by default (`serve.app.args.<role>.version` overrides).
MODEL_NAMES = {"base": "hazard-base", "specialist": "hazard-specialist"}
DEFAULT_VERSION = "1.0.0"


def served(base: str = DEFAULT_VERSION, specialist: str = DEFAULT_VERSION) -> list[dict]:
    """A /v1/models `models` list serving these versions."""
    versions = {"base": base, "specialist": specialist}
    return [{"role": r, "name": n, "version": versions[r]} for r, n in MODEL_NAMES.items()]


# ------------------------------------------------------------------------- HTTP servers


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1 serving `handle(method, path, query, headers, body)`."""

    def __init__(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with owner.lock:
                    owner.requests.append((method, url.path, dict(self.headers), body))
                    status, payload = owner.handle(method, url.path, parse_qs(url.query), self)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                self._serve("GET")

            def do_POST(self):  # noqa: N802
                self._serve("POST")

            def log_message(self, *args):
                pass

        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def handle(self, method, path, query, request) -> tuple[int, object]:
        raise NotImplementedError

    def paths(self, method: str | None = None) -> list[str]:
        return [p for m, p, _, _ in self.requests if method in (None, m)]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _status(code: int, reason: str, message: str) -> tuple[int, dict]:
    return code, {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def rayservice(
    name: str = RELEASE,
    generation: int = 2,
    observed: int = 2,
    ready: str = "True",
    ready_reason: str = "NonZeroServeEndpoints",
    upgrading: str = "False",
    app_status: str = "RUNNING",
    cluster: str = f"{RELEASE}-abcde",
    pending: str = "",
) -> dict:
    """A RayService object as KubeRay 1.7 writes its status."""
    upgrade_reason = "BothActivePendingClustersExist" if upgrading == "True" else "NoPendingCluster"
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name, "namespace": NAMESPACE, "generation": generation},
        "spec": {},
        "status": {
            "observedGeneration": observed,
            "numServeEndpoints": 1 if ready == "True" else 0,
            "conditions": [
                {
                    "type": "Ready",
                    "status": ready,
                    "reason": ready_reason,
                    "message": "",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                },
                {
                    "type": "UpgradeInProgress",
                    "status": upgrading,
                    "reason": upgrade_reason,
                    "message": "",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                },
            ],
            "activeServiceStatus": {
                "rayClusterName": cluster,
                "applicationStatuses": {APP: {"status": app_status, "message": ""}},
            },
            "pendingServiceStatus": {"rayClusterName": pending} if pending else {},
        },
    }


def _pod(name: str, cluster: str, ready: bool) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"ray.io/cluster": cluster}},
        "spec": {"containers": [{"name": "ray", "image": f"{IMAGE_REPO}:0.1.0"}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [
                {
                    "name": "ray",
                    "ready": ready,
                    "restartCount": 0 if ready else 2,
                    "image": f"{IMAGE_REPO}:0.1.0",
                    "imageID": "",
                }
            ],
        },
    }


class KubeStandIn(_Server):
    """The parts of a Kubernetes API server a rollout reads, for one cluster."""

    def __init__(self, token: str):
        self.token = token
        self.scripts: dict[str, list[dict]] = {}
        self.pods: list[dict] = []
        self.warnings: list[tuple[str, str, str]] = []  # (object name, reason, message)
        super().__init__()

    def script(self, name: str, *objects: dict) -> None:
        """The RayService objects successive GETs of `name` return (the last one stays)."""
        self.scripts[name] = list(objects)

    def add_pods(self, cluster: str, ready: int, not_ready: int = 0) -> None:
        for i in range(ready + not_ready):
            self.pods.append(_pod(f"{cluster}-pod-{i}", cluster, i < ready))

    def rayservice_gets(self) -> int:
        return sum("/rayservices/" in p for p in self.paths("GET"))

    def handle(self, method, path, query, request):
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized", "Unauthorized")
        parts = path.strip("/").split("/")
        if parts[:3] == ["apis", "ray.io", "v1"] and len(parts) == 7 and parts[5] == "rayservices":
            script = self.scripts.get(parts[6], [])
            if parts[4] != NAMESPACE or not script:
                return _status(404, "NotFound", f'rayservices.ray.io "{parts[6]}" not found')
            return 200, script.pop(0) if len(script) > 1 else script[0]
        if parts[:2] == ["api", "v1"] and parts[4:] == ["pods"]:
            key, _, value = query.get("labelSelector", ["="])[0].partition("=")
            items = [p for p in self.pods if p["metadata"]["labels"].get(key) == value]
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}
        if parts[:2] == ["api", "v1"] and parts[4:] == ["events"]:
            assert query.get("fieldSelector") == ["type=Warning"], query
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            items = [
                {
                    "metadata": {"name": f"{obj}.{i}", "namespace": NAMESPACE},
                    "involvedObject": {"kind": "Pod", "name": obj, "namespace": NAMESPACE},
                    "reason": reason,
                    "message": message,
                    "type": "Warning",
                    "lastTimestamp": now,
                }
                for i, (obj, reason, message) in enumerate(self.warnings)
            ]
            return 200, {"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": items}
        return _status(404, "NotFound", f"no route {path}")


def write_kubeconfig(path: Path, clusters: dict[str, KubeStandIn]) -> Path:
    """A kubeconfig with one context per stand-in (context name -> server), each its own token."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": n, "cluster": {"server": s.url}} for n, s in clusters.items()],
        "users": [{"name": n, "user": {"token": s.token}} for n, s in clusters.items()],
        "contexts": [
            {"name": n, "context": {"cluster": n, "user": n, "namespace": NAMESPACE}}
            for n in clusters
        ],
        "current-context": next(iter(clusters)),
    }
    path.write_text(yaml.safe_dump(config))
    return path


class ServeStandIn(_Server):
    """/readyz and /v1/score of one cluster's serving app."""

    def __init__(self, api_key: str, readyz: list[int], answer: dict | None = None):
        self.api_key = api_key
        self.readyz = list(readyz)
        self.models = [served()]  # each GET /v1/models takes the next; the last one stays
        self.answer = answer or valid_answer()
        super().__init__()

    def handle(self, method, path, query, request):
        if method == "GET" and path == "/readyz":
            code = self.readyz.pop(0) if len(self.readyz) > 1 else self.readyz[0]
            return code, {"status": "ready" if code == 200 else "not ready", "ready": code == 200}
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return 401, {"detail": "missing or wrong API key"}
        if method == "GET" and path == "/v1/models":
            models = self.models.pop(0) if len(self.models) > 1 else self.models[0]
            return 200, {"models": models, "labels": [], "fusion": {}}
        if method == "POST" and path == "/v1/score":
            return 200, self.answer
        return 404, {"detail": "Not Found"}

    def uploads(self) -> list[bytes]:
        return [body for m, p, _, body in self.requests if (m, p) == ("POST", "/v1/score")]


def valid_answer() -> dict:
    probs = {
        "no_risk": 0.1,
        "low_risk": 0.6,
        "medium_risk": 0.2,
        "high_risk": 0.05,
        "non_corridor": 0.05,
    }
    return {
        "id": "smoke.png",
        "risk_level": "low_risk",
        "probabilities": probs,
        "hazard_score": 0.3,
        "escalated": False,
        "models": served()[:1],  # the base alone: not escalated
        "latency_ms": 12.0,
    }


# ------------------------------------------------------------------------- helm stand-in


def install_helm(bin_dir: Path, state: Path, log: Path) -> dict[str, str]:
    """Write `bin_dir/helm` and return the environment it needs (PATH first, state, log)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    helm = bin_dir / "helm"
    helm.write_text(
        f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
        "from tests.deploy_fixtures import helm_main\nsys.exit(helm_main(sys.argv[1:]))\n"
    )
    helm.chmod(0o755)
    if not state.exists():
        state.write_text(json.dumps({"releases": {}, "fail": {}}))
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HELM_STANDIN_STATE": str(state),
        "HELM_STANDIN_LOG": str(log),
    }


def render(release: str, values: str | None, sets: list[str]) -> str:
    """What the stand-in's chart renders: a RayService whose image tag follows the values."""
    tag = "0.1.0"
    versions = dict.fromkeys(MODEL_NAMES, DEFAULT_VERSION)
    if values:
        tag = str((yaml.safe_load(Path(values).read_text()) or {}).get("image", {}).get("tag", tag))
    for item in sets:
        key, _, value = item.partition("=")
        if key == "image.tag":
            tag = value
        for role in MODEL_NAMES:
            if key == f"serve.app.args.{role}.version":
                versions[role] = value
    args = {r: {"name": n, "version": versions[r]} for r, n in MODEL_NAMES.items()}
    app = {"name": APP, "import_path": "serve.app:build_app", "args": args}
    serve = yaml.safe_dump({"applications": [app]})
    head = {"containers": [{"name": "ray-head", "image": f"{IMAGE_REPO}:{tag}"}]}
    doc = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": release, "labels": {"app.kubernetes.io/instance": release}},
        "spec": {
            "serveConfigV2": serve,
            "rayClusterConfig": {"headGroupSpec": {"template": {"spec": head}}},
        },
    }
    sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": release}}
    return (
        "---\n# Source: hazard-cascade/templates/serviceaccount.yaml\n"
        + yaml.safe_dump(sa, sort_keys=False)
        + "---\n# Source: hazard-cascade/templates/rayservice.yaml\n"
        + yaml.safe_dump(doc, sort_keys=False)
    )


def release_key(context: str, namespace: str, release: str) -> str:
    return f"{context}/{namespace}/{release}"


def seed_release(state: Path, context: str, revisions: int, tag: str = "0.1.0") -> None:
    """Give `context` a release with `revisions` revisions, the last deployed, the others
    superseded (each rendered with `tag`)."""
    data = json.loads(state.read_text())
    data["releases"][release_key(context, NAMESPACE, RELEASE)] = [
        {
            "revision": n,
            "status": "deployed" if n == revisions else "superseded",
            "chart": "hazard-cascade-0.1.0",
            "description": "Upgrade complete" if n > 1 else "Install complete",
            "manifest": render(RELEASE, None, [f"image.tag={tag}"]),
        }
        for n in range(1, revisions + 1)
    ]
    state.write_text(json.dumps(data))


def fail_on(state: Path, context: str, command: str) -> None:
    """Make `helm COMMAND` fail on `context` (as an API error would)."""
    data = json.loads(state.read_text())
    data["fail"].setdefault(context, []).append(command)
    state.write_text(json.dumps(data))


def helm_calls(log: Path) -> list[dict]:
    """Every logged call: {"argv": [...], "driver": HELM_DRIVER}."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def releases(state: Path) -> dict[str, list[dict]]:
    return json.loads(state.read_text())["releases"]


_VALUE_FLAGS = {"--namespace", "--kube-context", "--values", "--set", "--version", "--output"}
_BOOL_FLAGS = {"--install", "--no-hooks", "--skip-tests", "--is-upgrade"}


def _parse(args: list[str]) -> tuple[list[str], dict[str, list[str]], set[str]]:
    words, values, flags = [], {}, set()
    it = iter(args)
    for a in it:
        if a in _VALUE_FLAGS:
            values.setdefault(a, []).append(next(it))
        elif a in _BOOL_FLAGS:
            flags.add(a)
        elif a.startswith("-"):
            raise SystemExit(f"Error: unknown flag: {a}")
        else:
            words.append(a)
    return words, values, flags


def _fail(message: str) -> int:
    print(f"Error: {message}", file=sys.stderr)
    return 1


def helm_main(args: list[str]) -> int:
    """The stand-in `helm`."""
    state_path = Path(os.environ["HELM_STANDIN_STATE"])
    with open(os.environ["HELM_STANDIN_LOG"], "a") as f:
        f.write(json.dumps({"argv": ["helm", *args], "driver": os.environ.get("HELM_DRIVER")}))
        f.write("\n")
    try:
        words, values, flags = _parse(args)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 1
    context, namespace = values["--kube-context"][0], values["--namespace"][0]
    state = json.loads(state_path.read_text())
    command = words[0] if words[:1] != ["get"] else " ".join(words[:2])
    release = words[1] if command != "get manifest" else words[2]
    key = release_key(context, namespace, release)
    revisions = state["releases"].get(key, [])
    if command in state["fail"].get(context, []):
        return _fail(f"{command} failed: Unauthorized (stand-in)")
    sets = values.get("--set", [])
    vals = values.get("--values", [None])[0]

    def save() -> None:
        state["releases"][key] = revisions
        state_path.write_text(json.dumps(state))

    def add(status: str, manifest: str, description: str) -> int:
        for r in revisions:
            if r["status"] == "deployed" and status == "deployed":
                r["status"] = "superseded"
        number = max((r["revision"] for r in revisions), default=0) + 1
        revisions.append(
            {
                "revision": number,
                "status": status,
                "chart": "hazard-cascade-0.1.0",
                "description": description,
                "manifest": manifest,
            }
        )
        return number

    if command == "history":
        if not revisions:
            return _fail("release: not found")
        assert values.get("--output") == ["json"]
        print(json.dumps([{k: v for k, v in r.items() if k != "manifest"} for r in revisions]))
    elif command == "get manifest":
        deployed = [r for r in revisions if r["status"] == "deployed"] or revisions
        if not deployed:
            return _fail("release: not found")
        print(deployed[-1]["manifest"], end="")
    elif command == "template":
        chart = Path(words[2])
        if not (chart / "Chart.yaml").is_file():
            return _fail(f"path {chart!r} not found")
        print(render(release, vals, sets), end="")
    elif command == "upgrade":
        if "--install" not in flags or not (Path(words[2]) / "Chart.yaml").is_file():
            return _fail("stand-in needs --install and a chart folder")
        assert values.get("--output") == ["json"]
        manifest = render(release, vals, sets)
        number = add("deployed", manifest, "Upgrade complete")
        save()
        info = {"status": "deployed", "description": "Upgrade complete", "notes": "..."}
        print(json.dumps({"name": release, "info": info, "manifest": manifest, "version": number,
                          "namespace": namespace, "apply_method": "ssa"}))  # fmt: skip
    elif command == "rollback":
        target = [r for r in revisions if r["revision"] == int(words[2])]
        if not target:
            return _fail(f'release "{release}" revision {words[2]} not found')
        add("deployed", target[0]["manifest"], f"Rollback to {words[2]}")
        save()
        print("Rollback was a success! Happy Helming!")
    elif command == "uninstall":
        if not revisions:
            return _fail(f"uninstall: Release not loaded: {release}: release: not found")
        del state["releases"][key]
        state_path.write_text(json.dumps(state))
        print(f'release "{release}" uninstalled')
    else:
        return _fail(f'unknown command "{command}" for "helm"')
    return 0
