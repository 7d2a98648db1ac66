"""The `tandem` command: serve, worker, migrate, demo, import.

Settings are options as well as `TANDEM_*` environment variables (an option wins; both show in
`--help`); the rest of `app.config.Settings` is read from the environment. An error is one
line on stderr and exit code 1; `--debug` shows its traceback.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Annotated

import typer

from app.cli_options import DatabaseUrl
from app.importing import import_command
from app.keys_cli import keys_cli

cli = typer.Typer(
    help="Tandem: digital twins that keep up with the systems they copy. Every setting is also "
    "an environment variable TANDEM_<NAME> (see the README's settings table).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_debug = False  # --debug: let errors through with their traceback

Host = Annotated[str, typer.Option(envvar="TANDEM_HOST", help="Address to listen on.")]


def _retention(name: str, help: str, kind: type = float, default: str = "0: keep all"):
    option = typer.Option(envvar=f"TANDEM_{name.upper()}", min=0, show_default=default, help=help)
    return Annotated[kind | None, option]


# retention (docs/retention.md): options of both commands that run a worker
ObsSeconds = _retention(
    "observation_retention_seconds", "Remove observations older than this many seconds (by ts)."
)
ObsCount = _retention(
    "observation_retention_count", "Keep this many newest observations per twin.", int
)
PredSeconds = _retention(
    "prediction_retention_seconds", "Remove predictions of observations older than this (s)."
)
PredCount = _retention("prediction_retention_count", "Keep this many newest predictions.", int)
VersionSeconds = _retention("version_retention_seconds", "Remove versions older than this (s).")
VersionCount = _retention(
    "version_retention", "Keep this many newest versions per twin.", int, "20000; 0: all"
)
ThinAfter = _retention("version_thin_after", "Thin versions older than this many seconds.")
ThinEvery = _retention("version_thin_every", "Thinned versions keep every k-th number.", int)


Port = Annotated[int, typer.Option(envvar="TANDEM_PORT", help="Port to listen on.")]


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"tandem {version('tandem')}")
        raise typer.Exit()


@cli.callback()
def root(
    debug: Annotated[
        bool,
        typer.Option("--debug", envvar="TANDEM_DEBUG", help="Show the full traceback of an error."),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    global _debug
    _debug = debug


cli.command("import")(import_command)


def make_settings(**options):
    """Settings from the environment, with the options given on the command line on top."""
    from app.config import Settings

    return Settings(**{k: v for k, v in options.items() if v is not None})


@cli.command()
def serve(
    host: Host = "127.0.0.1",
    port: Port = 8000,
    database_url: DatabaseUrl = None,
    worker: Annotated[
        bool | None,
        typer.Option(
            "--worker/--no-worker",
            envvar="TANDEM_WORKER",
            show_default="--worker",
            help="Run the calibrator inside this process.",
        ),
    ] = None,
    embedded_workers: Annotated[
        int | None,
        typer.Option(
            envvar="TANDEM_EMBEDDED_WORKERS",
            show_default="one per core, at most 2",
            min=1,
            help="Calibrator processes beside the API (with --worker).",
        ),
    ] = None,
    observation_retention_seconds: ObsSeconds = None,
    observation_retention_count: ObsCount = None,
    prediction_retention_seconds: PredSeconds = None,
    prediction_retention_count: PredCount = None,
    version_retention_seconds: VersionSeconds = None,
    version_retention: VersionCount = None,
    version_thin_after: ThinAfter = None,
    version_thin_every: ThinEvery = None,
) -> None:
    """Run the HTTP API (and, unless --no-worker, the calibration worker)."""
    import uvicorn

    from app.main import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    retention = dict(
        observation_retention_seconds=observation_retention_seconds,
        observation_retention_count=observation_retention_count,
        prediction_retention_seconds=prediction_retention_seconds,
        prediction_retention_count=prediction_retention_count,
        version_retention_seconds=version_retention_seconds,
        version_retention=version_retention,
        version_thin_after=version_thin_after,
        version_thin_every=version_thin_every,
    )
    settings = make_settings(
        database_url=database_url,
        worker=worker,
        embedded_workers=embedded_workers,
        **retention,
    )
    app = create_app(settings)
    app.state.listen_host = host  # for the authentication rule (docs/security.md)
    from twin.runtime import tune_garbage_collector

    # the cycle collector off the ingestion path: a 1,000-row post allocates thousands of dicts,
    # and with the default thresholds collections cost more than parsing it (twin.runtime)
    tune_garbage_collector()
    # SIGTERM: at most 3 s for open requests, then the worker's 3 s grace: down within 10 s
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=3)


@cli.command()
def worker(
    database_url: DatabaseUrl = None,
    torch_threads: Annotated[
        int | None,
        typer.Option(envvar="TANDEM_TORCH_THREADS", show_default="1", min=1, help="torch threads."),
    ] = None,
    observation_retention_seconds: ObsSeconds = None,
    observation_retention_count: ObsCount = None,
    prediction_retention_seconds: PredSeconds = None,
    prediction_retention_count: PredCount = None,
    version_retention_seconds: VersionSeconds = None,
    version_retention: VersionCount = None,
    version_thin_after: ThinAfter = None,
    version_thin_every: ThinEvery = None,
) -> None:
    """Run a calibration worker until SIGINT/SIGTERM; several may share one PostgreSQL database."""
    from app.db import describe_database
    from app.embedded import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    retention = dict(
        observation_retention_seconds=observation_retention_seconds,
        observation_retention_count=observation_retention_count,
        prediction_retention_seconds=prediction_retention_seconds,
        prediction_retention_count=prediction_retention_count,
        version_retention_seconds=version_retention_seconds,
        version_retention=version_retention,
        version_thin_after=version_thin_after,
        version_thin_every=version_thin_every,
    )
    settings = make_settings(database_url=database_url, torch_threads=torch_threads, **retention)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    typer.echo(f"worker calibrating {describe_database(settings.database_url)}")
    run_worker(settings, stop)


@cli.command()
def migrate(
    revision: Annotated[
        str, typer.Argument(help="Alembic revision: head, a number like 0002, or base.")
    ] = "head",
    downgrade: Annotated[
        bool,
        typer.Option(
            "--downgrade",
            help="Allow going back to an older revision (drops what later ones added).",
        ),
    ] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Move the database schema to REVISION and print the revision it is at afterwards. A
    REVISION older than the database's is refused unless --downgrade is given."""
    from app.db import describe_database, head_revision, migrate_to

    url = make_settings(database_url=database_url).database_url
    before, after = migrate_to(url, revision, allow_downgrade=downgrade)
    head = head_revision()
    where = "head" if after == head else f"head is {head}"
    change = "unchanged" if before == after else f"was {before or 'empty'}"
    typer.echo(
        f"database at {after or 'base (empty)'} ({where}; {change}): {describe_database(url)}"
    )


