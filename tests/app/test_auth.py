"""API keys and scopes: every route needs a key of its scope once authentication is on."""

from __future__ import annotations

import hashlib
import logging
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app import tables as t
from app.access_rules import beyond_loopback, required_scope
from app.config import Settings
from app.main import create_app
from tests.app.conftest import SPEC

# the scope each route needs: a route missing here needs `read` for GET and `admin` otherwise
OPEN = {("get", "/healthz"), ("get", "/readyz")}
SCOPE = {
    ("post", "/twins/{twin_id}/observations"): "ingest",
    ("post", "/observations"): "ingest",
    ("post", "/twins/{twin_id}/predict"): "read",
    ("get", "/keys"): "admin",
}
WRONG = {"read": ["ingest"], "ingest": ["read"], "admin": ["read", "ingest"]}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Keys:
    """Makes keys through the API; the first is `admin` (made while authentication is off)."""

    def __init__(self, client: TestClient):
        self.client, self.made = client, 0
        self.admin = self._post({"name": "admin", "scopes": ["admin"]}, {})["key"]

    def make(self, scopes: list[str], name: str | None = None, **changes) -> dict:
        self.made += 1
        name = name or f"{'-'.join(scopes)}-{self.made}"
        return self._post({"name": name, "scopes": scopes, **changes}, self.auth)

    def twin(self, name: str) -> int:
        response = self.client.post("/twins", json={"name": name, **SPEC}, headers=self.auth)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    @property
    def auth(self) -> dict[str, str]:
        return bearer(self.admin)

    def _post(self, body: dict, headers: dict) -> dict:
        response = self.client.post("/keys", json=body, headers=headers)
        assert response.status_code == 201, response.text
        return response.json()


@pytest.fixture
def keys(client) -> Keys:
    return Keys(client)


def test_every_route_needs_a_key_of_its_scope(client, keys):
    twin, victim = keys.twin("kept"), keys.twin("deleted")
    doomed = keys.make(["read"], "doomed")["id"]
    right = {s: keys.make([s])["key"] for s in ("read", "ingest")} | {"admin": keys.admin}
    wrong = {s: keys.make(scopes)["key"] for s, scopes in WRONG.items()}
    schema = client.get("/openapi.json").json()
    walked = 0
    for path, operations in schema["paths"].items():
        for method in operations:
            ids = {"twin_id": victim if method == "delete" else twin, "key_id": doomed}
            url = path.format(**ids)
            body = {} if method in ("post", "put", "patch") else None
            route = f"{method.upper()} {path}"
            if (method, path) in OPEN:
                assert client.request(method, url).status_code == 200, route
                continue
            need = SCOPE.get((method, path), "read" if method == "get" else "admin")
            anonymous = client.request(method, url, json=body)
            assert anonymous.status_code == 401, route
            assert anonymous.headers["www-authenticate"].startswith("Bearer"), route
            assert anonymous.json()["error"] == "unauthorized", route
            refused = client.request(method, url, json=body, headers=bearer(wrong[need]))
            assert refused.status_code == 403, route
            assert need in refused.json()["detail"], route
            allowed = client.request(method, url, json=body, headers=bearer(right[need]))
            assert allowed.status_code not in (401, 403), (route, allowed.text)
            walked += 1
    assert walked >= 14  # the routes of the contract and the keys routes


def test_a_key_is_shown_once_and_stored_only_as_its_hash(client, keys, sessions):
    created = keys.make(["ingest", "read"], "gateway-1")
    secret = created["key"]
    assert secret.startswith("tdm_") and len(secret) > 40
    assert created["prefix"] == secret[:12] and created["scopes"] == ["read", "ingest"]
    listed = client.get("/keys", headers=keys.auth).json()
    assert [k["name"] for k in listed] == ["admin", "gateway-1"]
    assert all("key" not in k for k in listed) and secret not in str(listed)
    with sessions() as session:
        row = session.scalars(select(t.ApiKey).where(t.ApiKey.name == "gateway-1")).one()
        stored = [str(getattr(row, c.key)) for c in t.ApiKey.__table__.columns]
    assert row.hash == hashlib.sha256(secret.encode()).hexdigest()
    assert not any(secret in value for value in stored)


def test_key_names_are_unique_and_scopes_checked(client, keys):
    again = client.post("/keys", json={"name": "admin", "scopes": ["read"]}, headers=keys.auth)
    assert again.status_code == 409
    for bad in ({"scopes": ["write"]}, {"scopes": []}, {"scopes": ["read"], "twins": [999]}):
        response = client.post("/keys", json={"name": "x", **bad}, headers=keys.auth)
        assert response.status_code == 422, bad
        assert response.json()["errors"], bad


