"""The twin list at fleet size: filtered by name prefix, sorted, paged, and each listed twin's
health (current error against its first guess, drift events) read for that page only."""

from __future__ import annotations

import time
from collections.abc import Collection

from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

from app.services.twins import TwinStatus, twin_statuses
from app.tables import DriftEvent, Observation, Twin, Version

SORTS = ("id", "name", "last_ts", "lag")
# a drift event recorded this recently makes a twin "drifting" (the dashboard's fleet badge,
# RECENT_DRIFT_S in app/dashboard/static/fleet.js, uses the same span)
DRIFTING_SECONDS = 3600.0


def page_twins(
    session: Session,
    prefix: str | None,
    sort: str,
    desc: bool,
    limit: int | None,
    offset: int,
    only: Collection[int] | None = None,
    lagging: float | None = None,
    drifting: bool | None = None,
    now: float | None = None,
) -> tuple[list[TwinStatus], int]:
    """The statuses of one page of twins whose name starts with `prefix` (and whose id is in
    `only`, when given: a twin-limited key's), and how many match. `lagging`: only twins whose
    calibration lag is over that many seconds; `drifting`: only twins with (True) or without
    (False) a drift event in the last `DRIFTING_SECONDS`.

    `id`, `name` and `last_ts` sort in the database; `lag` (pending observations, then id)
    needs every matching twin's status first."""
    assert sort in SORTS, f"unknown sort {sort!r}"
    # plain rows, not ORM objects (a page may hold 10,000); marked deleted: being purged
    query = select(*Twin.__table__.columns).where(Twin.deleted_at.is_(None))
    if prefix:
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Twin.name.like(f"{escaped}%", escape="\\"))
    if only is not None:
        query = query.where(Twin.id.in_(list(only)))
    now = time.time() if now is None else now
    if lagging is not None:
        query = query.where(_lagging(lagging, now))
    if drifting is not None:
        # one index-only probe of (twin_id, created_at) per twin, not a scan of every event
        # since the cut (a drift-free fleet's false alarms alone are about 26 per twin an hour)
        recent = (
            select(DriftEvent.id)
            .where(DriftEvent.twin_id == Twin.id, DriftEvent.created_at >= now - DRIFTING_SECONDS)
            .exists()
        )
        query = query.where(recent if drifting else ~recent)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    if sort == "lag":  # pending observations, computed per twin in the database
        pending = Twin.last_seq - func.coalesce(latest_watermark(), 0)
        ties = Twin.id.desc() if desc else Twin.id.asc()
        query = query.order_by(pending.desc() if desc else pending.asc(), ties)
    else:
        column = {"id": Twin.id, "name": Twin.name, "last_ts": Twin.last_ts}[sort]
        order = column.desc() if desc else column.asc()
        query = query.order_by(order.nulls_last() if sort == "last_ts" else order, Twin.id)
    query = query.offset(offset).limit(limit)
    return twin_statuses(session, session.execute(query).all()), total


def latest_watermark():
    """The watermark of a twin's newest version, as a subquery correlated to `twins`: one
    probe of the (twin_id, number) key per twin, never an aggregate over the versions table."""
    return (
        select(Version.watermark)
        .where(Version.twin_id == Twin.id)
        .order_by(Version.number.desc())
        .limit(1)
        .correlate(Twin)
        .scalar_subquery()
    )


def _lagging(seconds: float, now: float):
    """Twins whose oldest observation not yet learned (seq = the latest version's watermark + 1)
    was received more than `seconds` ago: per twin, one lookup of its newest version on the
    (twin_id, number) key and one of that observation on the (twin_id, seq) key."""
    watermark = latest_watermark()
    received = (
        select(Observation.received_at)
        .where(Observation.twin_id == Twin.id, Observation.seq == watermark + 1)
        .correlate(Twin)
        .scalar_subquery()
    )
    return (Twin.last_seq > watermark) & (received < now - seconds)


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


def gauges(session: Session) -> list[tuple]:
    """For `/metrics`, every twin in one statement of per-twin key probes: (name, last_seq,
    status, failures, version number, watermark, version metrics, receive time of the oldest
    observation not yet learned or None)."""
    newest = (
        select(Version.id)
        .where(Version.twin_id == Twin.id)
        .order_by(Version.number.desc())
        .limit(1)
        .correlate(Twin)
        .scalar_subquery()
    )
    pending = (Observation.twin_id == Twin.id) & (Observation.seq == Version.watermark + 1)
    query = (
        select(
            Twin.name,
            Twin.last_seq,
            Twin.calibration_status,
            Twin.calibration_failures,
            Version.number,
            Version.watermark,
            Version.metrics,
            Observation.received_at,
        )
        .join(Version, Version.id == newest)
        .outerjoin(Observation, pending & (Twin.last_seq > Version.watermark))
        .where(Twin.deleted_at.is_(None))
        .order_by(Twin.id)
    )
    return list(session.execute(query))
