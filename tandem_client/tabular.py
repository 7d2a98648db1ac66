"""Import a table of observations (a CSV file, or Parquet with pyarrow) into a twin.

A table has a time column and one column per channel. Columns under other names or in other
units are mapped with `[SOURCE=]CHANNEL[:EXPRESSION]` (`Temp_F=T:(x-32)*5/9`: the column
`Temp_F`, converted, is the channel `T`). Rows are posted in batches through the client, in
file order; the twin's newest `ts`, read back before starting, is where a resumed import
picks up (rows at or before it are skipped; posting them again would only count duplicates).
"""

from __future__ import annotations

import ast
import csv
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, BinaryIO
from zoneinfo import ZoneInfo

from tandem_client.client import Client
from tandem_client.results import IngestResult, Twin

TIME_COLUMNS = ("ts", "time", "timestamp", "datetime", "date")  # tried in order, any case
_OPERATORS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow, ast.Mod, ast.USub, ast.UAdd)


class ImportFailed(Exception):
    """The table cannot be imported as asked; the message says where and why."""


@dataclass(frozen=True)
class ColumnMap:
    """One mapping: the file's column `source` is the twin's channel `channel`, converted by
    `expression` (arithmetic in `x`, e.g. `(x-32)*5/9`; None: as it is)."""

    source: str
    channel: str
    expression: str | None = None
    convert: Callable[[float], float] = field(default=float, repr=False, compare=False)

    @classmethod
    def parse(cls, spec: str) -> ColumnMap:
        """`[SOURCE=]CHANNEL[:EXPRESSION]`, e.g. `Temp_F=T:(x-32)*5/9`, `Flow=Q`, `P:x*1000`."""
        names, _, expression = spec.partition(":")
        source, renamed, channel = names.partition("=")
        source, channel = source.strip(), channel.strip()
        if not renamed:
            channel = source
        if not source or not channel:
            raise ImportFailed(f"mapping {spec!r}: expected [SOURCE=]CHANNEL[:EXPRESSION]")
        expression = expression.strip() or None
        convert = _compile(expression, spec) if expression else float
        return cls(source, channel, expression, convert)


def read_mapping_file(path: str | Path) -> list[ColumnMap]:
    """Mappings from a text file: one `[SOURCE=]CHANNEL[:EXPRESSION]` a line, `#` comments."""
    maps = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            maps.append(ColumnMap.parse(line))
    return maps


def _compile(expression: str, spec: str) -> Callable[[float], float]:
    """A function of x for an arithmetic expression: numbers, x, + - * / % ** and brackets."""
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as e:
        raise ImportFailed(f"mapping {spec!r}: {expression!r} is not an expression") from e
    for node in ast.walk(tree):
        allowed = isinstance(node, ast.Expression | ast.BinOp | ast.UnaryOp | ast.Load) or (
            isinstance(node, _OPERATORS)
            or (isinstance(node, ast.Constant) and type(node.value) in (int, float))
        )
        if isinstance(node, ast.Name) and node.id == "x" and isinstance(node.ctx, ast.Load):
            allowed = True
        if not allowed:
            raise ImportFailed(
                f"mapping {spec!r}: only numbers, x, + - * / % ** and brackets are allowed"
            )
    function = eval(f"lambda x: {expression}", {"__builtins__": {}})  # checked just above
    return lambda x: float(function(x))


@dataclass
class ImportReport:
    """What an import did: rows read, rows skipped as already there (resume), what the
    service said about the rest, and the file's columns it did not use."""

    rows: int = 0
    skipped: int = 0
    result: IngestResult | None = None
    ignored_columns: list[str] = field(default_factory=list)
    resumed_after: float | None = None
    first_ts: float | None = None
    last_ts: float | None = None


