"""The dashboard in a real browser: pages load with no console error and no request off
loopback, plots hold the points the API returns, new observations appear live, the what-if
panel draws the API's prediction, and a screenshot of each page is written for review."""

from __future__ import annotations

import pytest

from tests.app.conftest import SPEC, thermal_rows

pytestmark = pytest.mark.browser


def make_twin(served, name: str, n: int, start: float = 1_000.0) -> int:
    created = served.http.post("/twins", json={"name": name, **SPEC})
    assert created.status_code == 201, created.text
    twin_id = created.json()["id"]
    rows = thermal_rows(n, start=start)
    posted = served.http.post(f"/twins/{twin_id}/observations", json={"observations": rows})
    assert posted.status_code == 202, posted.text
    return twin_id


def chart_data(page, key: str) -> list[list[float | None]]:
    return page.page.evaluate(f"window.tandem.charts[{key!r}].data")


def test_fleet_page_lists_the_twins_the_api_lists(served, page):
    for i in range(3):
        make_twin(served, f"ahu-{i}", 40)
    make_twin(served, "pump-1", 40)
    served.learn()
    page.open(f"{served.base}/")
    names = page.page.locator("#fleet tbody tr td:first-child").all_inner_texts()
    assert names == [t["name"] for t in served.http.get("/twins").json()]
    assert "4 of 4 twins" in page.page.inner_text("#count")
    page.page.fill("#prefix", "ahu")
    page.page.wait_for_function("document.querySelectorAll('#fleet tbody tr').length === 3")
    page.screenshot("fleet.png")
    assert page.errors == [] and page.refused == []


def test_twin_page_plots_the_points_the_api_returns(served, page):
    twin_id = make_twin(served, "hx-1", 600)
    served.learn()
    page.open(f"{served.base}/ui/twins/{twin_id}?range=0")  # all of it
    query = page.page.evaluate("window.tandem.queries.T")
    api = served.http.get(query).json()
    ts, observed, _, _, predicted, first_guess = chart_data(page, "out-T")
    assert ts == api["ts"] and len(ts) > 100
    assert observed == api["observed"]["mean"]
    assert predicted == api["predicted"]["mean"]
    assert first_guess == api["first_guess"]["mean"] and first_guess[-1] is not None
    assert sum(api["count"]) == 600
    residual = chart_data(page, "res-T")[1]
    assert residual == api["residual"]["mean"]
    versions = served.http.get(f"/twins/{twin_id}/versions").json()
    r_plot = chart_data(page, "par-R")
    assert r_plot[1][-1] == versions[0]["parameters"]["R"]
    page.screenshot("twin.png")
    assert page.errors == [] and page.refused == []


def test_new_observations_appear_live(served, page):
    twin_id = make_twin(served, "hx-1", 100)
    page.open(f"{served.base}/ui/twins/{twin_id}")
    before = chart_data(page, "out-T")[0][-1]
    rows = thermal_rows(20, start=1_100.0)
    posted = served.http.post(f"/twins/{twin_id}/observations", json={"observations": rows})
    assert posted.status_code == 202
    page.page.wait_for_function(
        "window.tandem.series.T.count.reduce((a, b) => a + b, 0) === 120", timeout=15_000
    )
    assert chart_data(page, "out-T")[0][-1] > before
    assert chart_data(page, "out-T")[0] == page.page.evaluate("window.tandem.series.T.ts")
    assert page.errors == []


def test_what_if_panel_draws_the_prediction_with_its_band(served, page):
    twin_id = make_twin(served, "hx-1", 200)
    served.learn()
    page.open(f"{served.base}/ui/twins/{twin_id}")
    page.page.wait_for_selector("#whatif-rows[data-ready]")  # prefilled with the latest inputs
    page.page.fill("#whatif-rows", "10, 20\n10, 20\n0, 20")
    page.page.fill("#whatif-dt", "30")
    page.page.click("#whatif button[type=submit]")
    page.page.wait_for_function("window.tandem.charts['whatif-T']")
    _, mean, upper, lower = chart_data(page, "whatif-T")
    api = served.http.post(
        f"/twins/{twin_id}/predict",
        json={"inputs": [{"heat": 10, "ambient": 20}] * 2 + [{"heat": 0, "ambient": 20}], "dt": 30},
    ).json()
    assert mean == [row["T"] for row in api["outputs"]]
    std = [row["T"] for row in api["std"]]
    assert all(s > 0 for s in std)  # a band, not a line
    assert upper == pytest.approx([m + 2 * s for m, s in zip(mean, std, strict=True)])
    assert lower == pytest.approx([m - 2 * s for m, s in zip(mean, std, strict=True)])
    assert page.errors == [] and page.refused == []


@pytest.mark.parametrize(
    ("path", "title"), [("/docs", ".swagger-ui .info .title"), ("/redoc", "h1")]
)
def test_api_docs_render_with_no_network(served, page, path, title):
    page.page.goto(f"{served.base}{path}")
    page.page.wait_for_selector(title, timeout=30_000)
    assert "Tandem" in page.page.inner_text(title)
    assert page.refused == [] and page.errors == []
