"""Stand-ins for `hazard deploy` tests: a Kubernetes API server, `helm`, and the serving app.

- `KubeStandIn`: a threaded HTTP server on loopback that answers what the `kubernetes` client
  asks a real API server for: GET of a RayService (status scripted: each GET takes the next
  object of its script, the last one stays), GET of the KubeRay operator's Deployment (image,
  labels and a 404/403 settable), pods of a namespace by label selector and events
  by field selector; Leases (`LeaseStore`: get, create, update, delete with resourceVersion
  checks). It requires the bearer token of its kube context.
- `write_kubeconfig`: one context per stand-in, each with its own token.
- `install_helm`: a `helm` on PATH (this module run as a script) that logs its argv and
  HELM_DRIVER to a JSON-lines file and keeps releases in a JSON state file: `history`,
  `get manifest`, `template`, `upgrade --install` (with `--dry-run=server`: rendered, no
  revision recorded), `show chart`, `rollback`, `uninstall`, as Helm 4 prints them; unknown
  commands or flags fail like helm does.
- `ServeStandIn`: GET /readyz (status codes scripted, last one stays), GET /v1/models (the
  served versions scripted, last one stays) and POST /v1/score (API key checked, the upload
  kept) on loopback.

Imports only the standard library and yaml: the helm stand-in runs it at every call.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import yaml

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "hazard-cascade"
OPERATOR_NAMESPACE, OPERATOR_DEPLOYMENT = "kuberay-system", "kuberay-operator"
RELEASE = "hazard-cascade"
APP = "hazard-cascade"
IMAGE_REPO = "ghcr.io/hazard-cascade/hazard-cascade"
# The models the stand-in chart renders by default (`serve.app.args.<role>.name` and
# `.version` override them).
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
                self.body = body
                with owner.lock:
                    owner.requests.append((method, url.path, dict(self.headers), body))
                    owner.times.append(time.monotonic())
                    status, payload, *extra = owner.handle(
                        method, url.path, parse_qs(url.query), self
                    )
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (extra[0] if extra else {}).items():  # handle's extra headers
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                self._serve("GET")

            def do_POST(self):  # noqa: N802
                self._serve("POST")

            def do_PUT(self):  # noqa: N802
                self._serve("PUT")

            def do_DELETE(self):  # noqa: N802
                self._serve("DELETE")

            def do_PATCH(self):  # noqa: N802
                self._serve("PATCH")

            def log_message(self, *args):
                pass

        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.times: list[float] = []  # time.monotonic() of each request
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
    pending_app_status: str = "DEPLOYING",
) -> dict:
    """A RayService object as KubeRay 1.7 writes its status (`pending`: the new cluster of a
    blue/green upgrade, its app in `pending_app_status`)."""
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
            "pendingServiceStatus": {
                "rayClusterName": pending,
                "applicationStatuses": {APP: {"status": pending_app_status, "message": ""}},
            }
            if pending
            else {},
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


LEASES = "leases.coordination.k8s.io"
# metav1.MicroTime as the API server parses it (Go layout 2006-01-02T15:04:05.000000Z07:00).
_MICRO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)")


def micro_time(when: datetime) -> str:
    """`when` as the API server writes a MicroTime."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseStore:
    """`coordination.k8s.io/v1` Leases as the API server keeps them: every write bumps one
    resourceVersion counter; create of an existing name is 409 AlreadyExists; an update or a
    delete precondition naming another resourceVersion is 409 Conflict; MicroTimes are parsed
    strictly. `forbidden` makes every lease call 403 (the deployer's Role lacks leases)."""

    def __init__(self):
        self.items: dict[tuple[str, str], dict] = {}
        self.forbidden = False
        self.conflicts = 0  # 409s answered
        self._version = 0
        self._racer: str | None = None
        self._lock = threading.RLock()

    def _stored(self, namespace: str, obj: dict) -> dict:
        self._version += 1
        meta = obj.setdefault("metadata", {})
        meta.update(namespace=namespace, resourceVersion=str(self._version))
        meta.setdefault("uid", f"lease-{self._version}")
        meta.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        obj.update(apiVersion="coordination.k8s.io/v1", kind="Lease")
        self.items[(namespace, meta["name"])] = obj
        return obj

    def seed(
        self,
        holder: str,
        renewed_ago_s: float = 0.0,
        duration_s: int = 120,
        name: str = f"{RELEASE}-rollout",
        namespace: str = NAMESPACE,
    ) -> dict:
        """Store a Lease held by `holder` (acquired then, renewed `renewed_ago_s` ago)."""
        renewed = datetime.now(UTC) - timedelta(seconds=renewed_ago_s)
        spec = {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration_s,
            "acquireTime": micro_time(renewed - timedelta(seconds=duration_s / 3)),
            "renewTime": micro_time(renewed),
            "leaseTransitions": 0,
        }
        with self._lock:
            old = self.items.get((namespace, name))
            if old:  # a new holder over the current one
                spec["leaseTransitions"] = old["spec"].get("leaseTransitions", 0) + 1
            return self._stored(namespace, {"metadata": {"name": name}, "spec": spec})

    def get(self, name: str = f"{RELEASE}-rollout", namespace: str = NAMESPACE) -> dict | None:
        with self._lock:
            obj = self.items.get((namespace, name))
            return json.loads(json.dumps(obj)) if obj else None

    def delete(self, name: str = f"{RELEASE}-rollout", namespace: str = NAMESPACE) -> None:
        with self._lock:
            del self.items[(namespace, name)]

    def race_next_write(self, holder: str) -> None:
        """Another deployer's write lands just before the next create or update: as if it had
        read the Lease at the same moment and written first."""
        self._racer = holder

    def handle(self, method: str, namespace: str, name: str | None, body: bytes):
        with self._lock:
            return self._handle(method, namespace, name, json.loads(body) if body else {})

    def _handle(self, method: str, namespace: str, name: str | None, body: dict):
        verb = {"GET": "get", "POST": "create", "PUT": "update", "DELETE": "delete"}[method]
        if self.forbidden:
            return _status(
                403,
                "Forbidden",
                f'{LEASES} "{name or ""}" is forbidden: User "system:serviceaccount:{namespace}:'
                f'hazard-deployer" cannot {verb} resource "leases" in API group '
                f'"coordination.k8s.io" in the namespace "{namespace}"',
            )
        if method == "POST":
            name = (body.get("metadata") or {}).get("name")
        if not name:
            return _status(405, "MethodNotAllowed", "list and collections are not served")
        if method in ("POST", "PUT"):
            for field in ("acquireTime", "renewTime"):
                value = (body.get("spec") or {}).get(field)
                if value is not None and not _MICRO_TIME.fullmatch(value):
                    return _status(400, "BadRequest", f"spec.{field}: cannot parse {value!r}")
            if self._racer:
                holder, self._racer = self._racer, None
                self.seed(holder, name=name, namespace=namespace)
        current = self.items.get((namespace, name))
        if method == "POST":
            if current:
                self.conflicts += 1
                return _status(409, "AlreadyExists", f'{LEASES} "{name}" already exists')
            return 201, self._stored(namespace, body)
        if current is None:
            return _status(404, "NotFound", f'{LEASES} "{name}" not found')
        if method == "GET":
            return 200, current
        version = current["metadata"]["resourceVersion"]
        if method == "PUT":
            if (body.get("metadata") or {}).get("name") != name:
                return _status(400, "BadRequest", "the name of the object does not match the URL")
            sent = body["metadata"].get("resourceVersion")
            if not sent:
                return _status(422, "Invalid", "metadata.resourceVersion: must be specified")
            if sent != version:
                self.conflicts += 1
                return _status(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {LEASES} "{name}": the object has been '
                    "modified; please apply your changes to the latest version and try again",
                )
            return 200, self._stored(namespace, body)
        sent = ((body.get("preconditions") or {}).get("resourceVersion")) or version
        if sent != version:
            self.conflicts += 1
            return _status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {LEASES} "{name}": the ResourceVersion in the '
                f"precondition ({sent}) does not match the ResourceVersion in record ({version})",
            )
        del self.items[(namespace, name)]
        return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}


