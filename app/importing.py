"""`tandem import FILE --twin NAME`: a CSV or Parquet table posted to a running service
through the Python client, in batches, with a progress bar; see docs/client.md."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

Url = Annotated[str, typer.Option("--url", envvar="TANDEM_URL", help="The service to post to.")]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="TANDEM_API_KEY", help="Sent as `Authorization: Bearer`."),
]


def import_command(
    file: Annotated[Path, typer.Argument(help="A CSV file, or Parquet (.parquet) with pyarrow.")],
    twin: Annotated[str, typer.Option("--twin", help="The twin's name (or id); it must exist.")],
    maps: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            metavar="[COLUMN=]CHANNEL[:EXPR]",
            help="Read CHANNEL from COLUMN, converted by EXPR in x: --map 'Temp_F=T:(x-32)*5/9'."
            " Repeat for each channel; unmapped channels are read from the column of their name.",
        ),
    ] = None,
    mapping: Annotated[
        Path | None, typer.Option(help="A file of --map lines (one a line, # comments).")
    ] = None,
    time_column: Annotated[
        str | None,
        typer.Option(
            help="The time column (default: first of ts, time, timestamp, datetime, date)."
        ),
    ] = None,
    time_format: Annotated[
        str | None,
        typer.Option(help="strptime format of text times (default: ISO 8601 or epoch seconds)."),
    ] = None,
    timezone: Annotated[
        str | None,
        typer.Option(
            "--tz", help="Zone of times written without one, e.g. Europe/Berlin (default UTC)."
        ),
    ] = None,
    batch_rows: Annotated[int, typer.Option(min=1, help="Rows per request.")] = 5_000,
    resume: Annotated[
        bool,
        typer.Option(
            help="Skip rows at or before the twin's newest observation (an import that stopped "
            "picks up where it was; --no-resume posts all: rows already there come back as "
            "duplicates)."
        ),
    ] = True,
    dry_run: Annotated[
        bool, typer.Option(help="Read and convert every row; post nothing.")
    ] = False,
    url: Url = "http://127.0.0.1:8000",
    api_key: ApiKey = None,
) -> None:
    """Import observations from a CSV or Parquet file (a time column and channel columns) into a
    twin through the HTTP API, in batches, with a progress bar."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeRemainingColumn

    from tandem_client import Client
    from tandem_client.tabular import ColumnMap, ImportFailed, import_table, read_mapping_file

    column_maps = [
        *(read_mapping_file(mapping) if mapping else []),
        *map(ColumnMap.parse, maps or []),
    ]
    with Client(url, api_key) as client:
        target = _find_twin(client, twin)
        if target is None:
            raise ImportFailed(f"no twin is named {twin!r} at {url}; create it first")
        columns = (
            "[progress.description]{task.description}",
            BarColumn(),
            TaskProgressColumn(),
            TimeRemainingColumn(),
        )
        stderr = Console(stderr=True)
        with Progress(*columns, console=stderr, transient=True) as bar:
            task = bar.add_task(f"{file.name} -> {target.name}", total=None)
            report = import_table(
                None if dry_run else client,
                file,
                target,
                maps=column_maps,
                time_column=time_column,
                time_format=time_format,
                timezone=timezone,
                batch_rows=batch_rows,
                resume=resume,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    _print_report(file, target.name, target.id, report, dry_run)


def _find_twin(client, ref: str):
    found = client.find_twin(ref)
    if found is None and ref.isdigit():
        from tandem_client import ApiError

        try:
            return client.twin(int(ref))
        except ApiError as e:
            if e.status_code != 404:
                raise
    return found


def _print_report(file: Path, name: str, twin_id: int, report, dry_run: bool) -> None:
    echo = typer.echo
    what = "read (dry run, nothing posted)" if dry_run else "imported"
    echo(f"{what} {file} into twin {name!r} (id {twin_id}): {report.rows} rows")
    if report.resumed_after is not None:
        since = datetime.fromtimestamp(report.resumed_after, UTC).isoformat()
        echo(f"  resumed after the twin's newest observation ({since}): {report.skipped} skipped")
    if report.first_ts is not None:
        first = datetime.fromtimestamp(report.first_ts, UTC).isoformat()
        last = datetime.fromtimestamp(report.last_ts, UTC).isoformat()
        echo(f"  rows from {first} to {last}")
    if report.result is not None:
        r = report.result
        seqs = f", seq {r.first_seq} to {r.last_seq}" if r.first_seq is not None else ""
        echo(f"  {r.accepted} accepted, {r.duplicates} duplicates in {r.batches} request(s){seqs}")
    if report.ignored_columns:
        echo(f"  columns not used: {', '.join(report.ignored_columns)}")
