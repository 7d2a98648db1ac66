"""What-if predictions, parameters, version history and drift."""

import time

import pytest
from sqlalchemy import insert

from app import tables as t
from tests.app.conftest import thermal_rows

FUTURE = [{"heat": 8.0, "ambient": 20.0}] * 5


def test_predict_needs_observations(client, make_twin):
    twin = make_twin()
    response = client.post(f"/twins/{twin['id']}/predict", json={"inputs": FUTURE, "dt": 1.0})
    assert response.status_code == 409
    assert "no observations" in response.json()["detail"]


def test_predict_needs_a_learned_state(client, make_twin, post):
    twin = make_twin()
    post(twin["id"], thermal_rows(5))
    response = client.post(f"/twins/{twin['id']}/predict", json={"inputs": FUTURE, "dt": 1.0})
    assert response.status_code == 409
    assert "not learned" in response.json()["detail"]


def test_predict_rolls_the_latest_version_forward(client, make_twin, post, learn):
    twin = make_twin()
    rows = thermal_rows(40)
    post(twin["id"], rows)
    assert learn(twin["id"]) == 1
    response = client.post(f"/twins/{twin['id']}/predict", json={"inputs": FUTURE, "dt": 2.0})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["version"] == 1 and body["context_ts"] == rows[-1]["ts"]
    assert len(body["outputs"]) == 5 and len(body["std"]) == 5
    T = [o["T"] for o in body["outputs"]]
    assert all(abs(x - rows[-1]["outputs"]["T"]) < 20 for x in T)  # near the last state
    assert T[0] != T[-1]  # it moved under the inputs
    per_step = client.post(
        f"/twins/{twin['id']}/predict", json={"inputs": FUTURE, "dt": [2.0] * 5}
    ).json()
    assert per_step["outputs"] == body["outputs"]
    # a newer version is picked up, not the cached one
    post(twin["id"], thermal_rows(10, start=rows[-1]["ts"] + 1))
    assert learn(twin["id"]) == 2
    newer = client.post(f"/twins/{twin['id']}/predict", json={"inputs": FUTURE, "dt": 2.0})
    assert newer.json()["version"] == 2


@pytest.mark.parametrize(
    "body, field",
    [
        ({"inputs": [{"heat": 1.0}], "dt": 1}, "inputs[0].ambient"),
        ({"inputs": [{"heat": 1, "ambient": 2, "wind": 3}], "dt": 1}, "inputs[0].wind"),
        ({"inputs": FUTURE, "dt": [1.0, 1.0]}, "dt"),
        ({"inputs": FUTURE, "dt": 0}, "dt"),
        ({"inputs": FUTURE, "dt": -1.0}, "dt"),
        ({"inputs": [], "dt": 1}, "inputs"),
        ({"inputs": [{"heat": "x", "ambient": 1}], "dt": 1}, "inputs[0].heat"),
        ({"inputs": [{"heat": True, "ambient": 1}], "dt": 1}, "inputs[0].heat"),
        ({"inputs": FUTURE}, "dt"),
    ],
)
def test_bad_predict_request_is_422(client, make_twin, body, field):
    twin = make_twin()
    response = client.post(f"/twins/{twin['id']}/predict", json=body)
    assert response.status_code == 422, response.text
    fields = [e["field"] for e in response.json()["errors"]]
    assert any(f == field or f.startswith(field + ".") for f in fields), fields


def test_predict_horizon_is_limited(client, make_twin, settings):
    twin = make_twin()
    too_long = [{"heat": 1.0, "ambient": 1.0}] * (settings.max_horizon + 1)
    response = client.post(f"/twins/{twin['id']}/predict", json={"inputs": too_long, "dt": 1})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "inputs"


def test_parameters_of_the_initial_version(client, make_twin):
    twin = make_twin()
    body = client.get(f"/twins/{twin['id']}/parameters").json()
    assert body["version"] == 0 and body["watermark"] == 0
    assert body["parameters"]["R"] == pytest.approx(2.0)
    assert body["learner"]["method"] == "pgpe"
    assert body["bounds"] == {"R": [0.5, 5.0]}


def test_parameters_follow_the_latest_version(client, make_twin, post, learn):
    twin = make_twin()
    post(twin["id"], thermal_rows(60))
    learn(twin["id"])
    body = client.get(f"/twins/{twin['id']}/parameters").json()
    assert body["version"] == 1 and body["watermark"] == 60
    assert body["learner"]["n_updates"] > 0
    assert 0.5 <= body["parameters"]["R"] <= 5.0


