"""A server-side dry run of a rendered manifest: every object goes through the cluster's API
server as a server-side apply with `dryRun=All` and `fieldValidation=Strict`, so its schema
(the installed CRDs' too: a field an older KubeRay does not know is an error), admission
webhooks, quotas and the deployer's write permissions are checked, and nothing is persisted.

`helm upgrade --dry-run=server` only lets the chart's `lookup` read the cluster; it sends no
object for admission. This module does, with the kube context's own client. Resource paths
come from API discovery (one GET per group/version), so any kind the chart renders works.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from hazard.deploy.cluster import REQUEST_TIMEOUT_S, KubeError

FIELD_MANAGER = "hazard-deploy-dry-run"


@dataclass(frozen=True)
class Resource:
    plural: str
    namespaced: bool


def _request(api: client.ApiClient, method: str, path: str, query=(), body=None, ctype=None):
    """One API call; returns (status, decoded JSON body)."""
    headers = {"Accept": "application/json"}
    if ctype:
        headers["Content-Type"] = ctype
    request = api.param_serialize(
        method, path, query_params=list(query), header_params=headers, body=body,
        auth_settings=["BearerToken"],
    )  # fmt: skip
    try:
        response = api.call_api(*request, _request_timeout=REQUEST_TIMEOUT_S)
        response.read()
    except (ApiException, HTTPError) as exc:
        raise KubeError(f"{method} {path}: {exc}") from exc
    try:
        payload = json.loads(response.data or b"{}")
    except ValueError:
        payload = {"message": (response.data or b"")[:200].decode(errors="replace")}
    return response.status, payload


class ServerDryRun:
    """Dry-runs manifests in one namespace through one kube context's API client."""

    def __init__(self, api: client.ApiClient, namespace: str):
        self.api, self.namespace = api, namespace
        self._kinds: dict[str, dict[str, Resource]] = {}  # apiVersion -> kind -> resource

    def _resource(self, api_version: str, kind: str) -> Resource:
        if api_version not in self._kinds:
            path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            status, found = _request(self.api, "GET", path)
            if status == 404:
                raise KubeError(f"the cluster serves no API {api_version} (its CRDs installed?)")
            if status != 200:
                raise KubeError(f"GET {path}: HTTP {status} {found.get('message', '')}", status)
            self._kinds[api_version] = {
                r["kind"]: Resource(r["name"], bool(r.get("namespaced")))
                for r in found.get("resources", [])
                if "/" not in r["name"]  # subresources such as rayservices/status
            }
        if kind not in self._kinds[api_version]:
            raise KubeError(f"the cluster's API {api_version} has no kind {kind}")
        return self._kinds[api_version][kind]

    def path(self, obj: dict) -> str:
        api_version, kind = obj["apiVersion"], obj["kind"]
        resource = self._resource(api_version, kind)
        root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        where = f"/namespaces/{self.namespace}" if resource.namespaced else ""
        return f"{root}{where}/{resource.plural}/{obj['metadata']['name']}"

    def check(self, manifest: str) -> list[str]:
        """One line per object the API server refuses ('Kind/name: why'); empty when every
        object was admitted. Discovery and connection errors raise KubeError."""
        problems = []
        for obj in yaml.safe_load_all(manifest):
            if not isinstance(obj, dict) or "kind" not in obj:
                continue
            query = [
                ("dryRun", "All"),
                ("fieldManager", FIELD_MANAGER),
                ("fieldValidation", "Strict"),
                ("force", "true"),
            ]
            status, answer = _request(
                self.api, "PATCH", self.path(obj), query, json.dumps(obj),
                "application/apply-patch+yaml",
            )  # fmt: skip
            if status >= 300:
                what = f"{obj['kind']}/{obj['metadata']['name']}"
                problems.append(f"{what}: HTTP {status} {answer.get('message', '')}".strip())
        return problems
