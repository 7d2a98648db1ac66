"""Twin list and /metrics at fleet size: the time of `GET /twins` pages (plain, sorted by lag,
filtered by `lagging` and `drifting`) and of `GET /metrics` with 10,000 twins on the embedded
SQLite default, beside the same reads with 100 twins measured in the same run (the reference).

    python bench/twin_list.py [--twins 10000] [--reference 100] [--repeat 5]

Each twin has 3 versions and 20 observations; half have observations not yet learned (the
older of them a minute old, so `lagging=5` lists them), a tenth a drift event recorded now
(`drifting=true`) and a tenth one from a day ago.
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

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from app import tables as t  # noqa: E402
from app.config import Settings  # noqa: E402
from app.main import create_app  # noqa: E402
from tests.app.conftest import SPEC  # noqa: E402

OBSERVATIONS, LEARNED = 20, 15
READS = {
    "page of 50": "/twins?limit=50",
    "page of 50, sort=lag": "/twins?limit=50&sort=lag&desc=true",
    "lagging=5, page of 50": "/twins?lagging=5&limit=50",
    "drifting=true, page of 50": "/twins?drifting=true&limit=50",
    "metrics": "/metrics",
}


def fill_fleet(sessions, n: int, now: float | None = None) -> list[int]:
    """n twins written straight to the database (through the API this would time creation)."""
    now = time.time() if now is None else now
    metrics = {"outputs": {"T": {"twin": {"rmse": 0.1}, "first_guess": {"rmse": 0.5}}}}
    with sessions.begin() as session:
        session.execute(
            insert(t.Twin),
            [
                {
                    "name": f"ahu-{i:05d}",
                    "spec": SPEC,
                    "created_at": now - 3600,
                    "last_seq": OBSERVATIONS if i % 2 else LEARNED,
                    "last_ts": 1000.0 + (OBSERVATIONS if i % 2 else LEARNED),
                    "last_received_at": now - 60,
                }
                for i in range(n)
            ],
        )
        ids = sorted(session.scalars(t.Twin.__table__.select().with_only_columns(t.Twin.id)))
        session.execute(
            insert(t.Version),
            [
                {
                    "twin_id": twin_id,
                    "number": k,
                    "watermark": [0, 10, LEARNED][k],
                    "created_at": now - 60 * (3 - k),
                    "parameters": {"R": 2.0, "C": 50.0},
                    "metrics": metrics,
                }
                for twin_id in ids
                for k in range(3)
            ],
        )
        session.execute(
            insert(t.Observation),
            [
                {
                    "twin_id": twin_id,
                    "seq": s,
                    "ts": 1000.0 + s,
                    "inputs": [1.0, 20.0],
                    "outputs": [21.0],
                    "received_at": now - 60 - (OBSERVATIONS - s),
                }
                for i, twin_id in enumerate(ids)
                for s in range(1, (OBSERVATIONS if i % 2 else LEARNED) + 1)
            ],
        )
        events = [(twin_id, now) for i, twin_id in enumerate(ids) if i % 10 == 3]
        events += [(twin_id, now - 86_400) for i, twin_id in enumerate(ids) if i % 10 == 7]
        session.execute(
            insert(t.DriftEvent),
            [
                {
                    "twin_id": twin_id,
                    "seq": 12,
                    "ts": 1012.0,
                    "output": "T",
                    "detector": "page_hinkley",
                    "statistic": 9.0,
                    "start_seq": 10,
                    "created_at": at,
                }
                for twin_id, at in events
            ],
        )
    return ids


def time_reads(n: int, repeat: int) -> dict[str, tuple[float, float, int]]:
    """{read: (median wall ms, median CPU ms of this process, twins matched)} for a fleet of
    n twins. The test client serves in this process, so its CPU time is the server's work; on
    a shared machine it is steadier than wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database_url=f"sqlite:///{tmp}/tandem.db", worker=False)
        with TestClient(create_app(settings)) as http:
            fill_fleet(http.app.state.sessions, n)
            out = {}
            for name, url in READS.items():
                ms, cpu, total = [], [], 0
                for _ in range(repeat):
                    start, start_cpu = time.perf_counter(), time.process_time()
                    response = http.get(url)
                    ms.append(1000 * (time.perf_counter() - start))
                    cpu.append(1000 * (time.process_time() - start_cpu))
                    assert response.status_code == 200, response.text
                    total = int(response.headers.get("x-total-count", 0))
                out[name] = (statistics.median(ms), statistics.median(cpu), total)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--twins", type=int, default=10_000)
    parser.add_argument("--reference", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    small = time_reads(args.reference, args.repeat)
    large = time_reads(args.twins, args.repeat)
    a, b = args.reference, args.twins
    print(f"| read | {a} twins: wall / CPU ms (matched) | {b} twins: wall / CPU ms (matched) |")
    print("|---|---|---|")
    for name in READS:
        (a, ac, na), (b, bc, nb) = small[name], large[name]
        print(f"| {name} | {a:.1f} / {ac:.1f} ({na}) | {b:.1f} / {bc:.1f} ({nb}) |")


if __name__ == "__main__":
    main()