def test_revoking_a_key_refuses_it_from_the_next_request(client, keys):
    admin = keys.admin
    reader = keys.make(["read"], "reader")
    assert client.get("/twins", headers=bearer(reader["key"])).status_code == 200
    assert client.delete(f"/keys/{reader['id']}", headers=bearer(admin)).status_code == 204
    refused = client.get("/twins", headers=bearer(reader["key"]))
    assert refused.status_code == 401
    assert "invalid_token" in refused.headers["www-authenticate"]
    assert client.delete(f"/keys/{reader['id']}", headers=bearer(admin)).status_code == 404


def test_a_key_limited_to_twins_sees_only_those(client, keys):
    mine, other = keys.twin("mine"), keys.twin("other")
    limited = keys.make(["admin"], "limited", twins=[mine])["key"]
    listed = client.get("/twins", headers=bearer(limited))
    assert [tw["id"] for tw in listed.json()] == [mine]
    paged = client.get("/twins", params={"limit": 10, "sort": "lag"}, headers=bearer(limited))
    assert [tw["id"] for tw in paged.json()] == [mine] and paged.headers["x-total-count"] == "1"
    assert client.get(f"/twins/{mine}/drift", headers=bearer(limited)).status_code == 200
    for method, url in [("get", f"/twins/{other}"), ("delete", f"/twins/{other}")]:
        response = client.request(method, url, headers=bearer(limited))
        assert response.status_code == 403, url
        assert str(other) in response.json()["detail"]
    # routes over every twin, or that could widen the key's reach, are not for it
    for method, url in [("get", "/metrics"), ("get", "/keys"), ("post", "/twins")]:
        response = client.request(method, url, headers=bearer(limited), json={})
        assert response.status_code == 403, url
    assert client.delete(f"/twins/{mine}", headers=bearer(limited)).status_code == 204


def test_auth_is_off_on_loopback_until_a_key_exists(client):
    assert client.get("/twins").status_code == 200
    assert client.post("/keys", json={"name": "first", "scopes": ["read"]}).status_code == 201
    assert client.get("/twins").status_code == 401
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("mode", "listen_host", "with_key", "status"),
    [
        ("auto", "0.0.0.0", False, 401),  # beyond loopback: on even without keys
        ("auto", "127.0.0.1", False, 200),
        ("on", "127.0.0.1", False, 401),
        ("off", "0.0.0.0", True, 200),
    ],
)
def test_the_auth_setting_and_the_listen_address(
    database_url, mode, listen_host, with_key, status, caplog
):
    app = create_app(
        Settings(database_url=database_url, worker=False, run_migrations=True, auth=mode)
    )
    app.state.listen_host = listen_host
    caplog.set_level(logging.INFO, logger="tandem.auth")
    with TestClient(app) as client:
        if with_key:
            assert client.post("/keys", json={"name": "a", "scopes": ["read"]}).status_code == 201
        assert client.get("/twins").status_code == status
    said = [r.getMessage() for r in caplog.records if r.name == "tandem.auth"]
    assert len(said) == 1 and said[0].startswith("authentication ")
    expected = {"auto": listen_host, "on": "TANDEM_AUTH=on", "off": "TANDEM_AUTH=off"}[mode]
    assert expected in said[0]


def test_what_counts_as_beyond_loopback():
    for host in ("127.0.0.1", "::1", "localhost", "127.0.1.1"):
        assert not beyond_loopback(host, None), host
    for host in ("0.0.0.0", "::", "192.168.1.5", "tandem.example.com"):
        assert beyond_loopback(host, None), host
    # an ASGI server that did not say: the connection's local address decides
    assert beyond_loopback(None, ("10.0.0.7", 8000))
    assert not beyond_loopback(None, ("127.0.0.1", 8000))
    assert not beyond_loopback(None, ("testserver", 80))  # the in-process test client
    assert not beyond_loopback(None, None)  # a Unix socket


