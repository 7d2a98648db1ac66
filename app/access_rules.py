"""The access rules: which scope each route needs, what counts as reaching beyond loopback,
and which request bodies a JSON endpoint accepts. `app.auth` enforces them; docs/security.md
explains them.
"""

from __future__ import annotations

import ipaddress
import re

from starlette.routing import compile_path

from app.config import Settings

# routes anyone may call: probes, and the API's own description (it holds no data)
OPEN = frozenset(
    {
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/docs/oauth2-redirect"),
        ("GET", "/redoc"),
        # the dashboard's pages: shells whose scripts read the API with the user's key
        ("GET", "/"),
        ("GET", "/ui/twins/{twin_id}"),
    }
)
# routes whose scope is not the default (GET: read; anything else: admin)
SCOPE_OF = {
    ("POST", "/twins/{twin_id}/observations"): "ingest",
    ("POST", "/observations"): "ingest",
    ("POST", "/twins/{twin_id}/predict"): "read",
    ("GET", "/keys"): "admin",
}
# routes without a twin in their path that show a twin-limited key only its own twins
FILTERS_TWINS = frozenset({("GET", "/twins")})
# routes whose body names twins row by row: the route checks each row against a twin-limited key
CHECKS_ROW_TWINS = frozenset({("POST", "/observations")})

# package assets (API docs, dashboard scripts and styles): no data, open to GET
STATIC_PREFIX = "/static/"

# bodies a web page can make a browser send cross-site without asking first (a CORS preflight):
# the Fetch standard's CORS-safelisted content types. Refused (415), as is a body without a
# type; every other type makes the browser ask, and endpoints check the types they take.
SIMPLE_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def required_scope(method: str, path: str) -> str | None:
    """The scope a route needs (None: open to anyone)."""
    method = "GET" if method == "HEAD" else method
    if (method, path) in OPEN or (method == "GET" and path.startswith(STATIC_PREFIX)):
        return None
    return SCOPE_OF.get((method, path), "read" if method == "GET" else "admin")


def route_table(routes) -> list[tuple[re.Pattern, str, frozenset[str] | None]]:
    """(regex, template, methods) of every route an app serves, included routers unfolded."""
    try:
        from fastapi.routing import iter_route_contexts  # FastAPI with lazily included routers
    except ImportError:  # older FastAPI copies included routes into the app's list
        contexts = list(routes)
    else:
        contexts = list(iter_route_contexts(routes))
    table = []
    for route in contexts:
        template = getattr(route, "path_format", None) or getattr(route, "path", None)
        if template is None:
            continue
        methods = getattr(route, "methods", None)
        regex = compile_path(template)[0]
        table.append((regex, template, None if methods is None else frozenset(methods)))
    return table


# -- when authentication is on ------------------------------------------------------------------
def is_loopback_host(host: str) -> bool:
    """Whether a listen address reaches only this machine; a name other than localhost counts as
    reaching beyond it (it may resolve to anything)."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def beyond_loopback(listen_host: str | None, server: tuple | list | None) -> bool:
    """Whether the service can be reached from other machines: from the address it was told it
    listens on, or else from the local address of the connection (an ASGI server that was not
    told; the in-process test client and Unix sockets have no IP address and count as local)."""
    if listen_host is not None:
        return not is_loopback_host(listen_host)
    host = server[0] if server else None
    try:
        address = ipaddress.ip_address(host)
    except (TypeError, ValueError):
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return not (mapped or address).is_loopback


def describe(settings: Settings, listen_host: str | None, keys: int) -> tuple[bool | None, str]:
    """Whether authentication is on (None: per connection) and why, for the start-up log."""
    if settings.auth != "auto":
        return settings.auth == "on", f"TANDEM_AUTH={settings.auth}"
    if keys:
        return True, f"{keys} API key(s) exist (TANDEM_AUTH=auto)"
    if listen_host is None:
        return None, (
            "no API key exists and the listen address is unknown: on for connections that "
            "arrive on a non-loopback address (TANDEM_AUTH=auto)"
        )
    if beyond_loopback(listen_host, None):
        return True, f"listening on {listen_host}, beyond loopback (TANDEM_AUTH=auto)"
    return False, (
        f"listening on {listen_host} (loopback) and no API key exists (TANDEM_AUTH=auto); "
        "it turns on when a key is created"
    )
