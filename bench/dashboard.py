"""Dashboard benchmark: how long a page takes in Debian's Chromium from the start of navigation
to its data drawn (measured in the page: `performance.now()` when it first marks its data
loaded), for a twin with 100,000 observations and for a fleet of 10,000 twins; beside it, in
the same run, the JSON reads the page makes timed alone over HTTP, and the reference a page
without server-side downsampling would need (the twin's whole history through the paged
history API). `--month` adds a twin with 30 days of 1 Hz observations (2,592,000).

    python bench/dashboard.py [--observations N] [--learned N] [--twins N] [--loads K] [--month]
                              [--dir DIR]

The first `--learned` observations of a twin are learned by the calibrator; the others get
predictions and versions copied from those, in the database (learning 100,000 rows takes an
hour on two shared cores, and the page reads rows, not how they were learned): each copied
prediction keeps its source's residual and first-guess residual against its own observation.

Needs the `playwright` package (a dev dependency) and /usr/bin/chromium. Target: under 300 ms
to plotted data for both pages.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from sqlalchemy import insert, select, text  # noqa: E402

from app import tables as t  # noqa: E402
from app.db import make_engine  # noqa: E402
from tests.app.conftest import SPEC  # noqa: E402
from tests.dashboard.conftest import CHROMIUM, CHROMIUM_ARGS, Served, clone_twins  # noqa: E402

TARGET_MS = 300.0
BATCH = 10_000


def plant(n: int):
    """n observations of the tests' thermal RC plant, 1 s apart, in batches of BATCH rows."""
    state, noise = 20.0, random.Random(0)
    a = math.exp(-1.0 / (2.5 * 50.0))
    for first in range(0, n, BATCH):
        rows = []
        for i in range(first, min(first + BATCH, n)):
            heat = 5.0 + 5.0 * math.sin(i / 7.0)
            state = a * state + (1 - a) * (20.0 + 2.5 * heat)
            rows.append(
                {
                    "ts": 1_000.0 + i,
                    "inputs": {"heat": heat, "ambient": 20.0},
                    "outputs": {"T": state + noise.gauss(0.0, 0.01)},
                }
            )
        yield rows


def fill_twin(served: Served, name: str, n: int, learned: int) -> int:
    """A thermal RC twin with n observations posted through the API, the first `learned`
    learned by the calibrator and the rest given copied predictions and versions."""
    twin_id = served.http.post("/twins", json={"name": name, **SPEC}).json()["id"]
    posted = 0
    for rows in plant(n):
        if posted < learned < posted + len(rows):  # stop the learned part exactly there
            rows, rest = rows[: learned - posted], rows[learned - posted :]
        else:
            rest = []
        for part in (rows, rest):
            if not part:
                continue
            body = {"observations": part}
            assert served.http.post(f"/twins/{twin_id}/observations", json=body).status_code == 202
            posted += len(part)
            if posted == learned or (posted == n and n < learned):
                served.learn(timeout=3600)
    if n > learned:
        copy_learning(served.database_url, twin_id, learned, n)
    return twin_id


