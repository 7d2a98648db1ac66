"""A real Tandem service for the client: uvicorn on a free port in a thread, on a SQLite file,
without the calibrator (tests learn with the `learn` fixture, against the same database)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from tests.app.conftest import SPEC, learn, thermal_rows  # noqa: F401  (fixtures and helpers)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(app: FastAPI) -> Iterator[FastAPI]:
    """`app` served by uvicorn on a free port of loopback (real HTTP) until the block ends;
    `app.url` is its address."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the service did not start"
        assert thread.is_alive(), "the service exited"
        time.sleep(0.02)
    app.url = f"http://127.0.0.1:{port}"
    try:
        yield app
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def service(tmp_path):
    """The running app; `service.url` is its address."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'tandem.db'}", worker=False)
    with serving(create_app(settings)) as app:
        yield app


@pytest.fixture
def sessions(service):
    return service.state.sessions
