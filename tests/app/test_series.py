"""The downsampled series behind the dashboard's plots, and the paged, filtered twin list."""

import pytest

from tests.app.conftest import thermal_rows


def test_series_buckets_hold_every_observation_with_min_max_and_mean(client, make_twin, post):
    twin = make_twin()
    rows = thermal_rows(1_000)
    post(twin["id"], rows)
    body = client.get(f"/twins/{twin['id']}/series", params={"points": 100}).json()
    assert body["output"] == "T" and len(body["ts"]) == 100
    assert sum(body["count"]) == 1_000
    values = [r["outputs"]["T"] for r in rows]
    assert min(body["observed"]["min"]) == pytest.approx(min(values))
    assert max(body["observed"]["max"]) == pytest.approx(max(values))
    first = values[:10]  # 1,000 rows over 999 s in 100 buckets: the first holds 10
    assert body["count"][0] == 10
    assert body["observed"]["mean"][0] == pytest.approx(sum(first) / 10)
    assert body["predicted"]["mean"] == [None] * 100  # nothing learned yet


def test_series_of_a_time_range_and_of_a_learned_twin(client, make_twin, post, learn):
    twin = make_twin()
    post(twin["id"], thermal_rows(200))
    learn(twin["id"])
    body = client.get(
        f"/twins/{twin['id']}/series", params={"start": 1_100, "end": 1_149, "points": 1_000}
    ).json()
    assert body["count"] == [1] * 50 and body["ts"] == [1_100.0 + i for i in range(50)]
    assert body["observed"]["min"] == body["observed"]["max"] == body["observed"]["mean"]
    residual = [
        o - p for o, p in zip(body["observed"]["mean"], body["predicted"]["mean"], strict=True)
    ]
    assert body["residual"]["mean"] == pytest.approx(residual)
    guess = body["first_guess"]["mean"]  # the spec's R, C: off the plant's, so worse
    assert all(g is not None for g in guess)
    rmse = sum(r * r for r in residual) ** 0.5
    assert (
        sum((o - g) ** 2 for o, g in zip(body["observed"]["mean"], guess, strict=True)) ** 0.5
        > rmse
    )


def test_series_names_a_bad_output_or_time(client, make_twin):
    twin = make_twin()
    bad = client.get(f"/twins/{twin['id']}/series", params={"output": "P"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "output"
    bad = client.get(f"/twins/{twin['id']}/series", params={"start": "yesterday"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "start"
    empty = client.get(f"/twins/{twin['id']}/series").json()
    assert empty["ts"] == [] and empty["observed"]["mean"] == []


def test_twin_list_is_filtered_by_prefix_sorted_and_paged(client, make_twin, post):
    for name in ("pump-2", "ahu-1", "pump-1", "ahu_x"):
        make_twin(name)
    post(3, thermal_rows(5))  # pump-1 has pending observations
    page = client.get("/twins", params={"prefix": "pump", "sort": "name"})
    assert [t["name"] for t in page.json()] == ["pump-1", "pump-2"]
    assert page.headers["x-total-count"] == "2"
    page = client.get("/twins", params={"prefix": "ahu_", "limit": 5})  # _ is no wildcard
    assert [t["name"] for t in page.json()] == ["ahu_x"]
    page = client.get("/twins", params={"limit": 2, "offset": 1})
    assert [t["id"] for t in page.json()] == [2, 3] and page.headers["x-total-count"] == "4"
    lag = client.get("/twins", params={"sort": "lag", "desc": True, "limit": 1}).json()
    assert lag[0]["name"] == "pump-1" and lag[0]["calibration_lag"]["observations"] == 5
    assert client.get("/twins", params={"sort": "size"}).status_code == 422


def test_twin_reports_its_error_against_the_first_guess_and_drift(client, make_twin, post, learn):
    twin = make_twin()
    post(twin["id"], thermal_rows(100))
    learn(twin["id"])
    body = client.get(f"/twins/{twin['id']}").json()
    error = body["rmse"]["T"]
    assert error["twin"] is not None and error["first_guess"] is not None
    assert body["drift"]["events"] >= 0
    versions = client.get(f"/twins/{twin['id']}/versions").json()
    assert versions[0]["watermark_ts"] == 1_099.0 and versions[-1]["watermark_ts"] is None
