"""API-key auth of the /v1 routes: the key a replica compares against, and the check itself.

Auth fails closed: with `auth: api_key` a replica whose env lacks the key refuses to start."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping

from fastapi import Request

from hazard.config.serve import ServingCommon
from serve.asgi import ApiError

log = logging.getLogger("ray.serve")


class MissingApiKey(RuntimeError):
    """Auth is on (`auth: api_key`) but the key's env var is unset or empty."""


def replica_api_key(cfg: ServingCommon, environ: Mapping[str, str]) -> str | None:
    """The API key the ingress compares against; None only with `auth: disabled`.

    Fails closed: with `auth: api_key` an unset or empty `api_key_env` raises MissingApiKey."""
    if cfg.auth == "disabled":
        log.warning("API key auth is disabled by the config (auth: disabled)")
        return None
    key = environ.get(cfg.api_key_env, "")
    if not key:
        raise MissingApiKey(
            f"auth is api_key but the env var {cfg.api_key_env} is unset or empty; set it "
            "(the chart reads it from apiKeySecret; `hazard serve` passes on its shell's) "
            "or set `auth: disabled` in the serving config"
        )
    return key


def authorize(request: Request, api_key: str | None) -> None:
    """A 401 unless the request carries `api_key` (`Authorization: Bearer …` or `X-API-Key`);
    nothing to check when `api_key` is None (auth disabled)."""
    if api_key is None:
        return
    header = request.headers.get("authorization", "")
    given = (
        header[7:] if header.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    )
    if not given or not hmac.compare_digest(given.encode(), api_key.encode()):
        raise ApiError(401, "missing or wrong API key", {"WWW-Authenticate": "Bearer"})
