"""What the pages show, checked against the API in a real browser: the fleet sorted, filtered
and paged at 10,000 twins, drift events marked where they began and where they fired,
parameter bounds, and zooming into a range."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import insert, update

from app import tables as t
from app.db import make_engine
from tests.app.conftest import SPEC, thermal_rows
from tests.dashboard.conftest import clone_twins
from tests.dashboard.test_pages import chart_data, make_twin

pytestmark = pytest.mark.browser


def names(page) -> list[str]:
    return page.page.locator("#fleet tbody tr td:first-child").all_inner_texts()


def wait_first_row(page, name: str) -> None:
    page.page.wait_for_function(
        "(name) => document.querySelector('#fleet tbody td a')?.textContent === name", arg=name
    )


@pytest.mark.slow
def test_a_fleet_of_10000_twins_is_paged_sorted_and_filtered(served, page):
    clone_twins(served, 10_000)
    behind = served.http.get("/twins", params={"prefix": "ahu-04321"}).json()[0]["id"]
    posted = served.http.post(
        f"/twins/{behind}/observations", json={"observations": thermal_rows(5)}
    )
    assert posted.status_code == 202  # five observations not learned: the largest lag
    page.open(f"{served.base}/")
    assert names(page) == [f"ahu-{i:05d}" for i in range(50)]
    assert page.page.inner_text("#count") == "1–50 of 10000 twins"
    page.page.click("#next")
    wait_first_row(page, "ahu-00050")
    assert page.page.inner_text("#count") == "51–100 of 10000 twins"
    page.page.select_option("#sort", "name")  # back to the first page
    page.page.check("#desc")
    wait_first_row(page, "ahu-09999")
    assert names(page)[:3] == ["ahu-09999", "ahu-09998", "ahu-09997"]
    page.page.select_option("#sort", "lag")
    wait_first_row(page, "ahu-04321")
    assert page.page.locator("#fleet tbody tr").first.inner_text().count("5 obs") == 1
    page.page.fill("#prefix", "ahu-0123")
    page.page.wait_for_function(
        "document.querySelector('#count').textContent.endsWith(' 10 twins')"
    )
    assert sorted(names(page)) == [f"ahu-0123{i}" for i in range(10)]
    assert page.errors == [] and page.refused == []


def test_residuals_mark_drift_events_where_they_began_and_where_they_fired(served, page):
    twin_id = make_twin(served, "hx-1", 600)
    served.learn()
    engine = make_engine(served.database_url)
    with engine.begin() as db:
        event = {"twin_id": twin_id, "output": "T", "detector": "page_hinkley", "statistic": 3.5}
        db.execute(
            insert(t.DriftEvent),
            [{**event, "seq": 451, "ts": 1_450.0, "start_seq": 401, "created_at": time.time()}],
        )
    engine.dispose()
    page.open(f"{served.base}/ui/twins/{twin_id}?range=0")
    events = served.http.get(f"/twins/{twin_id}/drift").json()["events"]
    assert any(e["start_ts"] == 1_400.0 and e["ts"] == 1_450.0 for e in events)
    expected = sorted(
        [(e["start_ts"], True) for e in events if e["output"] == "T"]
        + [(e["ts"], False) for e in events if e["output"] == "T"]
    )
    drawn = page.page.evaluate("window.tandem.charts['res-T'].markersDrawn")
    assert sorted((m["ts"], m["began"]) for m in drawn) == expected
    assert "401" in page.page.inner_text("#drift")  # the table: began at seq
    assert page.errors == []


def test_parameter_plots_draw_the_bounds_near_the_trajectory(served, page):
    spec = {**SPEC, "model": {**SPEC["model"], "bounds": {"R": [0.5, 2.6]}}}
    twin_id = served.http.post("/twins", json={"name": "hx-1", **spec}).json()["id"]
    rows = thermal_rows(300)
    assert served.http.post(f"/twins/{twin_id}/observations", json={"observations": rows})
    served.learn()
    page.open(f"{served.base}/ui/twins/{twin_id}?range=0")
    chart = page.page.evaluate(
        "(() => { const c = window.tandem.charts['par-R'];"
        " return {labels: c.series.map((s) => s.label), data: c.data, y: c.scales.y}; })()"
    )
    assert chart["labels"][1:] == ["R", "lower bound", "upper bound"]
    assert set(chart["data"][2]) == {0.5} and set(chart["data"][3]) == {2.6}
    values = [v for v in chart["data"][1] if v is not None]
    assert chart["y"]["max"] >= 2.6 >= max(values)  # near: in view
    assert chart["y"]["min"] > 0.5  # far below the trajectory: not flattening it
    assert page.errors == []


def test_dragging_across_a_plot_zooms_into_that_range_at_full_resolution(served, page):
    twin_id = make_twin(served, "hx-1", 3_000)
    page.open(f"{served.base}/ui/twins/{twin_id}?range=0")
    box = page.page.locator("#plot-out-T .u-over").bounding_box()
    y = box["y"] + box["height"] / 2
    page.page.mouse.move(box["x"] + box["width"] * 0.4, y)
    page.page.mouse.down()
    page.page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=5)
    page.page.mouse.up()
    page.page.wait_for_function(
        "window.tandem.zoom && window.tandem.charts['out-T'].data[0][0] >= window.tandem.zoom.min"
    )
    zoom = page.page.evaluate("window.tandem.zoom")
    query = page.page.evaluate("window.tandem.queries.T")
    assert "start=" in query and "end=" in query
    api = served.http.get(query).json()
    ts = chart_data(page, "out-T")[0]
    assert ts == api["ts"] and zoom["min"] <= ts[0] and ts[-1] <= zoom["max"]
    assert 200 < sum(api["count"]) < 400 and set(api["count"]) == {1}  # ~300 rows, each drawn
    page.page.dblclick("#plot-out-T .u-over")
    page.page.wait_for_function("window.tandem.zoom === null")
    page.page.wait_for_function(
        "window.tandem.series.T.count.reduce((a, b) => a + b, 0) === 3000", timeout=15_000
    )
    assert page.errors == []


def test_a_missing_value_is_a_gap_not_a_zero(served, page):
    twin_id = make_twin(served, "hx-1", 100)
    engine = make_engine(served.database_url)
    with engine.begin() as db:  # a sensor that reported nothing for seq 50 (ts 1049)
        db.execute(
            update(t.Observation)
            .where(t.Observation.twin_id == twin_id, t.Observation.seq == 50)
            .values(outputs=[None])
        )
    engine.dispose()
    page.open(f"{served.base}/ui/twins/{twin_id}?range=0")
    ts, observed, high, low = chart_data(page, "out-T")[:4]
    gap = ts.index(1_049.0)
    assert observed[gap] is None and high[gap] is None and low[gap] is None
    assert all(v is not None for i, v in enumerate(observed) if i != gap)
    assert page.errors == []
