"""On PostgreSQL the keys of `observations` cover the hot reads, so they are index-only scans:
the oldest pending observation's receive time (calibration lag, claim order) by (twin_id, seq),
and the seqs of old observations (retention by age) by (twin_id, ts)."""

import re
from pathlib import Path

import pytest
from sqlalchemy import text

from app.db import downgrade, make_engine, upgrade

pytestmark = pytest.mark.postgres
VERSIONS = Path(__file__).resolve().parents[2] / "migrations" / "versions"


def revision_before_covering_keys() -> str:
    (path,) = VERSIONS.glob("*_observation_covering_keys.py")
    return re.search(r'down_revision: str \| None = "(\d+)"', path.read_text()).group(1)


def plan(conn, sql: str) -> str:
    conn.execute(text("SET enable_seqscan = off"))  # a tiny table: make the planner show keys
    return "\n".join(r[0] for r in conn.execute(text("EXPLAIN (COSTS OFF) " + sql)))


def index_definitions(engine) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'observations'")
        )
        return dict(rows.all())


def test_lag_and_retention_reads_are_index_only(postgres_url):
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO twins (id, name, spec, created_at) VALUES (1, 'a', '{}', 0);"
                    "INSERT INTO observations (twin_id, seq, ts, inputs, outputs, received_at) "
                    "SELECT 1, s, s, '[1]', '[2]', s FROM generate_series(1, 100) AS s"
                )
            )
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE observations"))
            lag = plan(conn, "SELECT received_at FROM observations WHERE twin_id = 1 AND seq = 7")
            old = plan(conn, "SELECT seq FROM observations WHERE twin_id = 1 AND ts < 50")
        assert "Index Only Scan using pk_observations" in lag
        assert "Index Only Scan using uq_observations_twin_id_ts" in old
    finally:
        engine.dispose()


def test_the_covering_keys_come_and_go_with_their_revision(postgres_url):
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    try:
        keys = index_definitions(engine)
        assert keys["pk_observations"].endswith("(twin_id, seq) INCLUDE (received_at)")
        assert keys["uq_observations_twin_id_ts"].endswith("(twin_id, ts) INCLUDE (seq)")
        downgrade(postgres_url, revision_before_covering_keys())
        keys = index_definitions(engine)
        assert keys["pk_observations"].endswith("(twin_id, seq)")
        assert keys["uq_observations_twin_id_ts"].endswith("(twin_id, ts)")
    finally:
        engine.dispose()
