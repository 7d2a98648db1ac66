"""Reading observations back, with prequential predictions once the twin has learned them."""

from sqlalchemy import insert

from app import tables as t
from tests.app.conftest import thermal_rows


def history(client, twin_id, **params):
    response = client.get(f"/twins/{twin_id}/observations", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_history_returns_named_channels_in_seq_order(client, make_twin, post):
    twin = make_twin()
    rows = thermal_rows(5)
    post(twin["id"], rows)
    page = history(client, twin["id"])
    assert page["next_after_seq"] is None
    assert [r["seq"] for r in page["observations"]] == [1, 2, 3, 4, 5]
    first = page["observations"][0]
    assert first["ts"] == rows[0]["ts"]
    assert first["inputs"] == rows[0]["inputs"] and first["outputs"] == rows[0]["outputs"]
    assert first["prediction"] is None and first["residual"] is None


def test_history_filters_by_ts_in_epoch_or_rfc3339(client, make_twin, post):
    twin = make_twin()
    post(twin["id"], thermal_rows(10, start=1_704_067_200.0))  # 2024-01-01T00:00:00Z
    page = history(client, twin["id"], start=1_704_067_202, end="2024-01-01T00:00:05Z")
    assert [r["seq"] for r in page["observations"]] == [3, 4, 5, 6]
    page = history(client, twin["id"], start="2024-01-01T00:00:08")  # naive: UTC
    assert [r["seq"] for r in page["observations"]] == [9, 10]


def test_history_pages_with_after_seq(client, make_twin, post):
    twin = make_twin()
    post(twin["id"], thermal_rows(7))
    seen, after = [], None
    while True:
        params = {"limit": 3} if after is None else {"limit": 3, "after_seq": after}
        page = history(client, twin["id"], **params)
        seen += [r["seq"] for r in page["observations"]]
        after = page["next_after_seq"]
        if after is None:
            break
    assert seen == list(range(1, 8))


def test_history_limit_is_capped_by_settings(client, make_twin, post, settings):
    twin = make_twin()
    post(twin["id"], thermal_rows(3))
    assert len(history(client, twin["id"], limit=10**9)["observations"]) == 3
    assert client.get(f"/twins/{twin['id']}/observations", params={"limit": 0}).status_code == 422


def test_bad_time_bound_is_422(client, make_twin):
    twin = make_twin()
    response = client.get(f"/twins/{twin['id']}/observations", params={"start": "soon"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "start"
    response = client.get(f"/twins/{twin['id']}/observations", params={"end": "nan"})
    assert response.status_code == 422


def test_predictions_and_residuals_appear_once_stored(client, make_twin, post, sessions):
    twin = make_twin()
    post(twin["id"], thermal_rows(3))
    with sessions.begin() as session:
        session.execute(
            insert(t.Prediction),
            [
                {
                    "twin_id": twin["id"],
                    "seq": 1,
                    "version": 1,
                    "prediction": [None],
                    "residual": [None],
                },
                {
                    "twin_id": twin["id"],
                    "seq": 2,
                    "version": 1,
                    "prediction": [21.5],
                    "residual": [-0.25],
                },
            ],
        )
    rows = history(client, twin["id"])["observations"]
    assert rows[0]["prediction"] == {"T": None} and rows[0]["residual"] == {"T": None}
    assert rows[1]["prediction"] == {"T": 21.5} and rows[1]["residual"] == {"T": -0.25}
    assert rows[2]["prediction"] is None


def test_learned_history_has_prequential_residuals(client, make_twin, post, learn):
    twin = make_twin()
    post(twin["id"], thermal_rows(20))
    learn(twin["id"])
    rows = history(client, twin["id"])["observations"]
    learned = [r for r in rows if r["prediction"] and r["prediction"]["T"] is not None]
    assert learned, "the twin predicted nothing"
    for r in learned:
        assert abs(r["outputs"]["T"] - r["prediction"]["T"] - r["residual"]["T"]) < 1e-9
