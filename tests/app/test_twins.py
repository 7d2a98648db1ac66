"""Creating, listing, reading and deleting twins."""

import time

from sqlalchemy import func, select, update

from app import tables as t
from tests.app.conftest import SPEC, thermal_rows


def test_create_returns_the_twin_with_initial_status(client):
    response = client.post("/twins", json={"name": "hx-1", **SPEC})
    assert response.status_code == 201
    body = response.json()
    assert response.headers["location"] == f"/twins/{body['id']}"
    assert body["name"] == "hx-1"
    assert body["spec"]["inputs"] == ["heat", "ambient"]
    assert body["spec"]["model"]["bounds"] == {"R": [0.5, 5.0]}
    assert body["version"] == 0 and body["watermark"] == 0 and body["last_seq"] == 0
    assert body["last_ts"] is None
    assert body["calibration_lag"] == {"observations": 0, "seconds": 0.0}


def test_create_writes_version_zero_with_checkpoint(client, make_twin, sessions):
    twin = make_twin()
    with sessions() as session:
        version = session.scalars(select(t.Version).where(t.Version.twin_id == twin["id"])).one()
    assert version.number == 0 and version.watermark == 0
    assert version.parameters["R"] == 2.0
    assert version.checkpoint and len(version.checkpoint) > 100
    assert "outputs" in version.metrics


def test_duplicate_name_is_a_conflict(client, make_twin):
    make_twin("hx-1")
    response = client.post("/twins", json={"name": "hx-1", **SPEC})
    assert response.status_code == 409
    assert response.json()["error"] == "conflict"
    assert "hx-1" in response.json()["detail"]


def test_invalid_spec_names_the_field(client):
    spec = {**SPEC, "model": {"kind": "no_such_kind"}}
    response = client.post("/twins", json={"name": "x", **spec})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid"
    assert body["errors"][0]["field"] == "model.kind"
    assert "no_such_kind" in body["errors"][0]["message"]


def test_bad_bounds_are_refused(client):
    spec = {**SPEC, "model": {**SPEC["model"], "bounds": {"R": [5, 1]}}}
    response = client.post("/twins", json={"name": "x", **spec})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "model.bounds.R"


def test_missing_and_unknown_fields_are_422_in_the_error_format(client):
    response = client.post("/twins", json={"inputs": [], "model": {"kind": "arx"}, "colour": 1})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid" and isinstance(body["detail"], str)
    fields = {e["field"] for e in body["errors"]}
    assert {"name", "outputs", "colour"} <= fields


def test_non_json_body_is_422(client):
    response = client.post(
        "/twins", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"] == "invalid"


def test_list_and_read(client, make_twin, post):
    a, b = make_twin("a"), make_twin("b")
    post(b["id"], thermal_rows(3))
    listed = client.get("/twins").json()
    assert [x["name"] for x in listed] == ["a", "b"]
    assert listed[1]["last_seq"] == 3
    one = client.get(f"/twins/{a['id']}")
    assert one.status_code == 200 and one.json()["name"] == "a"


def test_status_reports_calibration_lag(client, make_twin, post, learn):
    twin = make_twin()
    post(twin["id"], thermal_rows(5))
    status = client.get(f"/twins/{twin['id']}").json()
    assert status["last_seq"] == 5 and status["watermark"] == 0
    assert status["calibration_lag"]["observations"] == 5
    learn(twin["id"])
    post(twin["id"], thermal_rows(2, start=2_000.0))
    status = client.get(f"/twins/{twin['id']}").json()
    assert status["version"] == 1 and status["watermark"] == 5
    assert status["calibration_lag"]["observations"] == 2
    assert status["calibration_lag"]["seconds"] >= 0.0


def test_calibration_lag_seconds_is_the_age_of_the_oldest_unlearned_observation(
    client, make_twin, post, learn, sessions
):
    twin = make_twin()
    post(twin["id"], thermal_rows(5))
    learn(twin["id"])
    assert client.get(f"/twins/{twin['id']}").json()["calibration_lag"]["seconds"] == 0.0
    post(twin["id"], thermal_rows(3, start=2_000.0))
    with sessions.begin() as session:  # seq 6, the oldest pending one, arrived 100 s ago
        session.execute(
            update(t.Observation)
            .where(t.Observation.twin_id == twin["id"], t.Observation.seq == 6)
            .values(received_at=time.time() - 100.0)
        )
    lag = client.get(f"/twins/{twin['id']}").json()["calibration_lag"]
    assert lag["observations"] == 3
    assert 100.0 <= lag["seconds"] < 130.0


def test_unknown_twin_is_404(client):
    for method, path in [
        ("GET", "/twins/999"),
        ("DELETE", "/twins/999"),
        ("GET", "/twins/999/observations"),
        ("GET", "/twins/999/parameters"),
        ("GET", "/twins/999/versions"),
        ("GET", "/twins/999/drift"),
    ]:
        response = client.request(method, path)
        assert response.status_code == 404, (method, path)
        assert response.json() == {
            "error": "not_found",
            "detail": "twin 999 does not exist",
            "errors": [],
        }
    posted = client.post("/twins/999/observations", json={"observations": []})
    assert posted.status_code == 404
    predicted = client.post("/twins/999/predict", json={"inputs": [{}], "dt": 1})
    assert predicted.status_code == 404


def test_delete_removes_the_twin_and_everything_it_owns(client, make_twin, post, learn, sessions):
    twin = make_twin()
    post(twin["id"], thermal_rows(4))
    learn(twin["id"])
    assert client.delete(f"/twins/{twin['id']}").status_code == 204
    assert client.get(f"/twins/{twin['id']}").status_code == 404
    deadline = time.monotonic() + 30  # the rows are purged after the answer, in batches
    while True:
        with sessions() as session:
            counts = {
                table.__tablename__: session.scalar(select(func.count()).select_from(table))
                for table in (t.Observation, t.Prediction, t.Version, t.DriftEvent, t.Twin)
            }
        if not any(counts.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not any(counts.values()), counts
    again = make_twin()
    assert again["id"] != twin["id"]  # ids are not reused: caches keyed by id stay correct
