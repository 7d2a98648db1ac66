"""Downsampled time series of one output: what a plot of minutes or months needs, in at most a
few thousand points however many observations the range holds.

The database does the work: observations (joined with their predictions) in the range are
grouped into equal-width time buckets, and each bucket gives its mean time, count, and the
minimum, maximum and mean of the observed value, the prediction, the residual and what the
first guess predicted. A plot that
draws min and max per pixel-wide bucket shows every spike a full-resolution plot would; where
the range holds fewer rows than buckets, most buckets hold one row and the plot is exact.
"""

from __future__ import annotations

from sqlalchemy import Integer, cast, func, select
from sqlalchemy.orm import Session

from app.errors import Invalid
from app.tables import Observation, Prediction, Twin

MEASURES = ("observed", "predicted", "residual", "first_guess")


def output_series(
    session: Session,
    twin: Twin,
    output: str | None,
    start: float | None,
    end: float | None,
    points: int,
) -> dict:
    """The series of `output` (the first output when None) over [start, end] in at most
    `points` buckets; start and end default to the twin's first and newest observation."""
    outputs = twin.spec["outputs"]
    name = outputs[0] if output is None else output
    if name not in outputs:
        known = ", ".join(outputs)
        raise Invalid(
            f"twin {twin.id} has no output {name!r}; its outputs are {known}",
            [{"field": "output", "message": f"must be one of {known}"}],
        )
    j = outputs.index(name)
    o, p = Observation, Prediction
    mine = o.twin_id == twin.id
    if start is None or end is None:
        first, last = session.execute(select(func.min(o.ts), func.max(o.ts)).where(mine)).one()
        start = first if start is None else start
        end = last if end is None else end
    empty = {
        "output": name,
        "start": start,
        "end": end,
        "bucket_seconds": 0.0,
        "ts": [],
        "count": [],
        **{m: {"min": [], "max": [], "mean": []} for m in MEASURES},
    }
    if start is None or end is None or end < start:
        return empty
    in_range = mine & (o.ts >= start) & (o.ts <= end)
    columns = {
        "observed": o.outputs[j].as_float(),
        "predicted": p.prediction[j].as_float(),
        "residual": p.residual[j].as_float(),
        "first_guess": p.first_guess[j].as_float(),
    }
    # a hair wider than an even split, so that `end` itself falls in the last bucket
    width = (end - start) / points * (1 + 1e-9) if end > start else 1.0
    bucket = cast(func.floor((o.ts - start) / width), Integer).label("bucket")
    aggregates = [func.avg(o.ts), func.count()]
    for column in columns.values():
        aggregates += [func.min(column), func.max(column), func.avg(column)]
    query = (
        select(bucket, *aggregates)
        .select_from(o)
        .outerjoin(p, (p.twin_id == o.twin_id) & (p.seq == o.seq))
        .where(in_range)
        .group_by(bucket)
        .order_by(bucket)
    )
    rows = session.execute(query).all()
    out = {**empty, "bucket_seconds": width}
    out["ts"] = [float(r[1]) for r in rows]
    out["count"] = [int(r[2]) for r in rows]
    for k, measure in enumerate(MEASURES):
        base = 3 + 3 * k
        for i, stat in enumerate(("min", "max", "mean")):
            out[measure][stat] = [_number(r[base + i]) for r in rows]
    return out


def _number(value) -> float | None:
    return None if value is None else float(value)
