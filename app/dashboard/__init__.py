"""The dashboard: pages served by the API itself, drawn in the browser from the same JSON API
a client uses. The pages are shells (no data is rendered into them, so they need no key); their
scripts fetch `/twins...` with the user's key, and every asset ships in this package."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")
static = StaticFiles(directory=HERE / "static")
router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def fleet_page(request: Request) -> HTMLResponse:
    """Every twin: status, calibration lag, error against the first guess, drift."""
    return templates.TemplateResponse(request, "fleet.html", {"json": "/twins"})


@router.get("/ui/twins/{twin_id}", response_class=HTMLResponse)
def twin_page(request: Request, twin_id: int) -> HTMLResponse:
    """One twin: observed against predicted, residuals with drift events, parameters over
    versions, the drift table and a what-if panel."""
    return templates.TemplateResponse(
        request, "twin.html", {"twin_id": twin_id, "json": f"/twins/{twin_id}"}
    )
