"""Per-key rate limits and request counts, content types a browser cannot send cross-site
unpreflighted, and CORS only for configured origins."""

from __future__ import annotations

import orjson
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.ratelimit import TokenBucket
from tests.app.conftest import thermal_rows
from tests.app.test_ops import sample


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def limited_client(database_url):
    settings = Settings(
        database_url=database_url, worker=False, run_migrations=True, rate_limit=0.5, rate_burst=3
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_a_key_past_its_rate_gets_429_with_retry_after(limited_client):
    client = limited_client
    admin = client.post("/keys", json={"name": "admin", "scopes": ["admin"]}).json()["key"]
    fast = client.post(
        "/keys", json={"name": "fast", "scopes": ["read"], "rate": 100}, headers=bearer(admin)
    ).json()["key"]
    statuses = [client.get("/twins", headers=bearer(admin)).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]  # one token went to creating the second key
    refused = client.get("/twins", headers=bearer(admin))
    assert refused.status_code == 429 and refused.json()["error"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 2  # one token at 0.5/s
    # buckets are per key, and a key's own rate replaces the setting
    assert all(client.get("/twins", headers=bearer(fast)).status_code == 200 for _ in range(4))
    metrics = client.get("/metrics", headers=bearer(fast)).text
    assert sample(metrics, "key_requests_total", key="admin", status="201") == 1
    assert sample(metrics, "key_requests_total", key="admin", status="200") == 2
    assert sample(metrics, "key_requests_total", key="admin", status="429") == 2
    assert sample(metrics, "key_requests_total", key="fast", status="200") == 4
    assert admin not in metrics and fast not in metrics
    assert sample(metrics, "http_requests_total", route="/twins", status="429") == 2


def test_a_token_bucket_refills_at_its_rate(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("app.ratelimit.time.monotonic", lambda: now[0])
    bucket = TokenBucket(rate=2.0, burst=2)
    assert [bucket.take() for _ in range(2)] == [0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)
    now[0] += 0.5
    assert bucket.take() == 0.0 and bucket.take() == pytest.approx(0.5)
    now[0] += 60  # never more than the burst
    assert [bucket.take() == 0.0 for _ in range(3)] == [True, True, False]


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
def test_bodies_a_browser_sends_without_preflight_get_415(client, make_twin, content_type):
    twin = make_twin()
    body = orjson.dumps({"observations": thermal_rows(2)})
    headers = {} if content_type is None else {"content-type": content_type}
    for url in (f"/twins/{twin['id']}/observations", "/twins", "/keys"):
        response = client.post(url, content=body, headers=headers)
        assert response.status_code == 415, (url, response.text)
        assert response.json()["error"] == "unsupported_media_type"
    history = client.get(f"/twins/{twin['id']}/observations").json()
    assert history["observations"] == []


def test_json_and_ndjson_are_accepted(client, make_twin):
    twin = make_twin()
    url = f"/twins/{twin['id']}/observations"
    rows = thermal_rows(4)
    ndjson = b"\n".join(orjson.dumps(r) for r in rows[:2])
    posted = client.post(url, content=ndjson, headers={"content-type": "application/x-ndjson"})
    assert posted.status_code == 202, posted.text
    as_json = client.post(
        url,
        content=orjson.dumps({"observations": rows[2:]}),
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert as_json.status_code == 202, as_json.text
    assert client.delete(url.rsplit("/", 1)[0]).status_code == 204  # no body, no type: fine


def test_other_content_types_are_left_to_the_endpoint(client, make_twin):
    """A type outside the three a browser sends unasked needs a preflight, which fails without
    CORS; the endpoint decides whether it takes it."""
    twin = make_twin()
    url = f"/twins/{twin['id']}/observations"
    csv = client.post(
        url, content=b"ts,heat,ambient,T\n1,1,20,21\n", headers={"content-type": "text/csv"}
    )
    assert csv.status_code == 202, csv.text
    xml = client.post(url, content=b"<ts/>", headers={"content-type": "application/xml"})
    assert xml.status_code == 415 and "observations cannot be sent" in xml.json()["detail"]


def test_cors_answers_only_configured_origins(database_url):
    settings = Settings(
        database_url=database_url,
        worker=False,
        run_migrations=True,
        cors_origins=["https://ops.example"],
    )
    preflight = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
    }
    with TestClient(create_app(settings)) as client:
        ok = client.options("/twins", headers={"origin": "https://ops.example", **preflight})
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "https://ops.example"
        assert "authorization" in ok.headers["access-control-allow-headers"].lower()
        other = client.options("/twins", headers={"origin": "https://evil.example", **preflight})
        assert "access-control-allow-origin" not in other.headers
        read = client.get("/twins", headers={"origin": "https://ops.example"})
        assert read.headers["access-control-allow-origin"] == "https://ops.example"
        assert (
            "access-control-allow-origin"
            not in client.get("/twins", headers={"origin": "https://evil.example"}).headers
        )


def test_no_cors_headers_unless_origins_are_configured(client):
    response = client.get("/twins", headers={"origin": "https://ops.example"})
    assert response.status_code == 200
    assert not any(h.startswith("access-control-") for h in response.headers)
    preflight = client.options(
        "/twins",
        headers={"origin": "https://ops.example", "access-control-request-method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers
