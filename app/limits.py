"""Limits on what one request may cost the service before any route runs.

`BodyLimits` is an ASGI middleware that reads every request body before the app sees it:
a declared `Content-Length` over the limit is refused with 413 before a byte is read, a
streamed (chunked) body is counted as it arrives and refused with 413 when it passes the limit,
and a body that does not arrive within `body_timeout` seconds gets 408. Since the body is read
first, no route (and no dependency: database sessions included) starts for a client that stalls
after its headers. Observation routes take `max_body_bytes`; every other route the smaller
`max_request_bytes`, since a JSON object tree costs many times its text in memory.

`pool_exhausted` answers 503 with `Retry-After` when no database connection comes free within
`pool_timeout` seconds (SQLAlchemy's pool `TimeoutError`), instead of a 500.
"""

from __future__ import annotations

import logging
from typing import Annotated

import anyio
import orjson
from fastapi import FastAPI, Path, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings
from app.errors import Invalid, error_body

log = logging.getLogger("tandem.limits")

MAX_INT64 = 2**63 - 1  # ids and sequence numbers are 64-bit signed integers in the database
RETRY_AFTER_SECONDS = 1

TwinId = Annotated[int, Path(ge=1, le=MAX_INT64, description="The twin's id.")]


def body_limit(path: str, settings: Settings) -> int:
    """The largest body the route at `path` takes: observation batches get the large limit."""
    if path.rstrip("/").endswith("/observations"):
        return settings.max_body_bytes
    return settings.max_request_bytes


class BodyLimits:
    """Read the whole body (bounded in size and time) before calling the app, then replay it."""

    def __init__(self, app: ASGIApp, settings: Settings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(scope["path"], self.settings)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(
                send, 413, "too_large", f"the body has {declared} bytes; the limit is {limit}"
            )
            return
        chunks: list[bytes] = []
        size = 0
        disconnected = False
        with anyio.move_on_after(self.settings.body_timeout) as deadline:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected = True
                    break
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    await _refuse(
                        send, 413, "too_large", f"the body exceeds the limit of {limit} bytes"
                    )
                    return
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        if deadline.cancelled_caught:
            timeout = self.settings.body_timeout
            await _refuse(send, 408, "timeout", f"the body did not arrive within {timeout:g} s")
            return
        if disconnected:
            return  # nobody is left to answer
        await self.app(scope, _replay(b"".join(chunks), receive), send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the buffered body once, then waits on the client (disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(send: Send, status: int, code: str, detail: str) -> None:
    """Answer with the error body and close the connection (the rest of the body is unread)."""
    body = orjson.dumps(error_body(code, detail))
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def pool_exhausted(_request: Request, exc: PoolTimeout) -> JSONResponse:
    """No database connection came free in time: the service is busy, not broken."""
    log.warning("database pool exhausted: %s", exc.__class__.__name__)
    body = error_body("busy", "the service is busy; retry shortly")
    return JSONResponse(body, 503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def pool_options(settings: Settings) -> dict:
    """Engine keyword arguments bounding the API's connection pool and its wait."""
    if settings.database_url in ("sqlite://", "sqlite:///:memory:"):
        return {}  # one shared connection (StaticPool): nothing to size
    return {
        "pool_size": settings.pool_size,
        "max_overflow": settings.pool_overflow,
        "pool_timeout": settings.pool_timeout,
    }


def install_limits(app: FastAPI, settings: Settings) -> None:
    """The body limits and the 503 handler. Install before access control, whose middleware then
    wraps this one: a request without a valid key is refused before its body is read, and no
    route or dependency runs before the body is in."""
    app.add_exception_handler(PoolTimeout, pool_exhausted)
    app.add_middleware(BodyLimits, settings=settings)


# -- what a twin may cost: checked at `POST /twins` and at each what-if ------------------------
# (twin imports are local: they pull in torch, which the API loads only when it needs it)
def update_budget(settings: Settings):
    """The `twin.learners.cost.Budget` a new twin's spec must fit."""
    from twin.learners.cost import Budget

    return Budget(
        max_channels=settings.max_channels,
        max_parameters=settings.max_parameters,
        max_memory_bytes=settings.max_update_memory_mb * 2**20,
        max_seconds=settings.max_update_seconds,
    )


def check_whatif(spec: dict, horizon: int, settings: Settings) -> None:
    """Refuse (422 on `inputs`) a what-if whose paths would hold too many values or take too
    long; the detail says how many steps this twin may ask for."""
    from twin.learners.cost import whatif_cost
    from twin.replica import PREDICT_PATHS
    from twin.spec import TwinSpec

    twin_spec = TwinSpec.from_dict(spec)
    values, seconds = whatif_cost(twin_spec, horizon, PREDICT_PATHS)
    if values <= settings.max_whatif_values and seconds <= settings.max_whatif_seconds:
        return
    per_step = max(values / settings.max_whatif_values, seconds / settings.max_whatif_seconds)
    steps = max(int(horizon / per_step), 1)
    detail = (
        f"a what-if of {horizon} steps over {PREDICT_PATHS} paths exceeds this twin's limit "
        f"({settings.max_whatif_values} values, {settings.max_whatif_seconds:g} s)"
    )
    raise Invalid(detail, [{"field": "inputs", "message": f"at most about {steps} rows"}])
