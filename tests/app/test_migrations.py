"""The schema exists only through Alembic: upgrade, downgrade, and agreement with tables.py."""

import json
from argparse import Namespace
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from app.db import (
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    schema_is_current,
    upgrade,
)
from app.tables import Base

TABLES = {
    "twins",
    "observations",
    "predictions",
    "versions",
    "drift_events",
    "api_keys",
    "workers",
    "series_blocks",
}
ROOT = Path(__file__).resolve().parents[2]
VERSIONS = ROOT / "migrations" / "versions"


def tables(engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def test_upgrade_head_on_an_empty_database(database_url):
    engine = make_engine(database_url)
    try:
        assert current_revision(engine) is None and not schema_is_current(engine)
        upgrade(database_url)
        assert tables(engine) == TABLES
        assert current_revision(engine) == head_revision()
        assert head_revision() == sorted(p.stem[:4] for p in VERSIONS.glob("0*.py"))[-1]
        assert schema_is_current(engine)
    finally:
        engine.dispose()


def test_migrations_match_the_models(database_url):
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_downgrade_base_and_upgrade_again(database_url):
    engine = make_engine(database_url)
    try:
        upgrade(database_url)
        downgrade(database_url, "base")
        assert tables(engine) == set() and current_revision(engine) is None
        upgrade(database_url)
        assert tables(engine) == TABLES and schema_is_current(engine)
    finally:
        engine.dispose()


def test_alembic_cli_config_takes_the_url_from_x_argument(database_url):
    config = Config(str(ROOT / "alembic.ini"), cmd_opts=Namespace(x=[f"url={database_url}"]))
    command.upgrade(config, "head")
    engine = make_engine(database_url)
    try:
        assert schema_is_current(engine)
    finally:
        engine.dispose()


def test_observations_stored_before_flags_upgrade_and_downgrade_with_their_data(database_url):
    """Rows written at 0003 keep their data through the head (no flag, no late count) and back:
    no downgrade recreates a table that others refer to (that would cascade to their rows)."""
    upgrade(database_url, "0003")
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO twins (id, name, spec, created_at, last_seq) "
                    "VALUES (1, 'a', '{}', 0, 1)"
                )
            )
            conn.execute(text("INSERT INTO observations VALUES (1, 1, 5.0, '[1.0]', '[2.0]', 6.0)"))
        upgrade(database_url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT flags FROM observations")).scalar() == 0
            assert conn.execute(text("SELECT late_observations FROM twins")).scalar() == 0
        downgrade(database_url, "0003")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT ts FROM observations")).scalar() == 5.0
            assert conn.execute(text("SELECT name FROM twins")).scalar() == "a"
        assert current_revision(engine) == "0003"
    finally:
        engine.dispose()


def test_specs_stored_without_a_learner_method_name_their_kinds_default_of_the_time(
    database_url,
):
    """Revision 0014: a spec whose method was left out (null) names the default it ran with
    (`gradient` for mlp, `pgpe` for the others); named methods and odd specs are kept."""
    upgrade(database_url, "0013")
    specs = {
        1: {"model": {"kind": "first_order"}, "learner": {"method": None, "seed": 3}},
        2: {"model": {"kind": "mlp"}, "learner": {"method": None, "seed": 0, "window": 64}},
        3: {"model": {"kind": "arx"}, "learner": {"method": "kalman", "seed": 0}},
        4: {},
    }
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            for twin_id, spec in specs.items():
                conn.execute(
                    text(
                        "INSERT INTO twins (id, name, spec, created_at, last_seq) "
                        "VALUES (:id, :name, :spec, 0, 0)"
                    ),
                    {"id": twin_id, "name": f"t{twin_id}", "spec": json.dumps(spec)},
                )
        upgrade(database_url)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, spec FROM twins ORDER BY id")).all()
        stored = {i: json.loads(s) if isinstance(s, str) else s for i, s in rows}
        assert stored[1]["learner"] == {"method": "pgpe", "seed": 3}
        assert stored[2]["learner"] == {"method": "gradient", "seed": 0, "window": 64}
        assert stored[3] == specs[3] and stored[4] == {}
        downgrade(database_url, "0013")
        assert current_revision(engine) == "0013"
    finally:
        engine.dispose()