def copy_learning(url: str, twin_id: int, learned: int, n: int) -> None:
    """Predictions for seqs learned+1..n, each from seq 1 + (seq - 1) % learned with its
    residuals kept, and versions continuing the learned ones at the same pace; BATCH * 20
    rows per transaction (SQLite holds what one INSERT ... SELECT on its own table selects)."""
    copy = text(
        "INSERT INTO predictions (twin_id, seq, version, prediction, residual, first_guess) "
        "SELECT o.twin_id, o.seq, p.version, "
        "json_array((o.outputs ->> 0) - (p.residual ->> 0)), p.residual, "
        "json_array((o.outputs ->> 0) - ((s.outputs ->> 0) - (p.first_guess ->> 0))) "
        "FROM observations o JOIN predictions p "
        "ON p.twin_id = o.twin_id AND p.seq = 1 + (o.seq - 1) % :learned "
        "JOIN observations s ON s.twin_id = p.twin_id AND s.seq = p.seq "
        "WHERE o.twin_id = :twin AND o.seq > :first AND o.seq <= :last"
    )
    engine = make_engine(url)
    step = BATCH * 20
    for first in range(learned, n, step):
        with engine.begin() as db:
            bounds = {"first": first, "last": min(first + step, n)}
            db.execute(copy, {"twin": twin_id, "learned": learned, **bounds})
    with engine.begin() as db:
        query = select(t.Version).where(t.Version.twin_id == twin_id).order_by(t.Version.number)
        versions = db.execute(query).mappings().all()
    last = versions[-1]
    per_version = max(learned // max(len(versions) - 1, 1), 1)
    rows, number, watermark = [], last["number"], last["watermark"]
    while watermark < n:
        number, watermark = number + 1, min(watermark + per_version, n)
        source = versions[1 + number % (len(versions) - 1)] if len(versions) > 1 else last
        rows.append(
            {
                **{k: v for k, v in source.items() if k not in ("id", "checkpoint")},
                "number": number,
                "watermark": watermark,
                "checkpoint": last["checkpoint"] if watermark == n else None,
            }
        )
        if len(rows) == BATCH or watermark == n:
            with engine.begin() as db:
                db.execute(insert(t.Version), rows)
            rows = []
    engine.dispose()


def page_ms(browser, url: str, loads: int) -> list[tuple[float, float]]:
    """Per load, in a fresh context: milliseconds from the start of navigation to the page's
    data first drawn, as the page measured it (`data-first-ms`), and as seen from here (from
    `goto` to the mark, through Playwright's round trips)."""
    out = []
    for _ in range(loads):
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        start = time.perf_counter()
        page.goto(url)
        page.wait_for_function("document.body.dataset.firstMs", timeout=600_000)
        outside = (time.perf_counter() - start) * 1000
        out.append((float(page.evaluate("document.body.dataset.firstMs")), outside))
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


def filled(served: Served, name: str, n: int) -> int | None:
    """The id of twin `name` if it is there with n observations, all learned."""
    for twin in served.http.get("/twins", params={"prefix": name}).json():
        if twin["name"] == name and twin["last_seq"] == n:
            assert twin["calibration_lag"]["observations"] == 0, f"{name} is half filled"
            return twin["id"]
    return None


def twin_reads(twin_id: int) -> list[str]:
    """What the twin page reads (range: all, its plots 1,246 pixels wide at 1280x900)."""
    return [
        f"/twins/{twin_id}",
        f"/twins/{twin_id}/drift?limit=50",
        f"/twins/{twin_id}/versions?limit=2000",
        f"/twins/{twin_id}/parameters",
        f"/twins/{twin_id}/series?points=1246&output=T",
    ]


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observations", type=int, default=100_000)
    parser.add_argument("--learned", type=int, default=5_000, help="learned by the calibrator")
    parser.add_argument("--twins", type=int, default=10_000)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--month", action="store_true", help="and a twin of 30 days at 1 Hz")
    parser.add_argument("--dir", help="keep the databases in DIR and reuse twins filled there")
    args = parser.parse_args()
    twins = [("hx-big", args.observations)] + ([("hx-month", 30 * 86_400)] if args.month else [])
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.dir or tmp
        twin_served = Served(f"sqlite:///{folder}/twin.db").start()
        fleet_served = Served(f"sqlite:///{folder}/fleet.db").start()
        ids = {}
        for name, n in twins:
            ids[name] = filled(twin_served, name, n)
            if ids[name] is None:
                start = time.perf_counter()
                ids[name] = fill_twin(twin_served, name, n, min(args.learned, n))
                print(f"filled {name}: {n:,} observations in {time.perf_counter() - start:.0f} s")
        if int(fleet_served.http.get("/twins?limit=1").headers["x-total-count"]) != args.twins:
            clone_twins(fleet_served, args.twins)
        rows, first_views = [], []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page_ms(browser, f"{fleet_served.base}/", 1)  # warm-up: first launch, caches
            for name, n in twins:
                url = f"{twin_served.base}/ui/twins/{ids[name]}?range=0"
                first_views.append((name, n, page_ms(browser, url, 1)[0]))  # builds blocks
                rows.append(
                    (
                        f"twin page, {n:,} observations (range: all)",
                        page_ms(browser, url, args.loads),
                        http_ms(twin_served, twin_reads(ids[name]), args.loads),
                    )
                )
            rows.append(
                (
                    f"fleet page, {args.twins:,} twins",
                    page_ms(browser, f"{fleet_served.base}/", args.loads),
                    http_ms(fleet_served, ["/twins?limit=50&offset=0&sort=id&desc=false"], 1),
                )
            )
            browser.close()
        raw = history_ms(twin_served, ids["hx-big"])
        for s in (twin_served, fleet_served):
            s.stop()
    print(f"\nChromium at {CHROMIUM}; median of {args.loads} loads, each in a fresh context\n")
    print(
        "| page | navigation to data drawn, in the page, ms | the same seen from Playwright, ms "
        f"| its JSON reads one after another, ms | target {TARGET_MS:.0f} ms |"
    )
    print("|---|---|---|---|---|")
    for name, loads, api_ms in rows:
        inside = statistics.median(ms for ms, _ in loads)
        outside = statistics.median(ms for _, ms in loads)
        verdict = "PASS" if inside < TARGET_MS else "MISS"
        reads = statistics.median(api_ms)
        print(f"| {name} | {inside:.0f} | {outside:.0f} | {reads:.0f} | {verdict} |")
    for name, n, (inside, _) in first_views:
        print(
            f"\nFirst view of {name} ({n:,} observations), which builds its series blocks: "
            f"{inside:.0f} ms"
        )
    print(f"Reference: hx-big's whole history through the paged history API: {raw:.0f} ms")


if __name__ == "__main__":
    main()
