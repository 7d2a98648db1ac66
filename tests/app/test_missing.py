"""Missing values through the API: null or left-out channels are stored, predicted, shown as
null with their residuals, and skipped by learning and drift statistics."""

import math

from app.calibrator import Calibrator
from tests.app.conftest import thermal_rows

OSCILLATOR = {
    "inputs": ["F"],
    "outputs": ["x", "v"],
    "model": {"kind": "mass_spring_damper", "params": {"m": 1.0, "c": 0.4, "k": 3.0}},
    "learner": {"method": "pgpe", "seed": 2},
}


def oscillator_rows(n: int, dt: float = 0.05):
    """A mass-spring-damper (m 1, c 0.4, k 3) under a sine force, fine Euler steps between rows."""
    x = v = 0.0
    rows = []
    for i in range(n):
        force = math.sin(i / 9.0)
        for _ in range(10):
            x, v = x + dt / 10 * v, v + dt / 10 * (force - 0.4 * v - 3.0 * x)
        rows.append({"ts": 1_000 + i * dt, "inputs": {"F": force}, "outputs": {"x": x, "v": v}})
    return rows


def history(client, twin_id):
    response = client.get(f"/twins/{twin_id}/observations", params={"limit": 10_000})
    assert response.status_code == 200, response.text
    return response.json()["observations"]


def test_null_or_left_out_channels_are_stored_as_null_and_flagged(client, make_twin, post):
    twin = make_twin()
    rows = thermal_rows(4)
    rows[1]["inputs"]["heat"] = None
    del rows[2]["inputs"]["ambient"]
    assert post(twin["id"], rows)["accepted"] == 4
    got = history(client, twin["id"])
    assert got[1]["inputs"] == {"heat": None, "ambient": 20.0}
    assert got[2]["inputs"]["ambient"] is None
    assert [r["flags"] for r in got] == [[], ["inputs_held"], ["inputs_held"], []]


def test_a_row_with_no_output_at_all_is_422_naming_it(make_twin, post):
    twin = make_twin("osc", **OSCILLATOR)
    rows = oscillator_rows(3)
    rows[2]["outputs"] = {"x": None}
    body = post(twin["id"], rows, expect=422)
    assert body["errors"] == [
        {"index": 2, "field": "outputs", "message": body["errors"][0]["message"]}
    ]
    assert "no output has a value" in body["errors"][0]["message"]


def test_missing_outputs_are_predicted_not_learned_and_skipped_by_drift(
    client, make_twin, post, sessions
):
    twin = make_twin("osc", **OSCILLATOR)
    rows = oscillator_rows(100)
    for i in range(3, 100, 5):
        rows[i]["outputs"]["v"] = None  # the velocity sensor drops every fifth reading
    rows[7]["outputs"] = {"v": rows[7]["outputs"]["v"]}  # x left out
    rows[50]["inputs"] = {"F": None}
    post(twin["id"], rows)
    Calibrator(sessions).drain(timeout=600)  # a busy machine learns slowly
    got = history(client, twin["id"])
    assert len(got) == 100
    for r in got[1:]:
        assert all(v is not None for v in r["prediction"].values()), r  # every row predicted
        for name, value in r["outputs"].items():
            assert (r["residual"][name] is None) == (value is None), r
    assert got[3]["outputs"]["v"] is None and got[3]["residual"] == {
        "x": got[3]["residual"]["x"],
        "v": None,
    }
    assert got[50]["flags"] == ["inputs_held"]
    drift = client.get(f"/twins/{twin['id']}/drift").json()
    assert drift["outputs"]["v"]["twin"]["total"] == 99 - 20
    assert drift["outputs"]["x"]["twin"]["total"] == 99 - 1
    assert drift["watermark"] == 100
