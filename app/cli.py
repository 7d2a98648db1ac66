"""The `tandem` command: serve, worker, migrate, demo, import."""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading

import typer

from app.importing import import_command

cli = typer.Typer(
    help="Tandem: digital twins that keep up with the systems they copy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

cli.command("import")(import_command)


@cli.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
) -> None:
    """Run the HTTP API (and, unless TANDEM_WORKER=false, the calibration worker)."""
    import uvicorn

    from app.config import Settings
    from app.main import create_app

    app = create_app(Settings())
    tune_garbage_collector()
    uvicorn.run(app, host=host, port=port, log_level="info")


def tune_garbage_collector() -> None:
    """Keep Python's cycle collector off the ingestion path: the modules and objects that live
    as long as the process (torch, SQLAlchemy) are frozen out of its scans, and it runs after
    50,000 new allocations rather than 700. A 1,000-row batch allocates thousands of dicts;
    with the default settings, collections cost more than parsing it."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


@cli.command()
def worker() -> None:
    """Run a calibration worker until SIGINT/SIGTERM; several may share one PostgreSQL database."""
    from sqlalchemy import make_url

    from app.config import Settings
    from app.embedded import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = Settings()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    url = make_url(settings.database_url).render_as_string()  # the password is masked
    typer.echo(f"worker calibrating {url}")
    run_worker(settings, stop)


@cli.command()
def migrate(revision: str = typer.Argument("head", help="Alembic revision to upgrade to.")) -> None:
    """Upgrade the database schema (TANDEM_DATABASE_URL) to the given revision."""
    from app.config import Settings
    from app.db import upgrade

    upgrade(Settings().database_url, revision)
    typer.echo(f"database at {revision}")


@cli.command()
def demo(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    rate: float = typer.Option(20.0, help="Observations posted per second of wall time."),
    duration: float = typer.Option(0.0, help="Stop after this many seconds (0: run until ^C)."),
) -> None:
    """Serve on the embedded default and feed a demo twin from a drifting simulated plant over
    HTTP, printing how the twin's error and parameters follow the drift."""
    from app.demo import run_demo

    run_demo(host, port, rate, duration)


def main() -> None:
    """Run the CLI; `tandem import`'s errors are one line on stderr and exit code 1."""
    from tandem_client import ApiError
    from tandem_client.tabular import ImportFailed

    try:
        cli()
    except (ApiError, ImportFailed) as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
