"""Alembic environment.

The database is, in order: a connection handed in by `app.db` (`config.attributes["connection"]`),
`alembic -x url=...`, the `TANDEM_DATABASE_URL` environment variable, `sqlalchemy.url` in
alembic.ini, or the service default `sqlite:///./tandem.db`.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context

from app.db import make_engine
from app.tables import Base

config = context.config
if config.config_file_name is not None:  # the alembic CLI; app.db passes no file
    fileConfig(config.config_file_name, disable_existing_loggers=False)
target_metadata = Base.metadata


def database_url() -> str:
    return (
        context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get("TANDEM_DATABASE_URL")
        or config.get_main_option("sqlalchemy.url")
        or "sqlite:///./tandem.db"
    )


def run_with(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_with(connection)
        return
    engine = make_engine(database_url())
    try:
        with engine.begin() as conn:
            run_with(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
