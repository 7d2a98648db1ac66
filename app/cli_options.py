"""Options that several `tandem` commands share, declared once."""

from __future__ import annotations

from typing import Annotated

import typer

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="TANDEM_DATABASE_URL",
        show_default="sqlite:///./tandem.db",
        help="The service's database: a SQLite file (sqlite:///path) or PostgreSQL "
        "(postgresql+psycopg://user@host/db).",
    ),
]
