"""The twin list at fleet size: filtered by name prefix, sorted, paged, and each listed twin's
health (current error against its first guess, drift events) read for that page only."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

from app.services.twins import TwinStatus, twin_statuses
from app.tables import DriftEvent, Twin, Version

SORTS = ("id", "name", "last_ts", "lag")


def page_twins(
    session: Session,
    prefix: str | None,
    sort: str,
    desc: bool,
    limit: int | None,
    offset: int,
    only: Collection[int] | None = None,
) -> tuple[list[TwinStatus], int]:
    """The statuses of one page of twins whose name starts with `prefix` (and whose id is in
    `only`, when given: a twin-limited key's), and how many match.

    `id`, `name` and `last_ts` sort in the database; `lag` (pending observations, then id)
    needs every matching twin's status first."""
    assert sort in SORTS, f"unknown sort {sort!r}"
    query = select(Twin).where(Twin.deleted_at.is_(None))  # marked deleted: being purged
    if prefix:
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Twin.name.like(f"{escaped}%", escape="\\"))
    if only is not None:
        query = query.where(Twin.id.in_(list(only)))
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    if sort == "lag":
        statuses = twin_statuses(session, list(session.scalars(query)))
        statuses.sort(key=lambda s: (s.calibration_lag.observations, s.id), reverse=desc)
        end = None if limit is None else offset + limit
        return statuses[offset:end], total
    column = {"id": Twin.id, "name": Twin.name, "last_ts": Twin.last_ts}[sort]
    order = column.desc() if desc else column.asc()
    query = query.order_by(order.nulls_last() if sort == "last_ts" else order, Twin.id)
    query = query.offset(offset).limit(limit)
    return twin_statuses(session, list(session.scalars(query))), total


def health(session: Session, statuses: list[TwinStatus]) -> dict[int, dict]:
    """Per twin id: `rmse` {output: {twin, first_guess}} from its latest version's rolling
    metrics, and `drift` {events, last_at}: how many drift events it has had and when (server
    clock) the newest was recorded. The statuses name each twin's latest version already."""
    ids = [s.id for s in statuses]
    if not ids:
        return {}
    latest = [(s.id, s.version) for s in statuses]
    metrics = session.execute(
        select(Version.twin_id, Version.metrics).where(
            tuple_(Version.twin_id, Version.number).in_(latest)
        )
    )
    out = {i: {"rmse": {}, "drift": {"events": 0, "last_at": None}} for i in ids}
    for twin_id, m in metrics:
        out[twin_id]["rmse"] = _errors(m or {})
    events = session.execute(
        select(DriftEvent.twin_id, func.count(), func.max(DriftEvent.created_at))
        .where(DriftEvent.twin_id.in_(ids))
        .group_by(DriftEvent.twin_id)
    )
    for twin_id, count, last_at in events:
        out[twin_id]["drift"] = {"events": int(count), "last_at": last_at}
    return out


def _errors(metrics: dict) -> dict[str, dict[str, float | None]]:
    out = {}
    for name, m in (metrics.get("outputs") or {}).items():
        baseline = m.get("first_guess") or m.get("frozen") or {}
        out[name] = {
            "twin": _number((m.get("twin") or {}).get("rmse")),
            "first_guess": _number(baseline.get("rmse")),
        }
    return out


def _number(value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