def test_a_key_made_by_another_process_counts_within_the_refresh(database_url):
    """Keys made outside the API (the CLI) are seen without a restart."""
    settings = Settings(
        database_url=database_url, worker=False, run_migrations=True, key_refresh_seconds=0
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/twins").status_code == 200
        from app.services.keys import create_key

        with client.app.state.sessions.begin() as session:
            _, secret = create_key(session, "outside", ["read"])
        assert client.get("/twins").status_code == 401
        assert client.get("/twins", headers=bearer(secret)).status_code == 200


def test_the_openapi_schema_declares_the_bearer_scheme(client):
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert schema["paths"]["/twins"]["get"]["security"] == [{"apiKey": []}]
    assert "401" in schema["paths"]["/twins"]["get"]["responses"]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_tandem_keys_create_list_revoke(database_url, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from app.cli import cli

    monkeypatch.setenv("TANDEM_DATABASE_URL", database_url)
    monkeypatch.setenv("TANDEM_RUN_MIGRATIONS", "true")
    runner = CliRunner()
    created = runner.invoke(cli, ["keys", "create", "gw", "-s", "ingest", "-s", "read"])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip()
    assert secret.startswith("tdm_") and "not shown again" in created.stderr
    listed = runner.invoke(cli, ["keys", "list"])
    elsewhere = f"sqlite:///{tmp_path / 'other.db'}"  # --database-url wins over the variable
    assert (
        runner.invoke(cli, ["keys", "list", "--database-url", elsewhere]).stdout == "no API keys\n"
    )
    assert "gw" in listed.stdout and "read+ingest" in listed.stdout
    assert secret not in listed.stdout and secret[:12] in listed.stdout
    refused = runner.invoke(cli, ["keys", "create", "x", "-s", "write"])
    assert refused.exit_code == 1 and "scopes" in refused.stderr
    assert runner.invoke(cli, ["keys", "create", "ops", "-s", "admin"]).exit_code == 0

    settings = Settings(database_url=database_url, worker=False, key_refresh_seconds=0)
    with TestClient(create_app(settings)) as client:
        assert client.get("/twins").status_code == 401
        assert client.get("/twins", headers=bearer(secret)).status_code == 200
        key_id = listed.stdout.split()[0]
        assert runner.invoke(cli, ["keys", "revoke", key_id]).exit_code == 0
        assert client.get("/twins", headers=bearer(secret)).status_code == 401


def test_keys_that_cannot_be_read_give_503_not_an_open_door(database_url):
    settings = Settings(database_url=database_url, worker=False, run_migrations=False)
    with TestClient(create_app(settings)) as client:  # no schema: no keys table
        response = client.get("/twins")
        assert response.status_code == 503 and response.json()["error"] == "unavailable"
        assert response.headers["retry-after"] == "1"
        assert client.get("/healthz").status_code == 200


def test_package_assets_are_open_and_unknown_routes_are_not():
    assert required_scope("GET", "/static/api-docs/{path:path}") is None
    assert required_scope("HEAD", "/healthz") is None
    assert required_scope("POST", "/static/upload") == "admin"
    assert required_scope("GET", "/some/new/route") == "read"
    assert required_scope("PUT", "/twins/{twin_id}") == "admin"


class _SlowKeysTable:
    """A session factory whose keys query waits for `release` (a stalled database)."""

    def __init__(self):
        import threading

        self.release, self.reads = threading.Event(), 0

    def __call__(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *_):
        return False

    def scalars(self, _query):
        self.reads += 1
        if self.reads > 1:
            assert self.release.wait(10)
        return self

    def all(self):
        return []


def test_a_stalled_keys_read_does_not_hold_up_requests_with_a_trusted_snapshot():
    import threading

    from app.services.keys import KeyRing

    table = _SlowKeysTable()
    ring = KeyRing(lambda: table, max_age=0)
    assert ring.load() == {}  # first read: fast
    reloading = threading.Thread(target=ring.load)
    reloading.start()  # the second read stalls
    deadline = time.monotonic() + 5
    while table.reads < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ring.load() == {}  # answered from the snapshot at once, not queued
    ring.invalidate()  # this process changed the keys: the snapshot is no longer trusted
    waiting = threading.Thread(target=ring.load)
    waiting.start()
    waiting.join(0.2)
    assert waiting.is_alive()  # waits for a read that started after the change
    table.release.set()
    reloading.join(5)
    waiting.join(5)
    assert not waiting.is_alive() and table.reads == 3


def test_dashboard_pages_are_open_but_their_data_needs_a_key(client, keys):
    twin_id = keys.twin("hx-1")
    for path in ("/", f"/ui/twins/{twin_id}", "/static/fleet.js"):
        page = client.get(path)
        assert page.status_code == 200, path
        assert "hx-1" not in page.text  # a shell: the data comes from the API, with a key
    assert client.get(f"/twins/{twin_id}/series").status_code == 401
    assert client.get(f"/twins/{twin_id}/series", headers=keys.auth).status_code == 200
