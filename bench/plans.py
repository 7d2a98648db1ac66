"""Query plans at fleet scale on PostgreSQL: a synthetic fleet (default 10,000 twins x 2,000
observations = 20M rows, built with generate_series in a fresh database, dropped afterwards),
then the service's own hot paths run against it with every statement captured, and each
captured statement shown with `EXPLAIN (ANALYZE, BUFFERS)` (writes inside a rolled-back
transaction).

    python bench/plans.py --postgres postgresql+psycopg://postgres@127.0.0.1:54330/postgres \
        [--twins 10000] [--rows 2000] [--pending 10] [--keep]

The paths: a calibrator pass (claim, read the pending observations, commit), the twin list
and one twin's status (calibration lag), ingestion of a 10-row batch, and retention's sweep
and one batch where `app.retention` exists. Prints, per statement, the path, the plan, and
whether it touched the heap of `observations` (not index-only there).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy import event, inspect, text  # noqa: E402

from app.calibrator import Calibrator, CalibratorConfig  # noqa: E402
from app.config import Settings  # noqa: E402
from app.main import create_app  # noqa: E402
from bench.fleet_deploy import postgres_database  # noqa: E402
from twin.plants import FirstOrderPlant  # noqa: E402
from twin.replica import Twin as Replica  # noqa: E402
from twin.spec import TwinSpec  # noqa: E402

T0 = 1.7e9  # ts of seq 0


KEYS = {  # observations' keys as the revision before the covering keys made them
    "pk_observations": "PRIMARY KEY (twin_id, seq)",
    "uq_observations_twin_id_ts": "UNIQUE (twin_id, ts)",
}
COVERING = {  # the same keys as the covering keys' revision makes them
    "pk_observations": "PRIMARY KEY (twin_id, seq) INCLUDE (received_at)",
    "uq_observations_twin_id_ts": "UNIQUE (twin_id, ts) INCLUDE (seq)",
}


def build(engine, twins: int, rows: int, pending: int) -> None:
    """The fleet: `twins` first_order twins of `rows` observations each, in time order (as a
    fleet writes them: every twin at each second), every twin with 20 versions and `pending`
    observations past its newest watermark. Loaded without the keys of `observations` (rebuilt
    after, as the schema defines them) nor foreign-key triggers; then VACUUM ANALYZE (the
    visibility map that index-only scans need)."""
    spec = TwinSpec.from_dict(FirstOrderPlant().spec_dict())
    replica = Replica.create(spec)
    watermark = rows - pending
    replica.watermark = watermark
    checkpoint = replica.to_bytes()
    numbers = 20
    started = time.monotonic()
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL synchronous_commit = off"))
        conn.execute(text("SET LOCAL session_replication_role = replica"))  # no FK triggers
        conn.execute(text("SET LOCAL maintenance_work_mem = '256MB'"))
        for name in KEYS:
            conn.execute(text(f"ALTER TABLE observations DROP CONSTRAINT {name}"))
        conn.execute(
            text(
                "INSERT INTO twins (id, name, spec, created_at, last_seq, last_ts, "
                "last_received_at, calibration_status, calibration_failures) "
                "SELECT i, 'plan-' || lpad(i::text, 6, '0'), CAST(:spec AS json), :t0, :rows, "
                ":t0 + :rows, :t0 + :rows, 'ok', 0 FROM generate_series(1, :n) AS i"
            ),
            {"spec": _json(spec.to_dict()), "t0": T0, "rows": rows, "n": twins},
        )
        conn.execute(text("SELECT setval(pg_get_serial_sequence('twins', 'id'), :n)"), {"n": twins})
        conn.execute(
            text(
                "INSERT INTO observations (twin_id, seq, ts, inputs, outputs, received_at) "
                "SELECT t, s, :t0 + s, CAST('[1.0]' AS json), CAST('[2.0]' AS json), :t0 + s "
                "FROM generate_series(1, :rows) AS s, generate_series(1, :n) AS t"
            ),
            {"t0": T0, "rows": rows, "n": twins},
        )
        conn.execute(
            text(
                "INSERT INTO versions (twin_id, number, watermark, created_at, parameters, "
                "metrics, checkpoint) SELECT t, v, (:wm * v) / (:numbers - 1), :t0 + v, "
                "CAST('{}' AS json), CAST('{}' AS json), "
                "CASE WHEN v = :numbers - 1 THEN :blob END "
                "FROM generate_series(1, :n) AS t, generate_series(0, :numbers - 1) AS v"
            ),
            {"wm": watermark, "numbers": numbers, "t0": T0, "blob": checkpoint, "n": twins},
        )
        columns = {c["name"] for c in inspect(conn).get_columns("twins")}
        if {"version", "watermark"} <= columns:  # the newest version kept on the twin row
            conn.execute(
                text("UPDATE twins SET version = :v, watermark = :wm"),
                {"v": numbers - 1, "wm": watermark},
            )
        for name, key in KEYS.items():
            conn.execute(text(f"ALTER TABLE observations ADD CONSTRAINT {name} {key}"))
    vacuum(engine)
    took = time.monotonic() - started
    print(f"built {twins:,} twins x {rows:,} observations = {twins * rows:,} rows in {took:.0f} s")


def rekey(engine, keys: dict[str, str]) -> None:
    """Rebuild observations' keys as `keys` defines them, in one statement."""
    clauses = [f"DROP CONSTRAINT {name}, ADD CONSTRAINT {name} {key}" for name, key in keys.items()]
    with engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE observations {', '.join(clauses)}"))


