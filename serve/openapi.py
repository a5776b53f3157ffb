"""What /openapi.json says beyond the routes' response models: the error responses, the request
bodies the routes read themselves (multipart or JSON), and the two ways to send the API key."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from serve.schemas import BatchRequest, ErrorBody, ScoreItem


def error_response(description: str, headers: dict | None = None) -> dict:
    """An OpenAPI response entry with the JSON error body."""
    entry: dict = {"model": ErrorBody, "description": description}
    if headers:
        entry["headers"] = headers
    return entry


RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer"},
    }
}
AUTH_ERRORS = {
    401: error_response(
        "API key missing or wrong",
        {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    ),
}
OVERLOAD = {503: error_response("A model deployment is overloaded or unavailable", RETRY_AFTER)}
BODY_ERRORS = {
    400: error_response(
        "Invalid base64, undecodable image, side ratio >= 200:1, malformed multipart"
    ),
    413: error_response("Body, image bytes, image pixels or batch items over a limit"),
    415: error_response("Content-Type is not one the route takes"),
    422: error_response("JSON that does not fit the schema; multipart without a `file` field"),
}
SECURITY = [{"bearer": []}, {"apiKey": []}]
SCORE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "The image (PNG, JPEG or WEBP); its file name "
                            "becomes the result's id.",
                        }
                    },
                },
                "encoding": {"file": {"contentType": "image/png, image/jpeg, image/webp"}},
            },
            "application/json": {"schema": {"$ref": "#/components/schemas/ScoreItem"}},
        },
    },
    "parameters": [
        {
            "name": "explain",
            "in": "query",
            "required": False,
            # an enum without `type`: schemathesis's negative-type mutation of a typed query
            # parameter trips a CPython 3.11 ast bug (python/cpython#106905) in hypothesis
            "schema": {"enum": ["true", "false"], "default": "false"},
            "description": "Also generate a short rationale after the label is fixed (slower; "
            "transformers engine only).",
        }
    ],
    "security": SECURITY,
}


def json_body(model: type[BaseModel]) -> dict:
    """`openapi_extra` of a route that reads a JSON body of `model` itself (API key needed)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": ref}}},
        "security": SECURITY,
    }


BATCH_BODY = json_body(BatchRequest)


def install_openapi(
    app: FastAPI, bodies: Sequence[type[BaseModel]] = (ScoreItem, BatchRequest)
) -> None:
    """Make `app.openapi()` FastAPI's document plus the schemas of the request bodies the routes
    read themselves (`bodies`) and the security schemes, built once."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            _, defs = models_json_schema(
                [(model, "validation") for model in bodies],
                ref_template="#/components/schemas/{model}",
            )
            components = doc.setdefault("components", {})
            components.setdefault("schemas", {}).update(defs["$defs"])
            components["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "The API key."},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi
