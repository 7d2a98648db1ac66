"""Access control: which key may call which route, how often, and with which content types.

`AccessControl` sits in front of the router, so a request is refused before its body is read:
401 without a valid key, 429 past the key's rate, 403 outside its scopes or twins, 415 for a
body a browser could send cross-site without a preflight. Each route's scope comes from the
table in `app.access_rules`; a route missing from it needs `read` for GET and `admin` for
anything else, so a new route is never left open. `docs/security.md` explains the rules.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from prometheus_client import Counter
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse

from app.access_rules import (
    BODY_METHODS,
    CHECKS_ROW_TWINS,
    FILTERS_TWINS,
    SIMPLE_TYPES,
    beyond_loopback,
    describe,
    required_scope,
    route_table,
)
from app.config import Settings
from app.errors import error_body
from app.ratelimit import RateLimiter
from app.services.keys import KeyInfo, KeyRing, key_hash

log = logging.getLogger("tandem.auth")

ACCESS = "tandem.access"  # where a request's `Access` is left in the ASGI scope for routes


@dataclass(frozen=True)
class Access:
    """Who is calling: a key, or nobody when authentication is off."""

    key: KeyInfo | None

    def sees(self, twin_id: int) -> bool:
        return self.key is None or self.key.twins is None or twin_id in self.key.twins


def get_access(request: Request) -> Access:
    return request.scope.get(ACCESS) or Access(None)


AccessDep = Annotated[Access, Depends(get_access)]


# -- the middleware -----------------------------------------------------------------------------
def _refusal(status: int, code: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, detail), status, headers=headers)


class AccessControl:
    """ASGI middleware: authentication, rate limits, scopes, twin limits and content types."""

    def __init__(self, app, fastapi_app: FastAPI):
        self.app = app
        self.fastapi_app = fastapi_app
        state = fastapi_app.state
        self.settings: Settings = state.settings
        self.keyring: KeyRing = state.keyring
        self.limiter = RateLimiter(self.settings.rate_limit, self.settings.rate_burst)
        self.requests = Counter(
            "key_requests",
            "HTTP requests per API key (by key name) and status.",
            ["key", "status"],
            registry=state.metrics.registry,
        )
        self._routes: tuple[int, list] | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._announcing(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = "GET" if scope["method"] == "HEAD" else scope["method"]
        template, params = self._match(scope)
        if template is not None and required_scope(method, template) is None:
            await self.app(scope, receive, send)
            return
        if template is not None:  # so that request metrics name the route of a refusal too
            scope.setdefault("route", RouteName(template))
        try:
            key = await self._key(scope)
        except Refused as e:
            await _unauthorized(e.presented)(scope, receive, send)
            return
        except Exception:
            log.exception("could not read the API keys")
            refusal = _refusal(503, "unavailable", "API keys could not be read; try again")
            refusal.headers["Retry-After"] = "1"
            await refusal(scope, receive, send)
            return
        refusal = None if key is None else self._authorize(key, method, template, params)
        refusal = refusal or self._content_type(scope)
        if key is not None:
            send = self._counting(send, key.name)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        scope[ACCESS] = Access(key)
        await self.app(scope, receive, send)

    def _match(self, scope) -> tuple[str | None, dict]:
        """The route template a request is for (with another method if only that differs)
        and its path parameters, as strings."""
        routes = self.fastapi_app.routes
        if self._routes is None or self._routes[0] != len(routes):
            self._routes = (len(routes), route_table(routes))
        path, partial = scope["path"], None
        for regex, template, methods in self._routes[1]:
            found = regex.match(path)
            if found is None:
                continue
            if methods is None or scope["method"] in methods:
                return template, found.groupdict()
            partial = partial or (template, found.groupdict())
        return partial or (None, {})

    async def _key(self, scope) -> KeyInfo | None:
        """The request's key; None when authentication is off. Raises `Refused` (401)."""
        if self.settings.auth == "off":
            return None
        keys = self.keyring.fresh()
        if keys is None:
            keys = await run_in_threadpool(self.keyring.load)
        listen_host = self.fastapi_app.state.listen_host
        if (
            self.settings.auth == "auto"
            and not keys
            and not beyond_loopback(listen_host, scope.get("server"))
        ):
            return None
        secret = _bearer(scope)
        key = keys.get(key_hash(secret)) if secret else None
        if key is None:
            raise Refused(secret is not None)
        return key

    def _authorize(self, key: KeyInfo, method: str, template: str | None, params: dict):
        wait = self.limiter.wait(key)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            return _refusal(
                429,
                "rate_limited",
                f"API key {key.name!r} is over its rate; retry in {retry} s",
                {"Retry-After": str(retry)},
            )
        if template is None:
            return None  # no such route: any valid key learns that (404 or 405)
        scope = required_scope(method, template)
        if scope is not None and not key.has_scope(scope):
            return _refusal(
                403,
                "forbidden",
                f"{method} {template} needs the {scope!r} scope; API key {key.name!r} has "
                f"{', '.join(sorted(key.scopes))}",
            )
        if key.twins is None:
            return None
        if "twin_id" in params:
            twin_id = params["twin_id"]
            if str(twin_id).isdigit() and int(twin_id) in key.twins:
                return None
            return _refusal(403, "forbidden", f"API key {key.name!r} may not use twin {twin_id}")
        if (method, template) in FILTERS_TWINS or (method, template) in CHECKS_ROW_TWINS:
            return None
        return _refusal(
            403,
            "forbidden",
            f"API key {key.name!r} is limited to some twins; {method} {template} covers all",
        )

    @staticmethod
    def _content_type(scope) -> JSONResponse | None:
        if scope["method"] not in BODY_METHODS:
            return None
        headers = dict(scope["headers"])
        declared = headers.get(b"content-type")
        if declared is None:
            has_body = headers.get(b"content-length", b"0") != b"0" or (
                b"transfer-encoding" in headers
            )
            if not has_body:
                return None
            media = "none"
        else:
            media = declared.decode("latin-1").split(";")[0].strip().lower()
            if media not in SIMPLE_TYPES:
                return None  # a type the browser asks about first; the endpoint checks it
        return JSONResponse(
            error_body(
                "unsupported_media_type",
                f"Content-Type {media!r} is not accepted: any web page can make a browser send "
                "it. Send application/json (observations also take application/x-ndjson and "
                "text/csv)",
                [{"field": "content-type", "message": f"{media!r} is not accepted"}],
            ),
            415,
        )

    def _counting(self, send, name: str):
        async def counted(message):
            if message["type"] == "http.response.start":
                self.requests.labels(name, str(message["status"])).inc()
            await send(message)

        return counted

    def _announcing(self, send):
        async def announced(message):
            if message["type"] == "lifespan.startup.complete":
                await run_in_threadpool(self._announce)
            await send(message)

        return announced

    def _announce(self) -> None:
        try:
            keys = len(self.keyring.load()) if self.settings.auth == "auto" else 0
        except Exception as e:
            log.warning("authentication: API keys could not be read (%s)", type(e).__name__)
            keys = 0
        on, why = describe(self.settings, self.fastapi_app.state.listen_host, keys)
        state = {True: "on", False: "off", None: "per connection"}[on]
        log.log(
            logging.WARNING if on is False else logging.INFO, "authentication %s: %s", state, why
        )


