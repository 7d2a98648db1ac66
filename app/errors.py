"""Domain errors and the one handler that turns them into `{"error", "detail", "errors"}` bodies.

Services raise these; only this module and the routes know HTTP status codes.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

MAX_ERRORS = 100  # errors listed in one body; the detail says how many there were


class DomainError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, detail: str, errors: list[dict[str, Any]] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []


class NotFound(DomainError):
    status_code, code = 404, "not_found"


class Forbidden(DomainError):
    status_code, code = 403, "forbidden"


class Conflict(DomainError):
    status_code, code = 409, "conflict"


class Invalid(DomainError):
    status_code, code = 422, "invalid"


class TooLarge(DomainError):
    status_code, code = 413, "too_large"


class UnsupportedMedia(DomainError):
    status_code, code = 415, "unsupported_media_type"


ERROR_DESCRIPTIONS = {
    403: "Outside the key's scopes or twins (`forbidden`).",
    404: "No such twin (`not_found`).",
    409: "Conflicts with the twin's state (`conflict`).",
    413: "Batch or body too large (`too_large`).",
    415: "Content type not accepted (`unsupported_media_type`).",
    422: "Invalid request; `errors` names each field (`invalid`).",
}


def error_responses(*codes: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries with the error body for `codes`, each described by the
    keyword `e<code>` where given (`e409="A twin has that name"`), else generically."""
    from app.schemas import ErrorBody

    return {
        c: {"model": ErrorBody, "description": described.get(f"e{c}", ERROR_DESCRIPTIONS[c])}
        for c in codes
    }


def error_body(code: str, detail: str, errors: list[dict[str, Any]] | None = None) -> dict:
    return {"error": code, "detail": detail, "errors": (errors or [])[:MAX_ERRORS]}


def field_path(loc: tuple | list) -> str:
    """("body", "model", "params", 0) -> "model.params[0]", the style SpecError uses."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] or parts
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


async def _domain_error(_request: Request, exc: DomainError) -> JSONResponse:
    return JSONResponse(error_body(exc.code, exc.detail, exc.errors), exc.status_code)


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"field": field_path(e["loc"]), "message": e["msg"]} for e in exc.errors()]
    detail = f"{len(errors)} invalid field(s) in the request"
    return JSONResponse(error_body("invalid", detail, errors), 422)


async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        error_body(code, str(exc.detail)), exc.status_code, headers=getattr(exc, "headers", None)
    )


async def _unexpected_error(_request: Request, _exc: Exception) -> JSONResponse:
    """Starlette re-raises the exception after this response, so the server still logs it."""
    return JSONResponse(error_body("internal", "internal server error"), 500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