def import_table(
    client: Client | None,
    path: str | Path,
    twin: Twin,
    *,
    maps: Sequence[ColumnMap] = (),
    time_column: str | None = None,
    time_format: str | None = None,
    timezone: str | None = None,
    batch_rows: int = 5_000,
    resume: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Post the rows of the table at `path` to `twin`. `progress(done, total)` is called after
    each batch (bytes of a CSV file, rows of a Parquet file). `client=None` reads and converts
    every row without posting (a dry run)."""
    table = open_table(Path(path))
    report = ImportReport()
    with table:
        header = table.columns
        time_col = _time_column(header, time_column)
        plan = _plan(header, time_col, twin, maps)
        report.ignored_columns = [c for c in header if c != time_col and c not in plan.used]
        zone = ZoneInfo(timezone) if timezone else None
        if resume and client is not None and twin.last_ts is not None:
            report.resumed_after = twin.last_ts
        batch: list[dict[str, Any]] = []
        for where, record in table.rows():
            ts = _time(record[time_col], time_format, zone, where, time_col)
            report.rows += 1
            if report.resumed_after is not None and ts <= report.resumed_after:
                report.skipped += 1
                continue
            batch.append(plan.row(ts, record, where))
            report.first_ts = ts if report.first_ts is None else report.first_ts
            report.last_ts = ts
            if len(batch) >= batch_rows:
                _post(client, twin, batch, report)
                batch = []
                if progress:
                    progress(table.done(), table.total)
        if batch:
            _post(client, twin, batch, report)
        if progress:
            progress(table.total, table.total)
    return report


def _post(client: Client | None, twin: Twin, rows: list, report: ImportReport) -> None:
    if client is None:
        return
    result = client.post_observations(twin, rows)
    report.result = result if report.result is None else report.result + result


def _time_column(header: Sequence[str], asked: str | None) -> str:
    if asked is not None:
        if asked not in header:
            raise ImportFailed(f"no time column {asked!r}; the columns are {', '.join(header)}")
        return asked
    lower = {c.lower(): c for c in header}
    for name in TIME_COLUMNS:
        if name in lower:
            return lower[name]
    raise ImportFailed(
        f"no time column ({', '.join(TIME_COLUMNS)}); name it with --time-column. "
        f"The columns are {', '.join(header)}"
    )


def _time(value: Any, fmt: str | None, zone: tzinfo | None, where: str, column: str) -> float:
    """Epoch seconds from a number, a datetime or a text time (ISO 8601, or `fmt`); a time
    without a zone is in `zone` (UTC when None)."""
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            ts = float(value)
        else:
            if isinstance(value, datetime):
                moment = value
            else:
                text = str(value).strip()
                try:
                    return _finite(float(text))
                except ValueError:
                    pass
                moment = datetime.strptime(text, fmt) if fmt else datetime.fromisoformat(text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=zone or ZoneInfo("UTC"))
            ts = moment.timestamp()
        return _finite(ts)
    except ValueError:
        hint = f" (format {fmt!r})" if fmt else " (epoch seconds or ISO 8601; see --time-format)"
        raise ImportFailed(f"{where}, column {column!r}: {value!r} is not a time{hint}") from None


def _finite(x: float) -> float:
    if not math.isfinite(x):
        raise ValueError(x)
    return x


@dataclass
class _Plan:
    """Which column, converted how, gives each of the twin's channels."""

    inputs: list[tuple[str, str, Callable[[float], float]]]  # (channel, column, convert)
    outputs: list[tuple[str, str, Callable[[float], float]]]
    used: set[str]

    def row(self, ts: float, record: dict[str, Any], where: str) -> dict[str, Any]:
        return {
            "ts": ts,
            "inputs": {ch: _value(record[col], f, where, col) for ch, col, f in self.inputs},
            "outputs": {ch: _value(record[col], f, where, col) for ch, col, f in self.outputs},
        }


def _plan(header: Sequence[str], time_col: str, twin: Twin, maps: Sequence[ColumnMap]) -> _Plan:
    channels = twin.inputs + twin.outputs
    by_channel: dict[str, ColumnMap] = {}
    for m in maps:
        if m.channel not in channels:
            raise ImportFailed(
                f"mapping {m.source}={m.channel}: twin {twin.name!r} has no channel "
                f"{m.channel!r} (its channels are {', '.join(channels)})"
            )
        if m.channel in by_channel:
            raise ImportFailed(f"channel {m.channel!r} is mapped twice")
        if m.source not in header:
            raise ImportFailed(
                f"mapping {m.source}={m.channel}: the file has no column {m.source!r} "
                f"(its columns are {', '.join(header)})"
            )
        by_channel[m.channel] = m
    missing = [c for c in channels if c not in by_channel and c not in header]
    if missing:
        raise ImportFailed(
            f"the file has no column for channel(s) {', '.join(missing)} of twin {twin.name!r}; "
            f"map one with --map COLUMN=CHANNEL (the columns are {', '.join(header)})"
        )

    def source(ch: str) -> tuple[str, str, Callable[[float], float]]:
        m = by_channel.get(ch)
        return (ch, m.source, m.convert) if m else (ch, ch, float)

    plan = _Plan([source(c) for c in twin.inputs], [source(c) for c in twin.outputs], set())
    plan.used = {col for _, col, _ in plan.inputs + plan.outputs}
    if time_col in plan.used:
        raise ImportFailed(f"the time column {time_col!r} cannot also be a channel")
    return plan


def _value(raw: Any, convert: Callable[[float], float], where: str, column: str) -> float | None:
    """A channel value: empty or NaN is a missing value (None); a number, converted."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    try:
        x = float(raw)
    except (TypeError, ValueError):
        raise ImportFailed(f"{where}, column {column!r}: {raw!r} is not a number") from None
    if math.isnan(x):
        return None
    try:
        return convert(x)
    except (ArithmeticError, ValueError) as e:
        raise ImportFailed(f"{where}, column {column!r}: converting {x!r} failed: {e}") from None


# -- tables -----------------------------------------------------------------------------------
class _Table:
    columns: list[str]
    total: int

    def rows(self) -> Iterator[tuple[str, dict[str, Any]]]:
        raise NotImplementedError

    def done(self) -> int:
        raise NotImplementedError

    def __enter__(self) -> _Table:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def close(self) -> None:
        pass


def open_table(path: Path) -> _Table:
    if not path.is_file():
        raise ImportFailed(f"{path}: no such file")
    if path.suffix.lower() in (".parquet", ".pq"):
        return _ParquetTable(path)
    return _CsvTable(path)


class _CsvTable(_Table):
    """A CSV file read as bytes line by line, so progress is the bytes read so far."""

    def __init__(self, path: Path):
        self.path = path
        self.total = path.stat().st_size
        self._file: BinaryIO = path.open("rb")
        self._read = 0
        self._reader = csv.reader(self._lines(), skipinitialspace=True)
        try:
            self.columns = [c.strip() for c in next(self._reader)]
        except StopIteration:
            self.close()
            raise ImportFailed(f"{path}: the file is empty") from None
        except UnicodeDecodeError as e:
            self.close()
            raise ImportFailed(f"{path}: not UTF-8 text ({e})") from None

    def _lines(self) -> Iterable[str]:
        first = True
        for line in self._file:
            self._read += len(line)
            text = line.decode("utf-8-sig" if first else "utf-8")
            first = False
            yield text

    def rows(self) -> Iterator[tuple[str, dict[str, Any]]]:
        n = len(self.columns)
        try:
            for cells in self._reader:
                if not cells or cells == [""]:
                    continue
                where = f"{self.path.name} line {self._reader.line_num}"
                if len(cells) != n:
                    raise ImportFailed(f"{where}: {len(cells)} cells under a header of {n}")
                yield where, dict(zip(self.columns, cells, strict=True))
        except UnicodeDecodeError as e:
            raise ImportFailed(f"{self.path}: not UTF-8 text ({e})") from None

    def done(self) -> int:
        return self._read

    def close(self) -> None:
        self._file.close()


class _ParquetTable(_Table):
    """A Parquet file read in record batches (needs pyarrow); progress is rows."""

    def __init__(self, path: Path):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportFailed("reading Parquet needs pyarrow: pip install pyarrow") from None
        self.path = path
        self._file = pq.ParquetFile(path)
        self.columns = list(self._file.schema_arrow.names)
        self.total = self._file.metadata.num_rows
        self._done = 0

    def rows(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for batch in self._file.iter_batches(batch_size=10_000):
            for record in batch.to_pylist():
                self._done += 1
                yield f"{self.path.name} row {self._done}", record

    def done(self) -> int:
        return self._done

    def close(self) -> None:
        self._file.close()
