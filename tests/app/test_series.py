"""The downsampled series behind the dashboard's plots, and the paged, filtered twin list."""

import math

import pytest
from sqlalchemy import insert, select, text

from app import tables as t
from app.services import blocks
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


def totals(body: dict, measure: str) -> tuple[float, float]:
    return min(v for v in body[measure]["min"] if v is not None), max(
        v for v in body[measure]["max"] if v is not None
    )


def predicted(sessions, twin_id: int, rows: list[dict]) -> None:
    """Predictions for the first len(rows) observations and a version that learned them, as
    if the calibrator had (with made-up values: learning 1,300 rows for real takes a minute)."""
    with sessions.begin() as session:
        version = session.scalars(select(t.Version).where(t.Version.twin_id == twin_id)).one()
        values = [(r["outputs"]["T"], 20.0 + math.sin(i / 9.0)) for i, r in enumerate(rows)]
        session.execute(
            insert(t.Prediction),
            [
                {
                    "twin_id": twin_id,
                    "seq": i + 1,
                    "version": 1,
                    "prediction": [p],
                    "residual": [o - p],
                    "first_guess": [p - 0.5],
                }
                for i, (o, p) in enumerate(values)
            ],
        )
        session.add(
            t.Version(
                twin_id=twin_id,
                number=1,
                watermark=len(rows),
                created_at=version.created_at,
                parameters=version.parameters,
                metrics=version.metrics,
                checkpoint=None,
            )
        )


def test_series_of_many_rows_per_point_merges_blocks_and_misses_no_row(
    client, make_twin, post, sessions, monkeypatch
):
    monkeypatch.setattr(blocks, "CHUNK", 5)  # the blocks of 16 built five per transaction
    twin = make_twin()
    rows = thermal_rows(1_300)
    post(twin["id"], rows)
    predicted(sessions, twin["id"], rows)
    post(twin["id"], thermal_rows(37, start=2_300.0))  # a tail not learned yet
    url = f"/twins/{twin['id']}/series"
    exact = client.get(url, params={"points": 10_000}).json()  # one row per point
    assert exact["count"] == [1] * 1_337
    for start, end in ((None, None), (1_003.5, 2_310.0)):
        params = {"points": 2} | ({} if start is None else {"start": start, "end": end})
        body = client.get(url, params=params).json()  # ~650 rows a point: blocks of 256, 16
        inside = [i for i, ts in enumerate(exact["ts"]) if start is None or start <= ts <= end]
        assert sum(body["count"]) == len(inside)
        assert body["ts"] == sorted(body["ts"]) and len(body["ts"]) == 2
        weighted = sum(m * n for m, n in zip(body["observed"]["mean"], body["count"], strict=True))
        assert weighted == pytest.approx(sum(exact["observed"]["mean"][i] for i in inside))
        for measure in ("observed", "predicted", "residual", "first_guess"):
            values = [exact[measure]["mean"][i] for i in inside]
            values = [v for v in values if v is not None]
            assert totals(body, measure) == pytest.approx((min(values), max(values)))
    with sessions() as session:
        sizes = session.execute(
            text("SELECT size, count(*), sum(n) FROM series_blocks GROUP BY size ORDER BY size")
        ).all()
    assert [tuple(r) for r in sizes] == [(16, 81, 1_296), (256, 5, 1_280)]
    with sessions.begin() as session:  # retention: the oldest predictions go, observations stay
        session.execute(
            text(f"DELETE FROM predictions WHERE twin_id = {twin['id']} AND seq <= 500")
        )
    exact = client.get(url, params={"points": 10_000}).json()
    body = client.get(url, params={"points": 2}).json()
    assert sum(body["count"]) == 1_337
    for measure in ("observed", "predicted", "residual", "first_guess"):
        values = [v for v in exact[measure]["mean"] if v is not None]
        assert totals(body, measure) == pytest.approx((min(values), max(values)))


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
