"""Engines, sessions and the schema's revision: SQLite (WAL) or PostgreSQL (psycopg 3).

The schema is made only by the Alembic revisions in `migrations/`; `upgrade`/`downgrade` run
them programmatically, and `schema_is_current` tells readiness whether the database is at head.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, Table, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from app.tables import json_dumps

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str, **kwargs) -> Engine:
    """An engine with orjson for JSON columns; SQLite connections get WAL, a busy timeout and
    enforced foreign keys (ON DELETE CASCADE needs them)."""
    if url.startswith("sqlite"):
        kwargs.setdefault("connect_args", {}).setdefault("check_same_thread", False)
        if url in ("sqlite://", "sqlite:///:memory:"):  # one shared connection, one database
            kwargs.setdefault("poolclass", StaticPool)
    else:
        kwargs.setdefault("pool_pre_ping", True)
    engine = create_engine(
        url, json_serializer=json_dumps, json_deserializer=orjson.loads, **kwargs
    )
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def describe_database(url: str) -> str:
    """A database URL for people: a SQLite file as its absolute path, a password masked."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            return "an in-memory SQLite database"
        return f"SQLite file {Path(parsed.database).resolve()}"
    return parsed.render_as_string()


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute("PRAGMA journal_mode = WAL")  # in-memory databases answer 'memory'; fine
    cursor.execute("PRAGMA synchronous = FULL")  # a 202 survives power loss, not just a crash
    cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run `callback` once the session's transaction has committed (e.g. to count metrics)."""
    session.info.setdefault("after_commit", []).append(callback)


def run_after_commit(session: Session) -> None:
    for callback in session.info.pop("after_commit", []):
        callback()


# -- schema revision ----------------------------------------------------------------------------
def alembic_config() -> Config:
    """The Alembic configuration, independent of the working directory and of alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def schema_is_current(engine: Engine) -> bool:
    return current_revision(engine) == head_revision()


def upgrade(target: str | Engine, revision: str = "head") -> None:
    """Migrate the database at `target` (a URL or an engine) up to `revision`."""
    _run(target, lambda config: command.upgrade(config, revision))


def downgrade(target: str | Engine, revision: str) -> None:
    """Migrate the database at `target` down to `revision` (`base` drops everything)."""
    _run(target, lambda config: command.downgrade(config, revision))


class MigrationRefused(Exception):
    """A migration that would go back to an older revision, not asked for as a downgrade."""


def migrate_to(
    url: str, revision: str, allow_downgrade: bool = False
) -> tuple[str | None, str | None]:
    """Move the database at `url` to `revision`: up, or down when `revision` is older than the
    database's and `allow_downgrade`; returns the revisions before and after."""
    engine = make_engine(url)
    try:
        before = current_revision(engine)
        if _is_older(before, revision):
            if not allow_downgrade:
                raise MigrationRefused(
                    f"the database is at {before}, and {revision} is older: pass --downgrade to "
                    "go back to it (that drops what the later revisions added)"
                )
            downgrade(engine, revision)
        else:
            upgrade(engine, revision)
        return before, current_revision(engine)
    finally:
        engine.dispose()


def _is_older(current: str | None, revision: str) -> bool:
    """Whether `revision` is an ancestor of `current` (`base` and `-N` always are)."""
    if current is None:
        return False
    if revision == "base" or revision.startswith("-"):
        return True
    script = ScriptDirectory.from_config(alembic_config())
    try:
        target = script.get_revision(revision)
    except Exception:  # unknown or ambiguous: `upgrade` says so in Alembic's words
        return False
    if target is None or target.revision == current:
        return False
    return target.revision in {r.revision for r in script.iterate_revisions(current, "base")}


def _run(target: str | Engine, fn: Callable[[Config], None]) -> None:
    engine = make_engine(target) if isinstance(target, str) else target
    try:
        with engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            fn(config)
    finally:
        if isinstance(target, str):
            engine.dispose()


def insert_rows(
    conn: Connection, table: Table, columns: tuple[str, ...], rows: list[tuple]
) -> None:
    """One executemany of plain tuples (values in `columns` order, JSON already encoded) at the
    driver level: SQLAlchemy's per-row parameter processing cost more than the database's own
    insert on the hot paths (a post's observations, a pass's predictions)."""
    assert all(c in table.c for c in columns), f"{table.name} changed"
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    marks = ", ".join([mark] * len(columns))
    conn.exec_driver_sql(f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks})", rows)