# What the stand-in's API discovery lists: path -> group/version, kind -> (group/version, plural)
DISCOVERY = {"api/v1": "v1", "apis/ray.io/v1": "ray.io/v1"}
KINDS = {"ServiceAccount": ("v1", "serviceaccounts"), "RayService": ("ray.io/v1", "rayservices")}


class KubeStandIn(_Server):
    """The parts of a Kubernetes API server a rollout reads, for one cluster."""

    def __init__(self, token: str):
        self.token = token
        self.scripts: dict[str, list[dict]] = {}
        self.pods: list[dict] = []
        self.warnings: list[tuple[str, str, str]] = []  # (object name, reason, message)
        self.leases = LeaseStore()
        self.helm: tuple[Path, str] | None = None  # (helm stand-in state, this context)
        self.after_rollback: dict[str, list[dict]] = {}
        self.deny: set[str] = set()  # resources (e.g. "rayservices") whose GETs are answered 403
        # server-side dry runs: kind -> (status, message) the "admission" answers; the admitted
        # objects, with the query they came with
        self.refuse: dict[str, tuple[int, str]] = {}
        self.dry_runs: list[tuple[str, dict, dict]] = []
        # The KubeRay operator's Deployment (OPERATOR_NAMESPACE/OPERATOR_DEPLOYMENT): its image,
        # labels, and the HTTP status a GET answers (404: not installed; 403: not allowed).
        self.operator_image = "quay.io/kuberay/operator:v1.7.0"
        self.operator_labels: dict[str, str] = {}
        self.operator_status = 200
        super().__init__()

    def script(self, name: str, *objects: dict) -> None:
        """The RayService objects successive GETs of `name` return (the last one stays)."""
        self.scripts[name] = list(objects)

    def _rayservice(self, name: str) -> dict | None:
        """The next scripted object of `name`; once the helm stand-in rolled the release back,
        the `after_rollback` script (default: running the previous spec); after an uninstall,
        none."""
        state = release_state(*self.helm) if self.helm else "live"
        if state == "gone":
            return None
        if state == "rolled back":
            script = self.after_rollback.setdefault(name, [rayservice(name, 99, 99)])
        else:
            script = self.scripts.get(name, [])
        if not script:
            return None
        return script.pop(0) if len(script) > 1 else script[0]

    def _deployment(self, namespace: str, name: str) -> tuple[int, dict]:
        """GET of a Deployment: only the operator's exists."""
        if self.operator_status == 403:
            why = f'cannot get resource "deployments" in API group "apps" in namespace {namespace}'
            return _status(403, "Forbidden", f'deployments.apps "{name}" is forbidden: {why}')
        if (namespace, name) != (OPERATOR_NAMESPACE, OPERATOR_DEPLOYMENT) or (
            self.operator_status == 404
        ):
            return _status(404, "NotFound", f'deployments.apps "{name}" not found')
        labels = {"app.kubernetes.io/name": "kuberay-operator"}
        container = {"name": "kuberay-operator", "image": self.operator_image}
        meta = {"name": name, "namespace": namespace, "labels": {**labels, **self.operator_labels}}
        return 200, {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta,
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
            },
        }

    def _dry_run(self, path, query, request) -> tuple[int, dict]:
        """A server-side apply; the stand-in takes dry runs only (a real apply is helm's)."""
        if query.get("dryRun") != ["All"]:
            return _status(400, "BadRequest", "the stand-in applies nothing: dryRun=All only")
        if request.headers.get("Content-Type") != "application/apply-patch+yaml":
            return _status(415, "UnsupportedMediaType", "server-side apply takes apply-patch+yaml")
        obj = yaml.safe_load(request.body)
        group_version, plural = KINDS.get(obj.get("kind"), ("?", "?"))
        root = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
        if path != f"{root}/namespaces/{NAMESPACE}/{plural}/{obj['metadata']['name']}":
            return _status(404, "NotFound", f"no route {path} for {obj.get('kind')}")
        self.dry_runs.append((path, obj, query))
        if obj["kind"] in self.refuse:
            code, message = self.refuse[obj["kind"]]
            return _status(code, "Invalid" if code == 422 else "Forbidden", message)
        return 200, obj

    def add_pods(self, cluster: str, ready: int, not_ready: int = 0) -> None:
        for i in range(ready + not_ready):
            self.pods.append(_pod(f"{cluster}-pod-{i}", cluster, i < ready))

    def rayservice_gets(self) -> int:
        return sum("/rayservices/" in p for p in self.paths("GET"))

    def handle(self, method, path, query, request):
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized", "Unauthorized")
        parts = path.strip("/").split("/")
        lease_api = ["apis", "coordination.k8s.io", "v1", "namespaces"]
        if parts[:4] == lease_api and len(parts) in (6, 7) and parts[5] == "leases":
            name = parts[6] if len(parts) == 7 else None
            return self.leases.handle(method, parts[4], name, request.body)
        if method == "GET" and parts[5:6] and parts[5] in self.deny:
            return _status(403, "Forbidden", f"{parts[5]} is forbidden: stand-in")
        if method == "GET" and path.strip("/") in DISCOVERY:
            group_version = DISCOVERY[path.strip("/")]
            resources = [
                {"name": plural, "kind": kind, "namespaced": True, "verbs": ["get", "patch"]}
                for kind, (gv, plural) in KINDS.items()
                if gv == group_version
            ]
            return 200, {"kind": "APIResourceList", "groupVersion": group_version,
                         "resources": resources}  # fmt: skip
        if method == "PATCH":
            return self._dry_run(path, query, request)
        if parts[:3] == ["apis", "ray.io", "v1"] and len(parts) == 7 and parts[5] == "rayservices":
            obj = self._rayservice(parts[6]) if parts[4] == NAMESPACE else None
            if obj is None:
                return _status(404, "NotFound", f'rayservices.ray.io "{parts[6]}" not found')
            return 200, obj
        if parts[:3] == ["apis", "apps", "v1"] and len(parts) == 7 and parts[5] == "deployments":
            return self._deployment(parts[4], parts[6])
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
        self.refusals = 0  # POST /v1/score answers this many 503s (Retry-After: 0) first
        self.helm: tuple[Path, str] | None = None  # (helm stand-in state, this context)
        # once the helm stand-in rolled the release back: the previous version's answers
        self.after_rollback = {"readyz": [200], "models": [served()]}
        super().__init__()

    def _next(self, what: str) -> object:
        rolled_back = self.helm and release_state(*self.helm) == "rolled back"
        script = self.after_rollback[what] if rolled_back else getattr(self, what)
        return script.pop(0) if len(script) > 1 else script[0]

    def handle(self, method, path, query, request):
        if method == "GET" and path == "/readyz":
            code = self._next("readyz")
            return code, {"status": "ready" if code == 200 else "not ready", "ready": code == 200}
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return 401, {"detail": "missing or wrong API key"}
        if method == "GET" and path == "/v1/models":
            models = self._next("models")
            return 200, {"models": models, "labels": [], "fusion": {}}
        if method == "POST" and path == "/v1/score":
            if self.refusals > 0:
                self.refusals -= 1
                return 503, {"detail": "overloaded: try again"}, {"Retry-After": "0"}
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
        "from tests.helpers.deploy import helm_main\nsys.exit(helm_main(sys.argv[1:]))\n"
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
    models = {r: {"name": n, "version": DEFAULT_VERSION} for r, n in MODEL_NAMES.items()}
    if values:
        tag = str((yaml.safe_load(Path(values).read_text()) or {}).get("image", {}).get("tag", tag))
    for item in sets:
        key, _, value = item.partition("=")
        if key == "image.tag":
            tag = value
        role, _, field = key.removeprefix("serve.app.args.").partition(".")
        if key.startswith("serve.app.args.") and role in models and field in ("name", "version"):
            models[role][field] = value
    app = {"name": APP, "import_path": "serve.app:build_app", "args": models}
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