def test_versions_newest_first_with_loss(client, make_twin, sessions):
    twin = make_twin()
    with sessions.begin() as session:
        for n in (1, 2, 3):
            session.add(
                t.Version(
                    twin_id=twin["id"],
                    number=n,
                    watermark=10 * n,
                    created_at=time.time(),
                    parameters={"R": 2.0 + n, "C": 50.0},
                    metrics={"loss": 1.0 / n, "outputs": {"T": {"twin": {"rmse": 0.5 / n}}}},
                    checkpoint=None,
                )
            )
    body = client.get(f"/twins/{twin['id']}/versions").json()
    assert [v["number"] for v in body] == [3, 2, 1, 0]
    assert body[0]["watermark"] == 30 and body[0]["parameters"]["R"] == 5.0
    assert body[0]["loss"] == pytest.approx(1 / 3) and body[0]["rmse"] == {
        "T": pytest.approx(0.5 / 3)
    }
    assert body[-1]["loss"] is None
    limited = client.get(f"/twins/{twin['id']}/versions", params={"limit": 2}).json()
    assert [v["number"] for v in limited] == [3, 2]


def test_drift_reports_metrics_lag_and_events_newest_first(client, make_twin, post, sessions):
    twin = make_twin()
    post(twin["id"], thermal_rows(12))
    with sessions.begin() as session:
        session.execute(
            insert(t.DriftEvent),
            [
                {
                    "twin_id": twin["id"],
                    "seq": s,
                    "ts": 1_000.0 + s,
                    "output": "T",
                    "detector": "page_hinkley",
                    "statistic": 0.1 * s,
                    "start_seq": s - 2,
                    "created_at": time.time(),
                }
                for s in (3, 9, 6)
            ],
        )
    body = client.get(f"/twins/{twin['id']}/drift").json()
    assert body["version"] == 0
    assert body["calibration_lag"]["observations"] == 12
    assert set(body["outputs"]) == {"T"} and "twin" in body["outputs"]["T"]
    assert set(body["parameters"]) == {"R", "C"}
    assert [e["seq"] for e in body["events"]] == [9, 6, 3]
    assert body["events"][0] == {
        "seq": 9,
        "ts": 1_009.0,
        "output": "T",
        "detector": "page_hinkley",
        "statistic": pytest.approx(0.9),
        "start_seq": 7,
        "start_ts": 1_006.0,
    }
    limited = client.get(f"/twins/{twin['id']}/drift", params={"limit": 1}).json()
    assert [e["seq"] for e in limited["events"]] == [9]


def test_open_parameters_are_null_until_the_first_guess_and_then_set(
    client, make_twin, post, learn
):
    open_model = {"kind": "thermal_rc", "params": {"C": 50.0}}
    twin = make_twin(model=open_model)
    parameters = client.get(f"/twins/{twin['id']}/parameters").json()["parameters"]
    assert parameters["R"] is None and parameters["C"] == pytest.approx(50.0)  # R: not 1.0
    assert client.get(f"/twins/{twin['id']}/versions").json()[0]["parameters"]["R"] is None
    post(twin["id"], thermal_rows(20))
    learn(twin["id"])  # fewer than the 32 observations the first guess looks at
    assert client.get(f"/twins/{twin['id']}/parameters").json()["parameters"]["R"] is None
    rows = client.get(f"/twins/{twin['id']}/observations").json()["observations"]
    assert all(r["prediction"] == {"T": None} and r["residual"] == {"T": None} for r in rows)
    post(twin["id"], thermal_rows(40, start=1_020.0))
    learn(twin["id"])
    guessed = client.get(f"/twins/{twin['id']}/parameters").json()["parameters"]["R"]
    assert guessed > 0  # from 32 observations of a slow plant: rough, but a number
    rows = client.get(f"/twins/{twin['id']}/observations").json()["observations"]
    predicted = [r["seq"] for r in rows if r["prediction"]["T"] is not None]
    assert predicted == list(range(33, 61))  # from the first guess on, every observation
    assert all(abs(r["residual"]["T"]) < 1.0 for r in rows if r["seq"] in predicted)
    drift = client.get(f"/twins/{twin['id']}/drift").json()
    assert set(drift["outputs"]["T"]) == {"twin", "first_guess"}
    r = drift["parameters"]["R"]
    assert r["first_guess"] is not None and r["current"] == pytest.approx(guessed)
    assert r["converged"] is None and r["change"] is None  # 28 observations learned, not a window
    versions = client.get(f"/twins/{twin['id']}/versions").json()
    assert [v["parameters"]["R"] is None for v in versions] == [False, True, True]
