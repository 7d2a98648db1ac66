"""Downsampled time series of one output: what a plot of minutes or months needs, in at most a
few thousand points however many observations the range holds.

The range is cut into `points` equal-width time buckets; each gives its mean time, count, and
the minimum, maximum and mean of the observed value, the prediction, the residual and what the
first guess predicted. A plot that draws min and max per pixel-wide bucket shows every spike a
full-resolution plot would; where the range holds fewer rows than buckets, most buckets hold
one row and the plot is exact.

The database does the work. Where buckets hold many rows (two blocks or more each), learned
rows come merged from series blocks (app.services.blocks: aggregates of 16, 256 or 4096
consecutive observations, each placed in the bucket of its mean time) and only the rows at the
range's edges and past the newest block are read one by one; otherwise every row is grouped.
"""

from __future__ import annotations

from sqlalchemy import Integer, cast, func, select
from sqlalchemy.orm import Session

from app.errors import Invalid
from app.services import blocks
from app.tables import Observation, Prediction, SeriesBlock, Twin

MEASURES = blocks.MEASURES
STATS = 4  # per measure: count, min, max, sum


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
    twin_id = twin.id
    o = Observation
    mine = o.twin_id == twin_id
    if start is None:  # min and max apart: each is one step down the (twin_id, ts) index
        start = session.scalar(select(func.min(o.ts)).where(mine))
    if end is None:
        end = session.scalar(select(func.max(o.ts)).where(mine))
    out = {
        "output": name,
        "start": start,
        "end": end,
        "bucket_seconds": 0.0,
        "ts": [],
        "count": [],
        **{m: {"min": [], "max": [], "mean": []} for m in MEASURES},
    }
    if start is None or end is None or end < start:
        return out
    # a hair wider than an even split, so that `end` itself falls in the last bucket
    width = (end - start) / points * (1 + 1e-9) if end > start else 1.0
    in_range = mine & (o.ts >= start) & (o.ts <= end)
    seqs = _seq_range(session, twin_id, start, end)
    sizes = () if seqs is None else _sizes((seqs[1] - seqs[0] + 1) / points)
    merged: dict[int, list] = {}
    if not sizes:
        _merge(merged, _raw(session, j, in_range, start, width))
    else:
        blocks.build(session, twin, j)  # commits (the twin's row is read again after)
        have = blocks.built(session, twin_id, j)
        for first, last, observed_only in _predicted_parts(session, twin_id, *seqs):
            for size, a, b in blocks.cover(first, last, sizes, have):
                if size:
                    found = _blocks(session, twin_id, j, size, a, b, start, width)
                    _merge(merged, _observed_only(found) if observed_only else found)
                else:
                    rows = in_range & (o.seq >= a) & (o.seq <= b)
                    _merge(merged, _raw(session, j, rows, start, width))
    rows = [merged[bucket] for bucket in sorted(merged)]
    out["bucket_seconds"] = width
    out["ts"] = [acc[0] / acc[1] for acc in rows]
    out["count"] = [int(acc[1]) for acc in rows]
    for k, measure in enumerate(MEASURES):
        i = 2 + STATS * k
        out[measure]["min"] = [acc[i + 1] for acc in rows]
        out[measure]["max"] = [acc[i + 2] for acc in rows]
        out[measure]["mean"] = [acc[i + 3] / acc[i] if acc[i] else None for acc in rows]
    return out


def _sizes(rows_per_bucket: float) -> tuple[int, ...]:
    """Block sizes to use, largest first: those with two blocks or more per bucket."""
    return tuple(s for s in reversed(blocks.SIZES) if 2 * s <= rows_per_bucket)


def _seq_range(session: Session, twin_id: int, start: float, end: float) -> tuple[int, int] | None:
    """The seqs of the first and the last observation in [start, end] (by time; observations
    are numbered in time order), or None when there is none."""
    o = Observation
    mine = o.twin_id == twin_id
    first = session.scalar(
        select(o.seq).where(mine, o.ts >= start, o.ts <= end).order_by(o.ts).limit(1)
    )
    if first is None:
        return None
    last = session.scalar(
        select(o.seq).where(mine, o.ts >= start, o.ts <= end).order_by(o.ts.desc()).limit(1)
    )
    return first, last


def _predicted_parts(session: Session, twin_id: int, first: int, last: int):
    """Seqs first..last split where the twin's stored predictions begin: retention may have
    removed the oldest predictions and kept their observations, whose blocks still hold what
    was predicted (used there for the observed values only, as the raw rows would be)."""
    floor = session.scalar(select(func.min(Prediction.seq)).where(Prediction.twin_id == twin_id))
    floor = last + 1 if floor is None else floor
    if first < floor:
        yield first, min(last, floor - 1), True
    if floor <= last:
        yield max(first, floor), last, False


def _observed_only(rows):
    """Block rows with every measure but the observed value emptied."""
    empty = [0, None, None, 0] * (len(MEASURES) - 1)
    for row in rows:
        yield [*row[: 3 + STATS], *empty]


def _bucket(ts, start: float, width: float):
    return cast(func.floor((ts - start) / width), Integer).label("bucket")


def _raw(session: Session, j: int, where, start: float, width: float):
    rows = blocks.values(j, where)
    bucket = _bucket(rows.c.ts, start, width)
    query = select(bucket, *blocks.raw_aggregates(rows)).group_by(bucket)
    return session.execute(query)


def _blocks(session, twin_id: int, j: int, size: int, a: int, b: int, start: float, width: float):
    s = SeriesBlock
    bucket = _bucket(s.ts_sum / s.n, start, width)
    query = (
        select(bucket, *blocks.block_aggregates())
        .where(s.twin_id == twin_id, s.output == j, s.size == size, s.block.between(a, b))
        .group_by(bucket)
    )
    return session.execute(query)


def _merge(merged: dict[int, list], rows) -> None:
    """Fold rows of (bucket, sum ts, count, then per measure count, min, max, sum) into
    `merged`, per bucket."""
    for bucket, *values in rows:
        acc = merged.get(bucket)
        if acc is None:
            merged[bucket] = [v if v is not None else _zero(i) for i, v in enumerate(values)]
            continue
        acc[0] += values[0]
        acc[1] += values[1]
        for k in range(len(MEASURES)):
            i = 2 + STATS * k
            n, low, high, total = values[i : i + STATS]
            if not n:
                continue
            acc[i] += n
            acc[i + 1] = low if acc[i + 1] is None else min(acc[i + 1], low)
            acc[i + 2] = high if acc[i + 2] is None else max(acc[i + 2], high)
            acc[i + 3] = total if acc[i + 3] is None else acc[i + 3] + total


def _zero(i: int):
    """The empty value of aggregate i: 0 for sums and counts, None for min and max."""
    k = (i - 2) % STATS
    return None if i >= 2 and k in (1, 2) else 0
