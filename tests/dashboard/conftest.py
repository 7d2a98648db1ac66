"""Browser tests of the dashboard: a real `uvicorn` server on loopback over a SQLite file, and
Debian's Chromium driven by Playwright with every request off loopback refused (no CDN)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
import uvicorn
from sqlalchemy import insert, select

from app import tables as t
from app.calibrator import Calibrator
from app.config import Settings
from app.db import make_engine, make_session_factory
from app.main import create_app
from tests.app.conftest import SPEC

CHROMIUM = os.environ.get("TANDEM_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(os.environ.get("TANDEM_SCREENSHOTS", "build/screenshots"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """The service on a free port (worker off: tests calibrate with `learn`)."""

    def __init__(self, url: str):
        self.database_url = url
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        app = create_app(Settings(database_url=url, worker=False, run_migrations=True))
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.http = httpx.Client(base_url=self.base, timeout=30)

    def start(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.http.get("/readyz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(10)

    def learn(self, timeout: float = 120.0) -> None:
        """Calibrate every pending observation, as the worker would."""
        engine = make_engine(self.database_url)
        try:
            Calibrator(make_session_factory(engine)).drain(timeout=timeout)
        finally:
            engine.dispose()


def clone_twins(served: Served, n: int) -> None:
    """A fleet of n twins named ahu-00000 to ahu-{n-1:05d}: the first made through the API,
    the others cloned from it in the database (creating them one by one over HTTP would take
    minutes and test twin creation, not the fleet page)."""
    first = served.http.post("/twins", json={"name": "ahu-00000", **SPEC}).json()["id"]
    engine = make_engine(served.database_url)
    with engine.begin() as db:
        twin = db.execute(select(t.Twin).where(t.Twin.id == first)).mappings().one()
        version = db.execute(select(t.Version).where(t.Version.twin_id == first)).mappings().one()
        names = [f"ahu-{i:05d}" for i in range(1, n)]
        fields = {k: v for k, v in twin.items() if k != "id"}
        db.execute(insert(t.Twin), [{**fields, "name": name} for name in names])
        ids = db.scalars(select(t.Twin.id).where(t.Twin.name.in_(names))).all()
        fields = {k: v for k, v in version.items() if k != "id"}
        db.execute(insert(t.Version), [{**fields, "twin_id": i} for i in ids])
    engine.dispose()


@pytest.fixture
def served(tmp_path):
    served = Served(f"sqlite:///{tmp_path / 'dashboard.db'}").start()
    yield served
    served.stop()


@pytest.fixture(scope="session")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian's chromium package)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Page:
    """A browser page that records console errors and refuses every request off loopback."""

    def __init__(self, browser):
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.refused: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.context.route("**/*", self._route)

    def _route(self, route) -> None:
        if urlparse(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            self.refused.append(route.request.url)
            route.abort()

    def open(self, url: str) -> None:
        """Load `url` and wait until its script has drawn the data."""
        self.page.goto(url)
        self.page.wait_for_function("document.body.dataset.loaded", timeout=30_000)

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / name
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def page(browser):
    page = Page(browser)
    yield page
    page.context.close()
