"""Observation ingestion: parse and check a batch with plain code (no per-row models, for
speed), then store it in one transaction that assigns gap-free `seq`s.

Rules (see docs/observations.md): a batch is all-or-nothing; a `ts` outside the accepted window
(settings `min_ts`, `max_ts_ahead`) is refused; a batch's rows are stored in `ts` order; a `ts`
the twin already has, or one repeated in the batch, is a duplicate (counted, not stored: retries
are safe, the first row of a repeated `ts` wins); a new row older than the twin's newest one is
late: stored and flagged `LATE` (the learner takes it if it has not learned past it). A
channel that is null or left out is missing: stored as null (a row needs at least one output);
a row with a missing input is flagged `INPUTS_HELD`, since the twin holds the previous value.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db import insert_rows
from app.errors import Invalid, NotFound, TooLarge, UnsupportedMedia
from app.schemas import IngestResult
from app.tables import INPUTS_HELD, LATE, Observation, Twin

NDJSON_TYPES = frozenset({"application/x-ndjson", "application/jsonl", "application/ndjson"})
CSV_TYPES = frozenset({"text/csv", "application/csv"})
ACCEPTED_TYPES = ("application/json", *sorted(NDJSON_TYPES), *sorted(CSV_TYPES))
DUPLICATE_LOOKUP_CHUNK = 500  # ts values per `IN (...)` when looking for stored duplicates
ROW_KEYS = frozenset({"ts", "inputs", "outputs"})
_MISSING = object()

# one checked observation: (ts, index in the batch, inputs, outputs) in spec channel order,
# None where a channel is missing
Row = tuple[float, int, list[float | None], list[float | None]]


def media_kind(content_type: str | None) -> str:
    """ "json", "ndjson" or "csv" for a request's content type (none: JSON); 415 otherwise.
    The one place that decides which bodies observations may come in."""
    media = (content_type or "application/json").split(";")[0].strip().lower()
    if media in NDJSON_TYPES:
        return "ndjson"
    if media in CSV_TYPES:
        return "csv"
    if media == "application/json" or media.endswith("+json"):
        return "json"
    raise UnsupportedMedia(
        f"observations cannot be sent as {media!r}; send one of {', '.join(ACCEPTED_TYPES)}",
        [{"field": "content-type", "message": f"{media!r} is not accepted"}],
    )


def parse_batch(
    body: bytes,
    content_type: str | None,
    max_rows: int,
    inputs: Sequence[str] = (),
    outputs: Sequence[str] = (),
) -> list[Any]:
    """The raw observation objects of a JSON (`{"observations": [...]}`), NDJSON or CSV body
    (CSV needs the twin's channels)."""
    kind = media_kind(content_type)
    if kind == "ndjson":
        rows = _parse_ndjson(body)
    elif kind == "csv":
        rows = _parse_csv(body, inputs, outputs, max_rows)
    else:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise Invalid(f"the body is not valid JSON: {e}") from e
        if not isinstance(data, dict) or not isinstance(data.get("observations"), list):
            raise Invalid(
                'the body must be {"observations": [...]}',
                [{"field": "observations", "message": "must be a list of observations"}],
            )
        rows = data["observations"]
    if len(rows) > max_rows:
        raise TooLarge(f"{len(rows)} observations in one batch; the limit is {max_rows}")
    return rows


def _parse_csv(
    body: bytes, inputs: Sequence[str], outputs: Sequence[str], max_rows: int
) -> list[Any]:
    """Rows of a CSV body whose header is `ts` and the twin's channels, in any order. A number
    stays a number, an empty cell is a missing value (null), anything else is passed on as
    text for `check_rows` to name."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise Invalid(f"the CSV body is not UTF-8: {e}") from e
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [name.strip() for name in next(reader, [])]
    kinds = {"ts": "ts", **dict.fromkeys(inputs, "inputs"), **dict.fromkeys(outputs, "outputs")}
    errors = [
        {"line": 1, "field": name or f"column {k + 1}", "message": "unknown column"}
        for k, name in enumerate(header)
        if name not in kinds
    ]
    errors += [
        {"line": 1, "field": name, "message": "missing column"}
        for name in kinds
        if name not in header
    ]
    if len(set(header)) != len(header):
        errors.append({"line": 1, "field": None, "message": "a column is named twice"})
    if errors:
        raise Invalid("the CSV header must be ts and the twin's channels", errors)
    rows: list[Any] = []
    ragged: list[dict[str, Any]] = []
    for cells in reader:
        if not cells:
            continue
        if len(rows) >= max_rows:
            raise TooLarge(
                f"more than {max_rows} observations in one batch; the limit is {max_rows}"
            )
        if len(cells) != len(header):
            message = f"{len(cells)} cells under a header of {len(header)} columns"
            ragged.append(
                {"index": len(rows), "line": reader.line_num, "field": None, "message": message}
            )
        row: dict[str, Any] = {"inputs": {}, "outputs": {}}
        for name, cell in zip(header, cells, strict=False):
            value = csv_value(cell)
            kind = kinds[name]
            if kind == "ts":
                row["ts"] = value
            else:
                row[kind][name] = value
        rows.append(row)
    if ragged:
        raise Invalid(f"{len(ragged)} CSV rows do not match the header; nothing was stored", ragged)
    return rows


def csv_value(cell: str) -> float | str | None:
    cell = cell.strip()
    if not cell:
        return None
    try:
        return float(cell)
    except ValueError:
        return cell


def _parse_ndjson(body: bytes) -> list[Any]:
    rows = []
    for n, line in enumerate(body.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append(orjson.loads(line))
        except orjson.JSONDecodeError as e:
            message = f"not valid JSON: {e}"
            error = {"index": len(rows), "line": n, "field": None, "message": message}
            raise Invalid(f"line {n} of the NDJSON body is not valid JSON", [error]) from e
    return rows


def check_rows(
    raw: Sequence[Any],
    inputs: Sequence[str],
    outputs: Sequence[str],
    window: tuple[float, float] = (-math.inf, math.inf),
) -> list[Row]:
    """Check every row against the twin's channels and the accepted `window` of timestamps
    (oldest, newest; epoch seconds); raise `Invalid` listing each bad field."""
    errors: list[dict[str, Any]] = []
    rows: list[Row] = []
    for i, obj in enumerate(raw):
        if type(obj) is not dict:
            errors.append(_error(i, None, "must be an object {ts, inputs, outputs}"))
            continue
        if not ROW_KEYS.issuperset(obj):
            for key in sorted(set(obj) - ROW_KEYS):
                errors.append(_error(i, key, "unknown field"))
        ts = _timestamp(obj.get("ts", _MISSING), i, errors)
        if ts is not None and not window[0] <= ts <= window[1]:
            errors.append(_error(i, "ts", _outside(ts, window)))
            ts = None
        u = _values(obj.get("inputs", {} if not inputs else _MISSING), inputs, "inputs", i, errors)
        y = _values(obj.get("outputs", _MISSING), outputs, "outputs", i, errors)
        if y is not None and y.count(None) == len(y):
            errors.append(_error(i, "outputs", "no output has a value; a row needs at least one"))
            y = None
        if ts is not None and u is not None and y is not None:
            rows.append((ts, i, u, y))
    if errors:
        bad = len({e["index"] for e in errors})
        raise Invalid(f"{bad} of {len(raw)} observations are invalid; nothing was stored", errors)
    return rows


def ts_window(min_ts: float, max_ts_ahead: float, now: float | None = None) -> tuple[float, float]:
    """The accepted timestamps: from `min_ts` to `max_ts_ahead` seconds past the clock."""
    return min_ts, (time.time() if now is None else now) + max_ts_ahead


def _outside(ts: float, window: tuple[float, float]) -> str:
    low, high = window
    if ts < low:
        return f"{ts!r} is before the oldest accepted time, {_rfc3339(low)} ({low!r})"
    return (
        f"{ts!r} is ahead of the newest accepted time, {_rfc3339(high)} ({high!r}): "
        "the server's clock plus TANDEM_MAX_TS_AHEAD"
    )


def _rfc3339(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return "out of calendar range"


def _error(index: int, field: str | None, message: str) -> dict[str, Any]:
    return {"index": index, "field": field, "message": message}


def parse_time(value: str) -> float:
    """Epoch seconds from RFC 3339 (a naive time is taken as UTC); raises ValueError."""
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _timestamp(value: Any, i: int, errors: list) -> float | None:
    kind = type(value)
    if kind is float or kind is int:
        ts = float(value)
    elif kind is str:
        try:
            ts = parse_time(value)
        except ValueError:
            errors.append(_error(i, "ts", f"{value!r} is not an RFC 3339 time"))
            return None
    elif value is _MISSING:
        errors.append(_error(i, "ts", "is required"))
        return None
    else:
        errors.append(_error(i, "ts", "must be epoch seconds or an RFC 3339 string"))
        return None
    if not math.isfinite(ts):
        errors.append(_error(i, "ts", "must be finite"))
        return None
    return ts


def _values(obj: Any, names: Sequence[str], kind: str, i: int, errors: list) -> list | None:
    """The channel values of `obj` in spec order (None for a channel that is null or left
    out: missing), or None after recording what is wrong."""
    if obj is _MISSING:
        errors.append(_error(i, kind, "is required"))
        return None
    if type(obj) is not dict:
        errors.append(_error(i, kind, "must be an object of channel: number"))
        return None
    out: list[float | None] = []
    n_errors = len(errors)
    for name in names:
        v = obj.get(name)
        t = type(v)
        if (t is float or t is int) and math.isfinite(v):
            out.append(float(v))
        elif v is None:
            out.append(None)
        elif t is float or t is int:
            errors.append(_error(i, f"{kind}.{name}", "must be finite"))
        else:
            errors.append(_error(i, f"{kind}.{name}", f"must be a number, got {_json_type(v)}"))
    if len(obj) != len(names) or len(errors) != n_errors:  # else obj has exactly `names`
        for name in sorted(set(obj).difference(names)):
            errors.append(_error(i, f"{kind}.{name}", "unknown channel"))
    return out if len(errors) == n_errors else None


def _json_type(v: Any) -> str:
    names = {bool: "a boolean", str: "a string", list: "a list", dict: "an object"}
    return "null" if v is None else names.get(type(v), type(v).__name__)


OBSERVATION_COLUMNS = ("twin_id", "seq", "ts", "inputs", "outputs", "received_at", "flags")


def _insert(
    session: Session, twin_id: int, first: int, rows: list[Row], late: set[int], now: float
) -> None:
    """Bulk insert at the driver level (`insert_rows`), JSON encoded once by orjson. `late`: the
    batch indexes of the rows to flag as late."""
    dumps = orjson.dumps
    insert_rows(
        session.connection(),
        Observation.__table__,
        OBSERVATION_COLUMNS,
        [
            (
                twin_id,
                first + k,
                r[0],
                dumps(r[2]).decode(),
                dumps(r[3]).decode(),
                now,
                (INPUTS_HELD if None in r[2] else 0) | (LATE if r[1] in late else 0),
            )
            for k, r in enumerate(rows)
        ],
    )


def store(session: Session, twin_id: int, rows: list[Row], now: float | None = None):
    """Store checked rows for a twin in the session's transaction; returns an `IngestResult`.

    Seqs are given in arrival order (a batch's rows in `ts` order); a row older than the twin's
    newest observation is stored too, flagged late, and counted on the twin."""
    now = time.time() if now is None else now
    rows.sort(key=lambda r: (r[0], r[1]))
    unique: list[Row] = []
    for r in rows:
        if not unique or r[0] != unique[-1][0]:
            unique.append(r)
    duplicates = len(rows) - len(unique)
    last_seq, last_ts, late_before = _lock_twin(session, twin_id)
    n_old = 0  # rows at or before the newest stored ts: duplicates, or late
    if last_ts is not None:
        while n_old < len(unique) and unique[n_old][0] <= last_ts:
            n_old += 1
    new = unique
    late: set[int] = set()
    if n_old:
        stored = _stored_ts(session, twin_id, [r[0] for r in unique[:n_old]])
        new = [r for r in unique[:n_old] if r[0] not in stored] + unique[n_old:]
        late = {r[1] for r in unique[:n_old] if r[0] not in stored}
        duplicates += n_old - len(late)
    if not new:
        return IngestResult(accepted=0, duplicates=duplicates, first_seq=None, last_seq=None)
    first = last_seq + 1
    _insert(session, twin_id, first, new, late, now)
    last = first + len(new) - 1
    newest = new[-1][0] if last_ts is None else max(last_ts, new[-1][0])
    session.connection().execute(  # Core: no ORM work per post
        update(Twin.__table__)
        .where(Twin.id == twin_id)
        .values(
            last_seq=last,
            last_ts=newest,
            last_received_at=now,
            late_observations=late_before + len(late),
        )
    )
    return IngestResult(
        accepted=len(new), duplicates=duplicates, late=len(late), first_seq=first, last_seq=last
    )


def _lock_twin(session: Session, twin_id: int) -> tuple[int, float | None, int]:
    """Serialize ingestion per twin and read its newest seq and ts, and its count of late
    observations, under the lock.

    PostgreSQL: a row lock (SELECT ... FOR UPDATE). SQLite has no row locks; a no-op UPDATE as
    the transaction's first write takes the database write lock at once (BEGIN IMMEDIATE
    semantics), so two batches for one twin can never be given the same seqs. A twin deleted
    (marked) since the request found it is not found.
    """
    twins = Twin.__table__
    if session.get_bind().dialect.name == "sqlite":
        stmt = (
            update(twins)
            .where(twins.c.id == twin_id, twins.c.deleted_at.is_(None))
            .values(last_seq=twins.c.last_seq)
            .returning(twins.c.last_seq, twins.c.last_ts, twins.c.late_observations)
        )
    else:
        columns = (twins.c.last_seq, twins.c.last_ts, twins.c.late_observations)
        stmt = select(*columns).where(twins.c.id == twin_id, twins.c.deleted_at.is_(None))
        stmt = stmt.with_for_update()
    row = session.connection().execute(stmt).first()
    if row is None:
        raise NotFound(f"twin {twin_id} does not exist")
    return int(row[0]), row[1], int(row[2])


def _stored_ts(session: Session, twin_id: int, candidates: list[float]) -> set[float]:
    found: set[float] = set()
    for k in range(0, len(candidates), DUPLICATE_LOOKUP_CHUNK):
        chunk = candidates[k : k + DUPLICATE_LOOKUP_CHUNK]
        query = select(Observation.ts).where(Observation.twin_id == twin_id)
        found.update(session.scalars(query.where(Observation.ts.in_(chunk))))
    return found
