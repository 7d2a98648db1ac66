"""Dashboard benchmark: how long a page takes, in Debian's Chromium, from navigation to plotted
data, for a twin with 100,000 observations and for a fleet of 10,000 twins; beside it, in the
same run, the JSON reads the page makes timed alone over HTTP, and the reference a page without
server-side downsampling would need (the twin's whole history through the paged history API).

    python bench/dashboard.py [--observations N] [--twins N] [--loads K]

Needs the `playwright` package (a dev dependency) and /usr/bin/chromium. Target: under 300 ms
to plotted data for both pages.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from sqlalchemy import insert, select  # noqa: E402

from app import tables as t  # noqa: E402
from app.db import make_engine  # noqa: E402
from tests.app.conftest import SPEC, thermal_rows  # noqa: E402
from tests.dashboard.conftest import CHROMIUM, CHROMIUM_ARGS, Served  # noqa: E402

TARGET_MS = 300.0
BATCH = 10_000


def fill_twin(served: Served, n: int) -> int:
    """A thermal RC twin with n observations (1 s apart), all learned."""
    twin_id = served.http.post("/twins", json={"name": "hx-big", **SPEC}).json()["id"]
    rows = thermal_rows(n)
    for i in range(0, n, BATCH):
        body = {"observations": rows[i : i + BATCH]}
        assert served.http.post(f"/twins/{twin_id}/observations", json=body).status_code == 202
    served.learn(timeout=3600)
    return twin_id


def fill_fleet(served: Served, n: int) -> None:
    """n - 1 more twins, cloned in the database from one made through the API (creating them
    one by one over HTTP measures twin creation, not the fleet page)."""
    first = served.http.post("/twins", json={"name": "ahu-00000", **SPEC}).json()["id"]
    engine = make_engine(served.database_url)
    with engine.begin() as db:
        twin = db.execute(select(t.Twin).where(t.Twin.id == first)).mappings().one()
        version = db.execute(select(t.Version).where(t.Version.twin_id == first)).mappings().one()
        names = [f"ahu-{i:05d}" for i in range(1, n)]
        rows = [{**twin, "id": None, "name": name} for name in names]
        for row in rows:
            del row["id"]
        db.execute(insert(t.Twin), rows)
        ids = db.scalars(select(t.Twin.id).where(t.Twin.name.in_(names))).all()
        base = {k: v for k, v in version.items() if k != "id"}
        db.execute(insert(t.Version), [{**base, "twin_id": i} for i in ids])
    engine.dispose()


def page_ms(browser, url: str, loads: int) -> list[float]:
    """Milliseconds from navigation to the page's `data-loaded` mark, per load (fresh page)."""
    out = []
    for _ in range(loads):
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        start = time.perf_counter()
        page.goto(url)
        page.wait_for_function("document.body.dataset.loaded", timeout=60_000)
        out.append((time.perf_counter() - start) * 1000)
        context.close()
    return out


def http_ms(served: Served, paths: list[str], loads: int) -> list[float]:
    out = []
    for _ in range(loads):
        start = time.perf_counter()
        for path in paths:
            assert served.http.get(path).status_code == 200, path
        out.append((time.perf_counter() - start) * 1000)
    return out


def history_ms(served: Served, twin_id: int) -> float:
    """The whole history, page by page (10,000 rows a page): what plotting it raw would read."""
    start, after = time.perf_counter(), 0
    while after is not None:
        page = served.http.get(
            f"/twins/{twin_id}/observations", params={"after_seq": after, "limit": 10_000}
        ).json()
        after = page["next_after_seq"]
    return (time.perf_counter() - start) * 1000


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observations", type=int, default=100_000)
    parser.add_argument("--twins", type=int, default=10_000)
    parser.add_argument("--loads", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        twin_db, fleet_db = f"sqlite:///{tmp}/twin.db", f"sqlite:///{tmp}/fleet.db"
        twin_served, fleet_served = Served(twin_db).start(), Served(fleet_db).start()
        print(f"filling: a twin with {args.observations:,} observations, {args.twins:,} twins")
        twin_id = fill_twin(twin_served, args.observations)
        fill_fleet(fleet_served, args.twins)
        twin_reads = [
            f"/twins/{twin_id}",
            f"/twins/{twin_id}/drift?limit=50",
            f"/twins/{twin_id}/series?points=1240&output=T",
            f"/twins/{twin_id}/versions?limit=2000",
            f"/twins/{twin_id}/parameters",
        ]
        fleet_reads = ["/twins?limit=50&offset=0&sort=id&desc=false"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page_ms(browser, f"{twin_served.base}/", 1)  # warm-up: first launch, caches
            rows = [
                (
                    f"twin page, {args.observations:,} observations (range: all)",
                    page_ms(browser, f"{twin_served.base}/ui/twins/{twin_id}?range=0", args.loads),
                    http_ms(twin_served, twin_reads, args.loads),
                ),
                (
                    f"fleet page, {args.twins:,} twins",
                    page_ms(browser, f"{fleet_served.base}/", args.loads),
                    http_ms(fleet_served, fleet_reads, args.loads),
                ),
            ]
            browser.close()
        raw = history_ms(twin_served, twin_id)
        for s in (twin_served, fleet_served):
            s.stop()
    print(f"\nChromium at {CHROMIUM}; median of {args.loads} loads, each in a fresh context\n")
    print(f"| page | to plotted data, ms | its JSON reads alone, ms | target {TARGET_MS:.0f} ms |")
    print("|---|---|---|---|")
    for name, browser_ms, api_ms in rows:
        median = statistics.median(browser_ms)
        verdict = "PASS" if median < TARGET_MS else "MISS"
        print(f"| {name} | {median:.0f} | {statistics.median(api_ms):.0f} | {verdict} |")
    print(f"\nReference: the twin's whole history through the paged history API: {raw:.0f} ms")


if __name__ == "__main__":
    main()
