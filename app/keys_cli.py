"""`tandem keys create|list|revoke`: API keys, straight in the database (TANDEM_DATABASE_URL).

This is how the first key is made on a service whose authentication is already on.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Annotated

import typer

from app.cli_options import DatabaseUrl

keys_cli = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


@contextmanager
def _session(database_url: str | None):
    from app.config import Settings
    from app.db import make_engine, make_session_factory, upgrade

    settings = Settings(**({"database_url": database_url} if database_url else {}))
    engine = make_engine(settings.database_url)
    try:
        if settings.migrate_on_startup:  # as `tandem serve` would, so a fresh SQLite file works
            upgrade(engine)
        with make_session_factory(engine).begin() as session:
            yield session
    finally:
        engine.dispose()


def _fail(e: Exception) -> None:
    typer.echo(f"error: {getattr(e, 'detail', e)}", err=True)
    raise typer.Exit(1)


@keys_cli.command("create")
def create(
    name: Annotated[str, typer.Argument(help="A name to know the key by (lists, /metrics).")],
    scope: Annotated[
        list[str], typer.Option("--scope", "-s", help="read, ingest or admin; repeat for more.")
    ],
    twin: Annotated[
        list[int] | None,
        typer.Option("--twin", "-t", help="Limit the key to this twin id; repeat for more."),
    ] = None,
    rate: Annotated[
        float | None, typer.Option(help="Requests per second (default: TANDEM_RATE_LIMIT).")
    ] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a key and print it: it is shown this once and stored only as a hash."""
    from app.errors import DomainError
    from app.services.keys import create_key

    try:
        with _session(database_url) as session:
            key, secret = create_key(session, name, scope, twin or None, rate)
            summary = _line(key)
    except DomainError as e:
        _fail(e)
    typer.echo(secret)
    typer.echo(f"created {summary}; the key above is not shown again", err=True)


@keys_cli.command("list")
def list_(database_url: DatabaseUrl = None) -> None:
    """List the keys (never the keys themselves)."""
    from app.services.keys import list_keys

    with _session(database_url) as session:
        lines = [_line(k) for k in list_keys(session)]
    typer.echo("\n".join(lines) if lines else "no API keys")


@keys_cli.command("revoke")
def revoke(
    key_id: Annotated[int, typer.Argument(help="The key's id (from `tandem keys list`).")],
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke a key (running API processes refuse it within TANDEM_KEY_REFRESH_SECONDS)."""
    from app.errors import DomainError
    from app.services.keys import revoke_key

    try:
        with _session(database_url) as session:
            summary = _line(revoke_key(session, key_id))
    except DomainError as e:
        _fail(e)
    typer.echo(f"revoked {summary}")


def _line(key) -> str:
    twins = "all twins" if key.twins is None else "twins " + ",".join(map(str, key.twins))
    rate = "" if key.rate is None else f", {key.rate:g}/s"
    return f"{key.id} {key.name} {key.prefix}... {'+'.join(key.scopes)} ({twins}{rate})"