def vacuum(engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))


def sizes(engine) -> str:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.relname, pg_size_pretty(pg_relation_size(c.oid)) FROM pg_class c "
                "WHERE c.relname IN ('observations', 'pk_observations', "
                "'uq_observations_twin_id_ts') ORDER BY c.relname"
            )
        ).all()
    return ", ".join(f"{name} {size}" for name, size in rows)


def _json(value) -> str:
    import orjson

    return orjson.dumps(value).decode()


@contextmanager
def captured(engine, path: str, into: list):
    """Record (path, statement, parameters) of every statement run meanwhile."""

    def record(conn, cursor, statement, parameters, context, executemany):
        if not executemany and not statement.lstrip().upper().startswith(("SET", "SHOW")):
            into.append((path, statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", record)


def run_paths(url: str, twins: int, pending: int, ts: float) -> tuple[object, list]:
    """Run the hot paths against the fleet; their statements, in order."""
    statements: list = []
    settings = Settings(database_url=url, worker=False)
    client = TestClient(create_app(settings))
    client.__enter__()
    engine = client.app.state.engine
    sessions = client.app.state.sessions
    worker = Calibrator(sessions, CalibratorConfig(claim_limit=4, budget_seconds=None))
    with captured(engine, "calibrator pass", statements):
        assert worker.run_once() == 4 * pending, "the pass did not learn the pending rows"
    with captured(engine, "GET /twins?limit=50", statements):
        assert client.get("/twins", params={"limit": 50}).status_code == 200
    middle = twins // 2
    with captured(engine, "GET /twins/{id}", statements):
        assert client.get(f"/twins/{middle}").status_code == 200
    body = {
        "observations": [
            {"ts": ts + k, "inputs": {"u": 1.0}, "outputs": {"y": 2.0}} for k in range(10)
        ]
    }
    with captured(engine, "POST /twins/{id}/observations", statements):
        assert client.post(f"/twins/{middle}/observations", json=body).status_code == 202
    try:
        from app.retention import Retention, RetentionPolicy
    except ImportError:
        Retention = None
    if Retention is not None:
        policy = RetentionPolicy(observation_seconds=600.0)  # by age: the (twin_id, ts) key
        retention = Retention(sessions, policy)
        with captured(engine, "retention sweep", statements):
            due = retention.sweep(time.time())
        if due:
            with captured(engine, "retention batch", statements):
                retention.remove_batch(due[0], time.time())
    client.__exit__(None, None, None)
    return engine, statements


def normalized(statement: str) -> str:
    """The statement on one line, its parameters as ? and lists of them as one (statements
    that differ only in how many twins they name are one statement)."""
    key = re.sub(r"%\(\w+\)s(::\w+)?", "?", re.sub(r"\s+", " ", statement))
    key = re.sub(r"\?(, \?)+", "?, ...", key)
    return re.sub(r"\(\?, \.\.\.\)(, \(\?, \.\.\.\))*", "(?, ...), ...", key)


def explain(engine, statements: list) -> list[tuple[str, str, str]]:
    """(path, statement, plan) of each distinct statement, run in rolled-back transactions."""
    out, seen = [], set()
    for path, statement, parameters in statements:
        key = normalized(statement)
        if key in seen or key.upper().startswith(("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT")):
            continue
        seen.add(key)
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + statement, parameters)
            plan = "\n".join(r[0] for r in cursor.fetchall())
        except Exception as exc:  # e.g. a statement EXPLAIN cannot take
            plan = f"(no plan: {type(exc).__name__}: {str(exc).splitlines()[0]})"
        finally:
            raw.rollback()
            raw.close()
        out.append((path, key, plan))
    return out


def touches_observation_heap(plan: str) -> bool:
    """Whether the plan reads `observations` rows from its heap: a scan of it that is not
    index-only, or an index-only scan of it with heap fetches."""
    node = ""
    for line in plan.splitlines():
        if "Scan" in line or "->" in line:
            node = line
            if re.search(r" on observations\b", line) and "Index Only Scan" not in line:
                return True
        elif "Heap Fetches:" in line and re.search(r" on observations\b", node):
            fetches = int(line.split("Heap Fetches:")[1].split()[0])
            if fetches > 0:
                return True
    return False


def covering_revision() -> tuple[str, str]:
    """(the revision before the covering keys, the covering keys' revision)."""
    (path,) = (ROOT / "migrations" / "versions").glob("*_observation_covering_keys.py")
    source = path.read_text()
    down = re.search(r'down_revision: str \| None = "(\d+)"', source).group(1)
    return down, re.search(r'^revision: str = "(\d+)"', source, re.M).group(1)


def report(label: str, plans: list) -> list[tuple[str, str, str, str]]:
    print(f"\n# {label}: {len(plans)} distinct statements\n")
    summary = []
    for path, statement, plan in plans:
        access = ""
        if re.search(r"\bobservations\b", statement):
            heap = touches_observation_heap(plan)
            access = "heap" if heap else "index only"
        took = re.search(r"Execution Time: ([0-9.]+) ms", plan)
        summary.append((path, statement, took.group(1) if took else "-", access))
        print(f"## {path}  {access and 'observations: ' + access}\n{statement}\n{plan}\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", required=True, help="a PostgreSQL server URL")
    parser.add_argument("--twins", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=2_000, help="observations per twin")
    parser.add_argument("--pending", type=int, default=10, help="unlearned per twin")
    args = parser.parse_args(argv)
    from app.db import make_engine, upgrade

    # The schema is at the head (the service's statements need it), its observation keys
    # built as they were before the covering keys' revision, then rebuilt as it makes them.
    before, covering = covering_revision()
    with postgres_database(args.postgres) as url:
        upgrade(url, "head")
        engine = make_engine(url)
        build(engine, args.twins, args.rows, args.pending)
        print(f"keys without INCLUDE: {sizes(engine)}")
        old = report(
            f"revision {before}", explain(*run_paths(url, args.twins, args.pending, T0 + 1e6))
        )
        started = time.monotonic()
        rekey(engine, COVERING)
        took = time.monotonic() - started
        vacuum(engine)
        print(f"\nrevision {covering} rebuilt both keys in {took:.0f} s: {sizes(engine)}")
        new = report(
            f"revision {covering}", explain(*run_paths(url, args.twins, args.pending, T0 + 2e6))
        )
        engine.dispose()
    after = {statement: (ms, access) for _, statement, ms, access in new}
    print(
        f"| path | statement | ms, {before} | observations, {before} | ms, {covering} | "
        f"observations, {covering} |\n|---|---|---|---|---|---|"
    )
    for path, statement, ms, access in old:
        ms2, access2 = after.get(statement, ("-", ""))
        short = statement if len(statement) < 100 else statement[:97] + "..."
        print(f"| {path} | `{short}` | {ms} | {access} | {ms2} | {access2} |")


if __name__ == "__main__":
    main()