def release_state(state: Path, context: str) -> str:
    """ "live", "rolled back" (the deployed revision is a `helm rollback`) or "gone" (uninstalled
    after the stand-in saw it) for the release on `context`, from the helm stand-in's state."""
    data = json.loads(state.read_text())
    if context in data.get("uninstalled", []):
        return "gone"
    revisions = data["releases"].get(release_key(context, NAMESPACE, RELEASE), [])
    deployed = [r for r in revisions if r["status"] == "deployed"]
    return (
        "rolled back" if deployed and deployed[-1]["description"].startswith("Rollback") else "live"
    )


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
_BOOL_FLAGS = {
    *("--install", "--no-hooks", "--skip-tests", "--is-upgrade", "--dry-run=server"),
    "--hide-secret",
}


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


def _write_state(path: Path, state: dict) -> None:
    """Replace the state file at once: the API stand-ins read it while helm runs."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def helm_main(args: list[str]) -> int:
    """The stand-in `helm`: one at a time per state file (parallel clusters of a wave run
    several), like each cluster's own release records would be."""
    state_path = Path(os.environ["HELM_STANDIN_STATE"])
    with open(state_path.with_name(f".{state_path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _helm_main(args, state_path)


def _helm_main(args: list[str], state_path: Path) -> int:
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
    failing = "dry-run" if "--dry-run=server" in flags else command  # fail_on(..., "dry-run")
    if failing in state["fail"].get(context, []):
        return _fail(f"{failing} failed: Unauthorized (stand-in)")
    sets = values.get("--set", [])
    vals = values.get("--values", [None])[0]

    def save() -> None:
        state["releases"][key] = revisions
        _write_state(state_path, state)

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
        if "--dry-run=server" in flags:  # renders; records no revision
            number = max((r["revision"] for r in revisions), default=0) + 1
            info = {"status": "pending-upgrade", "description": "Dry run complete"}
            print(json.dumps({"name": release, "info": info, "manifest": manifest,
                              "version": number, "namespace": namespace}))  # fmt: skip
            return 0
        if context in state.get("uninstalled", []):
            state["uninstalled"].remove(context)
        number = add("deployed", manifest, "Upgrade complete")
        save()
        info = {"status": "deployed", "description": "Upgrade complete", "notes": "..."}
        print(json.dumps({"name": release, "info": info, "manifest": manifest, "version": number,
                          "namespace": namespace, "apply_method": "ssa"}))  # fmt: skip
    elif command == "show" and words[1:2] == ["chart"]:
        chart = Path(words[2]) / "Chart.yaml"
        if not chart.is_file():
            return _fail(f"path {str(chart.parent)!r} not found")
        print(chart.read_text(), end="")
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
        state.setdefault("uninstalled", []).append(context)
        _write_state(state_path, state)
        print(f'release "{release}" uninstalled')
    else:
        return _fail(f'unknown command "{command}" for "helm"')
    return 0
