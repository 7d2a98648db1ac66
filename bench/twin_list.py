"""Twin list and /metrics at fleet size: the time of `GET /twins` pages (plain, sorted by lag,
filtered by `lagging` and `drifting`) and of `GET /metrics` with 10,000 twins on the embedded
SQLite default (or on PostgreSQL with `--postgres URL`, in a database made and dropped for the
run), beside the same reads with 100 twins measured in the same run (the reference).

    python bench/twin_list.py [--twins 10000] [--reference 100] [--repeat 5] [--events 30]
        [--postgres postgresql+psycopg://postgres@127.0.0.1:54330/postgres [--explain]]

Each twin has 3 versions and 20 observations; half have observations not yet learned (the
older of them a minute old, so `lagging=5` lists them). A tenth have `--events` drift events
over the last hour, the newest recorded now (`drifting=true`); every other twin has as many from
one to two hours ago (the false alarms of a drift-free fleet, which retention keeps for at least
the hour the filter reads). `--explain` prints PostgreSQL's plans of the statements of the
`drifting=true` and `drifting=false` pages that read `drift_events`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import event, insert, text  # noqa: E402

from app import tables as t  # noqa: E402
from app.config import Settings  # noqa: E402
from app.main import create_app  # noqa: E402
from bench.fleet_deploy import postgres_database  # noqa: E402
from tests.app.conftest import SPEC  # noqa: E402

OBSERVATIONS, LEARNED = 20, 15
READS = {
    "page of 50": "/twins?limit=50",
    "page of 50, sort=lag": "/twins?limit=50&sort=lag&desc=true",
    "lagging=5, page of 50": "/twins?lagging=5&limit=50",
    "drifting=true, page of 50": "/twins?drifting=true&limit=50",
    "drifting=false, page of 50": "/twins?drifting=false&limit=50",
    "metrics": "/metrics",
}


def fill_fleet(sessions, n: int, now: float | None = None, events: int = 0) -> list[int]:
    """n twins written straight to the database (through the API this would time creation).
    Twins 3 (mod 10) have a drift event recorded now and twins 7 one from a day ago; with
    `events`, twins 3 have that many over the last hour and every other twin as many from one
    to two hours ago instead."""
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
        if events:
            ages = [j * 3000 / events for j in range(events)]  # 0 to 50 minutes
            events_at = [
                (twin_id, now - age - (0 if i % 10 == 3 else 3600))
                for i, twin_id in enumerate(ids)
                for age in ages
            ]
        else:
            events_at = [(twin_id, now) for i, twin_id in enumerate(ids) if i % 10 == 3]
            events_at += [(twin_id, now - 86_400) for i, twin_id in enumerate(ids) if i % 10 == 7]
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
                for twin_id, at in events_at
            ],
        )
    return ids


@contextmanager
def database(tmp: str, postgres: str | None):
    """A database URL for one fleet: a SQLite file in `tmp`, or a fresh PostgreSQL database."""
    if postgres is None:
        yield f"sqlite:///{tmp}/tandem.db"
        return
    with postgres_database(postgres) as url:
        yield url


def explain(engine, url: str, http) -> list[str]:
    """PostgreSQL's plans (ANALYZE, BUFFERS) of the statements of `GET url` that read
    drift_events, as run with their parameters."""
    seen = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if "drift_events" in statement:
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        assert http.get(url).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", record)
    plans = []
    with engine.connect() as conn:
        for statement, parameters in seen:
            rows = conn.exec_driver_sql(
                "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + statement, parameters
            )
            query = " ".join(statement.split())
            query = query if len(query) < 300 else query[:300] + " ..."
            plans.append(query + "\n" + "\n".join(r[0] for r in rows))
    return plans


def time_reads(
    n: int, repeat: int, events: int = 0, postgres: str | None = None, plans: bool = False
) -> tuple[dict[str, tuple[float, float, int]], list[str]]:
    """{read: (median wall ms, median CPU ms of this process, twins matched)} for a fleet of
    n twins, and the plans of the drifting read when `plans`. The test client serves in this
    process, so its CPU time is the server's work; on a shared machine it is steadier than
    wall time (on PostgreSQL the database server's CPU time is not in it)."""
    with tempfile.TemporaryDirectory() as tmp, database(tmp, postgres) as url:
        settings = Settings(database_url=url, worker=False, run_migrations=True)
        with TestClient(create_app(settings)) as http:
            fill_fleet(http.app.state.sessions, n, events=events)
            engine = http.app.state.engine
            if postgres is not None:  # as autovacuum would: statistics and visibility map
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.execute(text("VACUUM ANALYZE"))
            out = {}
            for name, path in READS.items():
                ms, cpu, total = [], [], 0
                for _ in range(repeat):
                    start, start_cpu = time.perf_counter(), time.process_time()
                    response = http.get(path)
                    ms.append(1000 * (time.perf_counter() - start))
                    cpu.append(1000 * (time.process_time() - start_cpu))
                    assert response.status_code == 200, response.text
                    total = int(response.headers.get("x-total-count", 0))
                out[name] = (statistics.median(ms), statistics.median(cpu), total)
            found = []
            for path in ("/twins?drifting=true&limit=50", "/twins?drifting=false&limit=50"):
                found += explain(engine, path, http) if plans else []
    return out, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--twins", type=int, default=10_000)
    parser.add_argument("--reference", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--events", type=int, default=30, help="drift events per twin")
    parser.add_argument("--postgres", help="a PostgreSQL server URL (default: SQLite)")
    parser.add_argument("--explain", action="store_true", help="with --postgres")
    args = parser.parse_args()
    small, _ = time_reads(args.reference, args.repeat, args.events, args.postgres)
    large, plans = time_reads(
        args.twins, args.repeat, args.events, args.postgres, args.explain and bool(args.postgres)
    )
    a, b = args.reference, args.twins
    print(f"| read | {a} twins: wall / CPU ms (matched) | {b} twins: wall / CPU ms (matched) |")
    print("|---|---|---|")
    for name in READS:
        (a, ac, na), (b, bc, nb) = small[name], large[name]
        print(f"| {name} | {a:.1f} / {ac:.1f} ({na}) | {b:.1f} / {bc:.1f} ({nb}) |")
    for plan in plans:
        print("\n" + plan)


if __name__ == "__main__":
    main()
