"""Twin creation, deletion and status (version, watermark, calibration lag)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.errors import Conflict, Invalid, NotFound
from app.schemas import CalibrationLag, TwinCreate
from app.tables import Observation, Twin, Version
from twin.spec import SpecError, TwinSpec

if TYPE_CHECKING:
    from twin.learners.cost import Budget


# A deleted twin's name until it is purged: names refuse control characters, so no twin can
# be created with it.
DELETED_NAME = "\x1fdeleted:"


@dataclass(frozen=True)
class TwinStatus:
    """A twin row with its calibration status, the shape of `TwinRead`."""

    id: int
    name: str
    spec: dict
    created_at: float
    version: int
    watermark: int
    last_seq: int
    last_ts: float | None
    calibration_lag: CalibrationLag
    status: str = "ok"
    error: str | None = None
    failures: int = 0
    retry_at: float | None = None


def get_twin(session: Session, twin_id: int) -> Twin:
    twin = session.get(Twin, twin_id)
    if twin is None or twin.deleted_at is not None:
        raise NotFound(f"twin {twin_id} does not exist")
    return twin


def create_twin(session: Session, body: TwinCreate, budget: Budget | None = None) -> Twin:
    """Validate the spec and its cost against `budget`, then store the twin and its untrained
    version 0 (with checkpoint)."""
    from twin.learners.cost import check_budget
    from twin.replica import Twin as Replica  # pulls in torch and every model kind

    try:
        spec = TwinSpec.from_dict(body.spec_dict())
        if budget is not None:
            check_budget(spec, budget)
    except SpecError as e:
        raise Invalid(f"invalid twin spec: {e}", [{"field": e.field, "message": e.message}]) from e
    if session.scalar(select(Twin.id).where(Twin.name == body.name)) is not None:
        raise Conflict(f"a twin named {body.name!r} already exists")
    replica = Replica.create(spec)
    now = time.time()
    # stored with its learner's method named (the kind's default where the spec left it out)
    twin = Twin(name=body.name, spec=replica.spec.to_dict(), created_at=now, last_seq=0)
    session.add(twin)
    try:
        session.flush()
    except IntegrityError as e:  # a concurrent create took the name first
        raise Conflict(f"a twin named {body.name!r} already exists") from e
    session.add(
        Version(
            twin_id=twin.id,
            number=0,
            watermark=replica.watermark,
            created_at=now,
            parameters=replica.parameters(),
            metrics=replica.metrics(),
            checkpoint=replica.to_bytes(),
        )
    )
    session.flush()
    return twin


def delete_twin(session: Session, twin: Twin) -> None:
    """Mark a twin deleted: one row written, whatever its history. Every reader treats it as
    gone at once and its name is free again; `app.purge` removes its observations,
    predictions, versions and events in small batches, then the twin row."""
    marked = session.execute(
        update(Twin)
        .where(Twin.id == twin.id, Twin.deleted_at.is_(None))
        .values(deleted_at=time.time(), name=f"{DELETED_NAME}{twin.id}")
        .execution_options(synchronize_session=False)
    )
    if marked.rowcount != 1:  # a concurrent DELETE marked it first
        raise NotFound(f"twin {twin.id} does not exist")


def list_twins(session: Session) -> list[Twin]:
    return list(session.scalars(select(Twin).where(Twin.deleted_at.is_(None)).order_by(Twin.id)))


def twin_statuses(session: Session, twins: Sequence[Twin]) -> list[TwinStatus]:
    """Statuses of `twins` (rows or ORM twins) in at most one query, whatever their number."""
    if not twins:
        return []
    # each twin row holds its newest version's number and watermark (written with it, see
    # app.versions): no query of the versions table
    latest = {t.id: (t.version, t.watermark) for t in twins}
    # the lag in seconds is the age of the oldest observation not yet learned (seq wm + 1)
    anchors = {}
    for t in twins:
        wm = latest.get(t.id, (0, 0))[1]
        if t.last_seq > wm:
            anchors[t.id] = wm + 1
    received = {}
    if anchors:
        key = tuple_(Observation.twin_id, Observation.seq)
        query = select(Observation.twin_id, Observation.received_at).where(
            key.in_(list(anchors.items()))
        )
        received = dict(session.execute(query).all())
    now = time.time()
    out = []
    for t in twins:
        number, wm = latest.get(t.id, (0, 0))
        pending = max(t.last_seq - wm, 0)
        seconds = 0.0
        if pending and t.id in received:
            seconds = max(now - received[t.id], 0.0)
        lag = CalibrationLag(observations=pending, seconds=seconds)
        out.append(
            TwinStatus(
                t.id,
                t.name,
                t.spec,
                t.created_at,
                number,
                wm,
                t.last_seq,
                t.last_ts,
                lag,
                t.calibration_status,
                t.calibration_error,
                t.calibration_failures,
                t.retry_at,
            )
        )
    return out


def twin_status(session: Session, twin: Twin) -> TwinStatus:
    return twin_statuses(session, [twin])[0]
