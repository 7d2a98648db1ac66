"""Liveness, readiness, Prometheus metrics and the API docs."""

import re

from fastapi.testclient import TestClient

from app.config import Settings
from app.db import head_revision
from app.main import create_app
from tests.app.conftest import SPEC, thermal_rows


def sample(text: str, name: str, **labels) -> float | None:
    """The value of one Prometheus sample in exposition text, or None when absent."""
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(\{.*\})? (\S+)$", line)
        if not match or match[1] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match[3])
    return None


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_when_schema_is_at_head(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "revision": head_revision()}


def test_readyz_is_503_without_the_schema(database_url):
    app = create_app(Settings(database_url=database_url, worker=False, run_migrations=False))
    with TestClient(app) as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        body = response.json()
        assert body["error"] == "not_ready"
        assert "no revision" in body["detail"] and head_revision() in body["detail"]


def test_readyz_is_503_when_the_database_is_unreachable(tmp_path):
    url = f"sqlite:///{tmp_path / 'missing-dir' / 'tandem.db'}"
    app = create_app(Settings(database_url=url, worker=False, run_migrations=False))
    with TestClient(app) as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert "unreachable" in response.json()["detail"]


def test_migrations_run_at_startup_by_default_for_sqlite_only():
    assert Settings(database_url="sqlite:///x.db").migrate_on_startup
    assert not Settings(database_url="postgresql+psycopg://h/db").migrate_on_startup
    assert Settings(
        database_url="postgresql+psycopg://h/db", run_migrations=True
    ).migrate_on_startup


def test_metrics_expose_counters_and_per_twin_gauges(client, make_twin, post, learn):
    twin = make_twin("hx-1")
    post(twin["id"], thermal_rows(30))
    post(twin["id"], thermal_rows(10))
    learn(twin["id"])
    post(twin["id"], thermal_rows(5, start=5_000.0))
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert sample(text, "observations_accepted_total", twin="hx-1") == 35
    assert sample(text, "duplicates_total", twin="hx-1") == 10
    assert sample(text, "twin_last_seq", twin="hx-1") == 35
    assert sample(text, "twin_version", twin="hx-1") == 1
    assert sample(text, "twin_calibration_lag_observations", twin="hx-1") == 5
    assert sample(text, "twin_calibration_lag_seconds", twin="hx-1") >= 0
    assert sample(text, "twin_rmse", twin="hx-1", output="T") > 0
    assert sample(text, "database_up") == 1
    route = "/twins/{twin_id}/observations"
    assert sample(text, "http_requests_total", method="POST", route=route, status="202") == 3


def test_deleted_twin_leaves_the_metrics(client, make_twin, post):
    twin = make_twin("gone")
    post(twin["id"], thermal_rows(3))
    assert sample(client.get("/metrics").text, "twin_last_seq", twin="gone") == 3
    client.delete(f"/twins/{twin['id']}")
    text = client.get("/metrics").text
    assert sample(text, "twin_last_seq", twin="gone") is None
    assert sample(text, "observations_accepted_total", twin="gone") is None


def test_each_app_has_its_own_registry(database_url):
    first = create_app(Settings(database_url=database_url, worker=False))
    second = create_app(Settings(database_url=database_url, worker=False))
    assert first.state.metrics.registry is not second.state.metrics.registry


def test_openapi_docs(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    for path in ("/twins", "/twins/{twin_id}/observations", "/twins/{twin_id}/predict", "/metrics"):
        assert path in spec["paths"]
    body = spec["paths"]["/twins/{twin_id}/observations"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/x-ndjson"} <= set(body)


def test_in_memory_sqlite_serves_a_whole_session():
    with TestClient(create_app(Settings(database_url="sqlite://", worker=False))) as client:
        created = client.post("/twins", json={"name": "mem", **SPEC})
        assert created.status_code == 201
        assert client.get("/twins").json()[0]["name"] == "mem"


def test_unexpected_errors_use_the_error_body(app, monkeypatch):
    from app.services import fleet

    def broken(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(fleet, "page_twins", broken)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/twins")
    assert response.status_code == 500
    assert response.json() == {"error": "internal", "detail": "internal server error", "errors": []}
