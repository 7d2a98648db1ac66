"""The OpenAPI document: what FastAPI derives from the routes, completed with what the routes
cannot say about themselves.

Routes declare their own answers (`responses=` in their decorators: 404, 409, 422, ...). The
middleware in front of them answers too, before any route runs: access control (401, 403, 429,
415, 503), the body limits (408, 413) and the database pool's 503. `install_openapi` adds those
answers to every operation they apply to, with their real body (`ErrorBody`) and headers
(`Retry-After`, `WWW-Authenticate`), declares the bearer scheme, and puts the twin spec's typed
model and learner (`app.spec_schema`, generated from what `twin/` declares) into the components.
`docs/api.md` describes the result.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from app.access_rules import BODY_METHODS, required_scope
from app.spec_schema import resolve_placeholders, spec_components

ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
CHALLENGE = {
    "WWW-Authenticate": {
        "description": 'The bearer challenge: `Bearer realm="tandem"` (with '
        '`error="invalid_token"` for a key that is unknown or revoked).',
        "schema": {"type": "string"},
    }
}

# answers of the access control in front of every route that needs a key (app.auth)
PROTECTED = {
    "401": ("No API key, or an unknown or revoked one (`unauthorized`).", CHALLENGE),
    "403": ("Outside the key's scopes or twins (`forbidden`).", None),
    "429": (
        "Over the key's rate (`rate_limited`); retry after `Retry-After` seconds.",
        RETRY_AFTER,
    ),
    "503": (
        "The service is busy: no database connection came free in time (`busy`), or the API "
        "keys could not be read (`unavailable`); retry after `Retry-After` seconds.",
        RETRY_AFTER,
    ),
}
# answers to a request body, before the route runs (app.limits, app.auth, FastAPI's parser)
WITH_BODY = {
    "400": ("The body could not be read as the content type it declares (`http_error`).", None),
    "408": ("The body did not arrive within `TANDEM_BODY_TIMEOUT` seconds (`timeout`).", None),
    "413": ("The body is over the route's size limit (`too_large`).", None),
}
CROSS_SITE = (
    "415",
    "A content type a web page could send cross-site (`text/plain`, form types) or a body "
    "without one (`unsupported_media_type`).",
)
INVALID = "Invalid request; `errors` names each field (`invalid`)."


def complete(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the middleware's answers, the bearer scheme and the spec components to `schema`."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})["apiKey"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key from `tandem keys create` or `POST /keys`.",
    }
    schemas = components.setdefault("schemas", {})
    for name, component in schemas.items():
        schemas[name] = resolve_placeholders(component)
    schemas.update(spec_components())
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            _complete_operation(path, method.upper(), operation)
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422, never answered
        schemas.pop(name, None)
    return schema


def _complete_operation(path: str, method: str, operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    default_422 = responses.get("422", {}).get("content", {}).get("application/json", {})
    if "HTTPValidationError" in str(default_422.get("schema")):
        responses["422"] = _error(INVALID)
    has_body = "requestBody" in operation
    if has_body:
        for code, (description, headers) in WITH_BODY.items():
            responses.setdefault(code, _error(description, headers))
    if required_scope(method, path) is None:
        return
    operation["security"] = [{"apiKey": []}]
    for code, (description, headers) in PROTECTED.items():
        responses.setdefault(code, _error(description, headers))
    if method in BODY_METHODS:
        responses.setdefault(CROSS_SITE[0], _error(CROSS_SITE[1]))


def _error(description: str, headers: dict | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": ERROR}
    if headers:
        response["headers"] = headers
    return response


def install_openapi(app: FastAPI) -> None:
    """Serve the completed document at `/openapi.json` (built once, on first request)."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = complete(build())
        return app.openapi_schema

    app.openapi = openapi
