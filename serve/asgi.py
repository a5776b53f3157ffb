"""HTTP plumbing of the ingress: the JSON error it answers, request helpers and the request
counting middleware. Every error body is `{"detail": …}` (docs/architecture.md, "HTTP API")."""

from __future__ import annotations

from typing import TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from serve.metrics import ingress_metrics

M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """An error answered as JSON `{"detail": …}` with its HTTP status."""

    def __init__(self, status: int, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


async def api_error_response(_: Request, exc: ApiError) -> JSONResponse:
    """The FastAPI exception handler for ApiError."""
    return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)


def query_flag(value: str | None, name: str) -> bool:
    """A boolean query parameter, as declared: `true`, `false` or absent (false); anything
    else is a 422."""
    if value is None or value == "false":
        return False
    if value == "true":
        return True
    raise ApiError(422, f"query parameter {name} must be true or false, not {value[:32]!r}")


def media_type(request: Request) -> str:
    """The request's media type, lower-case, without parameters ('' when absent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def parse_body(model: type[M], body: bytes) -> M:
    """`body` (JSON) as `model`, or a 422 naming each field that does not fit."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise ApiError(
            422,
            "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()
            ),
        ) from exc


def replay(body: bytes):
    """An ASGI `receive` that hands over an already-read body once."""
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


class CountRequests:
    """ASGI middleware: requests by route template (not raw path: bounded label values) and
    status. Plain ASGI, so the body still streams to the route (it is refused mid-stream)."""

    def __init__(self, asgi):
        self.asgi = asgi

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.asgi(scope, receive, send)
        status = 500

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.asgi(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            ingress_metrics().requests.inc(tags={"route": route, "status": str(status)})
