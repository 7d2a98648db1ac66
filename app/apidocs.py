"""Swagger UI at /docs and ReDoc at /redoc, served from the package (their scripts come with
the `fastapi-offline` distribution), so the API documents itself on a plant network with no
internet, where FastAPI's defaults (scripts from a CDN) show blank pages. ReDoc's bundle names
one image on its vendor's CDN (a logo); it is served with that image pointed at a local one."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
PREFIX = "/static/api-docs"
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@cache
def redoc_bundle() -> bytes:
    """ReDoc's standalone script, its one CDN address replaced by the local favicon."""
    script = (ASSETS / "redoc.standalone.js").read_bytes()
    return script.replace(REDOC_LOGO.encode(), f"{PREFIX}/favicon.png".encode())


def install_api_docs(app: FastAPI) -> None:
    """Mount the assets and add the two pages (the app is made with docs_url=None)."""
    title = app.title

    @app.get(f"{PREFIX}/redoc.standalone.js", include_in_schema=False)
    def redoc_script() -> Response:
        headers = {"cache-control": "public, max-age=86400"}
        return Response(redoc_bundle(), media_type="text/javascript", headers=headers)

    app.mount(PREFIX, StaticFiles(directory=ASSETS), name="api-docs")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{title}: API",
            swagger_js_url=f"{PREFIX}/swagger-ui-bundle.js",
            swagger_css_url=f"{PREFIX}/swagger-ui.css",
            swagger_favicon_url=f"{PREFIX}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url,
            title=f"{title}: API reference",
            redoc_js_url=f"{PREFIX}/redoc.standalone.js",
            redoc_favicon_url=f"{PREFIX}/favicon.png",
            with_google_fonts=False,
        )