@cli.command()
def demo(
    host: Host = "127.0.0.1",
    port: Port = 8000,
    database_url: DatabaseUrl = None,
    rate: Annotated[
        float, typer.Option(help="Observations posted per second of wall time.")
    ] = 20.0,
    duration: Annotated[
        float, typer.Option(help="Stop after this many seconds (0: run until ^C).")
    ] = 0.0,
) -> None:
    """Serve on the embedded default and feed a demo twin from a drifting simulated plant over
    HTTP, printing the plant's true parameters beside the twin's as the drift goes on."""
    from app.demo import run_demo

    run_demo(make_settings(database_url=database_url), host, port, rate, duration)


cli.add_typer(keys_cli, name="keys")


def main() -> None:
    """Run the CLI; an error is one line on stderr and exit code 1 (the traceback with
    --debug)."""
    try:
        cli()
    except Exception as e:
        if _debug:
            raise
        typer.echo(f"error: {describe_error(e)}", err=True)
        sys.exit(1)


CLEAR_ERRORS = ("ApiError", "ImportFailed", "CommandError", "MigrationRefused")


def describe_error(e: BaseException) -> str:
    """One line that says what went wrong, without the traceback."""
    import httpx

    if isinstance(e, httpx.TransportError):
        where = e.request.url if _has_request(e) else "the service"
        return f"cannot reach {where}: {e or type(e).__name__}"
    if type(e).__name__ == "ValidationError" and hasattr(e, "errors"):  # pydantic: settings
        first = e.errors()[0]
        name = ".".join(str(p) for p in first["loc"])
        return f"setting {name} (TANDEM_{name.upper()}): {first['msg']}"
    orig = getattr(e, "orig", None)  # SQLAlchemy wraps the driver's error
    text = str(orig if orig is not None else e).strip()
    line = text.splitlines()[0] if text else type(e).__name__
    return line if type(e).__name__ in CLEAR_ERRORS else f"{type(e).__name__}: {line}"


def _has_request(e: Exception) -> bool:
    try:
        e.request  # noqa: B018  (httpx raises RuntimeError when it has none)
    except RuntimeError:
        return False
    return True
