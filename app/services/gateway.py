"""Gateway ingestion: one body of observations for many twins (`POST /observations`).

Each row names its twin by `twin_id` or `twin` (its name). The rows are grouped per twin and
each group goes through the per-twin path of `app.services.ingestion` (the same checks, the
same duplicate and time-order rules, the same locked, gap-free `seq` assignment), all in the
request's one transaction: any bad row refuses the whole body (422, each error naming its row
`index` and `twin`) and nothing is stored. Twins are locked in id order, so two gateway bodies
that share twins never wait on each other in a cycle.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import DomainError, Forbidden, Invalid, TooLarge
from app.schemas import GatewayIngestResult, IngestResult
from app.services import ingestion
from app.tables import Twin

TWIN_KEYS = ("twin_id", "twin")
LOOKUP_CHUNK = 500  # ids or names per `IN (...)`


@dataclass(frozen=True)
class Target:
    """A twin rows are posted to: id, name and channels."""

    id: int
    name: str
    inputs: list[str]
    outputs: list[str]


def parse_body(body: bytes, content_type: str | None, max_rows: int) -> list[Any]:
    """The raw rows of a JSON (`{"observations": [...]}`), NDJSON or CSV body."""
    if ingestion.media_kind(content_type) == "csv":
        return _parse_csv(body, max_rows)
    return ingestion.parse_batch(body, content_type, max_rows)


def _parse_csv(body: bytes, max_rows: int) -> list[Any]:
    """Rows of a CSV body whose header is `twin_id` or `twin`, `ts`, and channel columns (the
    union of the twins' channels): each row becomes `{twin..., ts, "channels": {name: value}}`
    and is split into inputs and outputs once its twin is known."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise Invalid(f"the CSV body is not UTF-8: {e}") from e
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [name.strip() for name in next(reader, [])]
    errors = []
    if "ts" not in header:
        errors.append({"line": 1, "field": "ts", "message": "missing column"})
    if not any(key in header for key in TWIN_KEYS):
        errors.append({"line": 1, "field": "twin_id", "message": "missing column (or twin)"})
    if len(set(header)) != len(header):
        errors.append({"line": 1, "field": None, "message": "a column is named twice"})
    if errors:
        raise Invalid("the CSV header must name twin_id or twin, ts and channels", errors)
    rows: list[Any] = []
    for cells in reader:
        if not cells:
            continue
        if len(rows) >= max_rows:
            raise TooLarge(
                f"more than {max_rows} observations in one batch; the limit is {max_rows}"
            )
        if len(cells) != len(header):
            message = f"{len(cells)} cells under a header of {len(header)} columns"
            error = {"index": len(rows), "line": reader.line_num, "field": None, "message": message}
            raise Invalid("a CSV row does not match the header; nothing was stored", [error])
        row: dict[str, Any] = {"channels": {}}
        for name, cell in zip(header, cells, strict=True):
            value = ingestion.csv_value(cell)
            if name == "twin_id" and isinstance(value, float) and value.is_integer():
                row[name] = int(value)
            elif name == "twin":
                row[name] = cell.strip()
            elif name in ("ts", "twin_id"):
                row[name] = value
            else:
                row["channels"][name] = value
        rows.append(row)
    return rows


def _from_csv(obj: dict, target: Target) -> dict:
    """A CSV row as an observation of its twin: that twin's channels (an empty cell: missing);
    a value under another twin's channel is named as an unknown channel."""
    channels = obj["channels"]
    row: dict[str, Any] = {"ts": obj.get("ts"), "inputs": {}, "outputs": {}}
    for kind, names in (("inputs", target.inputs), ("outputs", target.outputs)):
        for name in names:
            if name in channels:
                row[kind][name] = channels[name]
    known = set(target.inputs) | set(target.outputs)
    for name, value in channels.items():
        if name not in known and value is not None:
            row["outputs"][name] = value  # check_rows names it: unknown channel
    return row


def prepare(
    session: Session,
    raw: Sequence[Any],
    check: Callable[[Sequence[Any], Sequence[str], Sequence[str]], list[ingestion.Row]],
    sees: Callable[[int], bool],
) -> Checked:
    """Resolve and check the rows of many twins (no writes): each twin's checked rows.

    `check` is the per-twin row check (`ingestion.check_rows` with the route's settings);
    `sees` says whether the caller's key may use a twin (403 otherwise). Any bad row raises
    `Invalid` naming every bad row."""
    errors: list[dict[str, Any]] = []
    refs = [_reference(i, obj, errors) for i, obj in enumerate(raw)]
    targets = _resolve(session, refs, sees)
    groups: dict[int, list[int]] = {}
    for i, ref in enumerate(refs):
        if ref is None:
            continue
        target, problem = targets.get(ref, (None, "unknown twin"))
        if target is None:
            errors.append(_error(i, ref[1], TWIN_FIELD[ref[0]], problem))
        elif problem is not None:
            errors.append(_error(i, target.id, TWIN_FIELD[ref[0]], problem))
        else:
            groups.setdefault(target.id, []).append(i)
    by_id = {target.id: target for target, _ in targets.values() if target is not None}
    checked = Checked({}, {})
    for twin_id, indexes in groups.items():
        target = by_id[twin_id]
        rows = [_observation(raw[i], target) for i in indexes]
        try:
            found = check(rows, target.inputs, target.outputs)
        except Invalid as e:
            errors.extend(_named(e.errors, indexes, twin_id))
            continue
        checked.rows[twin_id] = [(ts, indexes[k], u, y) for ts, k, u, y in found]
        checked.names[twin_id] = target.name
    if errors:
        errors.sort(key=lambda e: (e.get("index", -1), str(e.get("field"))))
        bad = len({e.get("index") for e in errors})
        raise Invalid(f"{bad} of {len(raw)} observations are invalid; nothing was stored", errors)
    return checked


@dataclass(frozen=True)
class Checked:
    """A gateway body's checked rows per twin id, and the twins' names (for the metrics)."""

    rows: dict[int, list[ingestion.Row]]
    names: dict[int, str]

    @property
    def size(self) -> int:
        return sum(len(rows) for rows in self.rows.values())


def store(session: Session, checked: Checked, now: float | None = None) -> GatewayIngestResult:
    """Store checked rows of many twins in the session's transaction, all or nothing."""
    now = time.time() if now is None else now
    results: dict[int, IngestResult] = {}
    for twin_id in sorted(checked.rows):  # lock order: twin id
        try:
            results[twin_id] = ingestion.store(session, twin_id, checked.rows[twin_id], now)
        except DomainError as e:  # e.g. a twin deleted meanwhile: name the twin too
            e.errors = [{**err, "twin": twin_id} for err in e.errors]
            e.detail = f"twin {twin_id}: {e.detail}; nothing was stored"
            raise
    return GatewayIngestResult(
        accepted=sum(r.accepted for r in results.values()),
        duplicates=sum(r.duplicates for r in results.values()),
        twins={twin_id: results[twin_id] for twin_id in sorted(results)},
    )


TWIN_FIELD = {"id": "twin_id", "name": "twin"}
Reference = tuple[str, int | str]  # ("id", 3) or ("name", "hx-1")


def _reference(i: int, obj: Any, errors: list) -> Reference | None:
    if type(obj) is not dict:
        errors.append(_error(i, None, None, "must be an object {twin_id or twin, ts, ...}"))
        return None
    twin_id, name = obj.get("twin_id"), obj.get("twin")
    if twin_id is not None and name is not None:
        errors.append(_error(i, twin_id, "twin", "give twin_id or twin, not both"))
        return None
    if twin_id is not None:
        if type(twin_id) is not int or twin_id < 1:
            errors.append(_error(i, twin_id, "twin_id", "must be a twin's id (an integer >= 1)"))
            return None
        return ("id", twin_id)
    if name is not None:
        if type(name) is not str or not name:
            errors.append(_error(i, name, "twin", "must be a twin's name (a string)"))
            return None
        return ("name", name)
    errors.append(_error(i, None, "twin_id", "is required: the twin's id (or twin: its name)"))
    return None


def _resolve(
    session: Session, refs: Sequence[Reference | None], sees: Callable[[int], bool]
) -> dict[Reference, tuple[Target | None, str | None]]:
    """Each distinct reference's twin (None: no such twin) and what stops rows going to it.
    A twin the key may not use is refused (403) before anything is checked; an id the key may
    not use is refused whether or not the twin exists (the key learns nothing of other twins)."""
    ids = sorted({r[1] for r in refs if r is not None and r[0] == "id"})
    names = sorted({r[1] for r in refs if r is not None and r[0] == "name"})
    found: dict[Reference, tuple[Target | None, str | None]] = {}
    columns = (Twin.id, Twin.name, Twin.spec)
    alive = Twin.deleted_at.is_(None)
    rows = []
    for k in range(0, len(ids), LOOKUP_CHUNK):
        chunk = ids[k : k + LOOKUP_CHUNK]
        rows += session.execute(select(*columns).where(Twin.id.in_(chunk), alive)).all()
    for k in range(0, len(names), LOOKUP_CHUNK):
        chunk = names[k : k + LOOKUP_CHUNK]
        rows += session.execute(select(*columns).where(Twin.name.in_(chunk), alive)).all()
    for twin_id, name, spec in rows:
        target = Target(twin_id, name, list(spec["inputs"]), list(spec["outputs"]))
        found[("id", twin_id)] = found[("name", name)] = (target, None)
    refused = sorted(_refused(refs, found, sees))
    if refused:
        listed = ", ".join(str(i) for i in refused[:20])
        raise Forbidden(f"the API key may not use twin(s) {listed}; nothing was stored")
    return found


def _refused(refs, found, sees) -> set[int]:
    out: set[int] = set()
    for ref in refs:
        if ref is None:
            continue
        if ref[0] == "id" and not sees(ref[1]):
            out.add(ref[1])
        elif ref in found and not sees(found[ref][0].id):
            out.add(found[ref][0].id)
    return out


def _observation(obj: dict, target: Target) -> dict:
    if "channels" in obj and "inputs" not in obj and "outputs" not in obj:
        return _from_csv(obj, target)
    return {k: v for k, v in obj.items() if k not in TWIN_KEYS}


def _named(errors: list[dict], indexes: list[int], twin_id: int) -> list[dict]:
    """Per-twin errors with the body's row index and the twin."""
    out = []
    for e in errors:
        k = e.get("index")
        index = indexes[k] if isinstance(k, int) and 0 <= k < len(indexes) else k
        out.append(
            {"index": index, "twin": twin_id, **{n: v for n, v in e.items() if n != "index"}}
        )
    return out


def _error(index: int, twin: Any, field: str | None, message: str) -> dict[str, Any]:
    return {"index": index, "twin": twin, "field": field, "message": message}
