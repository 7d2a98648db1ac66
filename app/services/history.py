"""Reads of what a twin has been through: observations with their prequential predictions,
the version history and drift events."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer

from app.errors import NotFound
from app.schemas import CalibrationLag, DriftEventRead, DriftRead, LateCounts, VersionRead
from app.tables import DriftEvent, Observation, Prediction, Twin, Version, flag_names


def observation_history(
    session: Session,
    twin: Twin,
    start: float | None,
    end: float | None,
    after_seq: int | None,
    limit: int,
) -> dict:
    """Observations with `start <= ts <= end` and `seq > after_seq`, in `seq` order (the order
    of arrival: `ts` order except for late observations), as plain dicts for fast encoding."""
    o, p = Observation, Prediction
    query = (
        select(o.seq, o.ts, o.inputs, o.outputs, o.flags, p.prediction, p.residual)
        .outerjoin(p, (p.twin_id == o.twin_id) & (p.seq == o.seq))
        .where(o.twin_id == twin.id)
        .order_by(o.seq)
        .limit(limit + 1)
    )
    if start is not None:
        query = query.where(o.ts >= start)
    if end is not None:
        query = query.where(o.ts <= end)
    if after_seq is not None:
        query = query.where(o.seq > after_seq)
    rows = session.execute(query).all()
    more = len(rows) > limit
    rows = rows[:limit]
    ins, outs = twin.spec["inputs"], twin.spec["outputs"]
    return {
        "observations": [
            {
                "seq": seq,
                "ts": ts,
                "inputs": dict(zip(ins, u, strict=True)),
                "outputs": dict(zip(outs, y, strict=True)),
                "prediction": None if pred is None else dict(zip(outs, pred, strict=True)),
                "residual": None if res is None else dict(zip(outs, res, strict=True)),
                "flags": flag_names(flags),
            }
            for seq, ts, u, y, flags, pred, res in rows
        ],
        "next_after_seq": rows[-1][0] if more else None,
        # where the stored history starts (retention removes the oldest rows); a min probe
        # of the (twin_id, seq) key
        "first_seq": session.scalar(select(func.min(o.seq)).where(o.twin_id == twin.id)),
    }


def latest_version(session: Session, twin_id: int) -> Version:
    version = session.scalars(
        select(Version)
        .options(defer(Version.checkpoint))
        .where(Version.twin_id == twin_id)
        .order_by(Version.number.desc())
        .limit(1)
    ).first()
    if version is None:  # version 0 is written with the twin; only a broken database lacks it
        raise NotFound(f"twin {twin_id} has no version")
    return version


def versions(session: Session, twin_id: int, limit: int) -> list[VersionRead]:
    """Version history, newest first (columns, not ORM objects: 2,000 versions are a plot's)."""
    o, v = Observation, Version
    query = (
        select(v.number, v.watermark, o.ts, v.created_at, v.parameters, v.metrics)
        .outerjoin(o, (o.twin_id == v.twin_id) & (o.seq == v.watermark))
        .where(v.twin_id == twin_id)
        .order_by(v.number.desc())
        .limit(limit)
    )
    return [
        VersionRead(
            number=number,
            watermark=watermark,
            watermark_ts=ts,
            created_at=created_at,
            parameters=parameters,
            loss=_number(metrics.get("loss")),
            rmse=_rmse(metrics),
        )
        for number, watermark, ts, created_at, parameters, metrics in session.execute(query)
    ]


def drift(session: Session, twin: Twin, lag: CalibrationLag, limit: int) -> DriftRead:
    """The latest version's drift metrics and the newest drift events."""
    version = latest_version(session, twin.id)
    o = Observation
    events = session.execute(
        select(DriftEvent, o.ts)
        .outerjoin(o, (o.twin_id == DriftEvent.twin_id) & (o.seq == DriftEvent.start_seq))
        .where(DriftEvent.twin_id == twin.id)
        .order_by(DriftEvent.seq.desc(), DriftEvent.id.desc())
        .limit(limit)
    )
    metrics = version.metrics or {}
    return DriftRead(
        version=version.number,
        watermark=version.watermark,
        calibration_lag=lag,
        late=LateCounts(
            observations=twin.late_observations,
            skipped=int((metrics.get("late") or {}).get("skipped", 0)),
        ),
        outputs=metrics.get("outputs", {}),
        parameters=metrics.get("parameters", {}),
        alarms=int(metrics.get("alarms", 0) or 0),
        events=[
            DriftEventRead(
                seq=e.seq,
                ts=e.ts,
                output=e.output,
                detector=e.detector,
                statistic=e.statistic,
                start_seq=e.start_seq,
                start_ts=start_ts,
            )
            for e, start_ts in events
        ],
    )


def _rmse(metrics: dict) -> dict[str, float | None]:
    outputs = metrics.get("outputs") or {}
    return {name: _number((m.get("twin") or {}).get("rmse")) for name, m in outputs.items()}


def _number(value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