@dataclass(frozen=True)
class RouteName:
    """Stands for the route in the ASGI scope until the router puts the route itself there."""

    path: str


class Refused(Exception):
    """No key, or a key that is not (any longer) in the keys table: 401."""

    def __init__(self, presented: bool):
        super().__init__("invalid key" if presented else "no key")
        self.presented = presented


def _unauthorized(presented: bool) -> JSONResponse:
    if presented:
        detail, challenge = (
            "unknown or revoked API key",
            'Bearer realm="tandem", error="invalid_token"',
        )
    else:
        detail, challenge = (
            "an API key is needed: send Authorization: Bearer KEY",
            'Bearer realm="tandem"',
        )
    return _refusal(401, "unauthorized", detail, {"WWW-Authenticate": challenge})


def _bearer(scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return ""
    return None


# -- wiring -------------------------------------------------------------------------------------
def install_access(app: FastAPI, settings: Settings) -> None:
    """Keys routes, the access middleware and CORS when origins are configured (`app.openapi`
    documents their answers). `tandem serve` sets `app.state.listen_host`."""
    from app.routes import keys

    app.state.listen_host = None
    app.state.keyring = KeyRing(lambda: app.state.sessions, settings.key_refresh_seconds)
    app.include_router(keys.router)
    app.add_middleware(AccessControl, fastapi_app=app)
    if settings.cors_origins:  # outside access control: preflights carry no key
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Retry-After", "Location"],
            max_age=600,
        )
