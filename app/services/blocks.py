"""Series blocks: per-output aggregates of runs of consecutive learned observations, so that a
downsampled read of a month (2.6 million rows at 1 Hz) merges a few thousand blocks instead of
parsing every row.

A block of size S covers seqs k*S+1 to (k+1)*S, and only once all of them are learned (their
predictions written), so it never changes after: observations and predictions are append-only
by seq. Blocks of 16 observations are built from the raw rows, blocks of 256 from those of 16,
blocks of 4096 from those of 256. The series read builds what is missing first (in practice
the few blocks the newest learned observations completed; the first read of a long history
builds all of them once), then covers a range of seqs with the largest blocks that fit and raw
rows at the edges and past the newest block.

Retention (app.retention) removes the blocks that only cover removed observations: those that
end below the twin's oldest stored seq (a read never uses them: it covers the range of stored
seqs), except the newest block of each output and size, from which `built` counts.
"""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import and_, delete, func, insert, literal, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from app.tables import Observation, Prediction, SeriesBlock, Twin, Version

SIZES = (16, 256, 4096)  # each a multiple of the one before
CHUNK = 4096  # blocks of 16 built per transaction (65,536 observations)
MEASURES = ("observed", "predicted", "residual", "first_guess")


def values(j: int, where):
    """Output j's rows that match `where` (over observations), as a subquery: seq, ts and
    each measure's value (null where a row has no prediction or no value). OFFSET 0 keeps
    SQLite from inlining it, which would extract each JSON value once per aggregate."""
    o, p = Observation, Prediction
    return (
        select(
            o.seq,
            o.ts,
            o.outputs[j].as_float().label("observed"),
            p.prediction[j].as_float().label("predicted"),
            p.residual[j].as_float().label("residual"),
            p.first_guess[j].as_float().label("first_guess"),
        )
        .select_from(o.__table__.outerjoin(p, (p.twin_id == o.twin_id) & (p.seq == o.seq)))
        .where(where)
        .offset(0)
        .subquery()
    )


def raw_aggregates(rows) -> list:
    """sum(ts), count, then per measure count, min, max and sum over `values` rows: one
    bucket's aggregates (the same shape as `block_aggregates`)."""
    out = [func.sum(rows.c.ts), func.count()]
    for m in MEASURES:
        column = rows.c[m]
        out += [func.count(column), func.min(column), func.max(column), func.sum(column)]
    return out


def block_aggregates() -> list:
    """The aggregates of `raw_aggregates`, merged over blocks."""
    b = SeriesBlock
    out = [func.sum(b.ts_sum), func.sum(b.n)]
    for m in MEASURES:
        out += [
            func.sum(getattr(b, f"{m}_n")),
            func.min(getattr(b, f"{m}_min")),
            func.max(getattr(b, f"{m}_max")),
            func.sum(getattr(b, f"{m}_sum")),
        ]
    return out


def built(session: Session, twin_id: int, j: int) -> dict[int, int]:
    """Per size, how many blocks lead the twin's history: blocks 0 to count-1 exist (or
    were empty) for output j."""
    b = SeriesBlock
    rows = session.execute(
        select(b.size, func.max(b.block))
        .where(b.twin_id == twin_id, b.output == j)
        .group_by(b.size)
    )
    counts = {size: 0 for size in SIZES}
    counts.update({size: int(top) + 1 for size, top in rows})
    return counts


def build(session: Session, twin: Twin, j: int) -> None:
    """Build output j's missing blocks, up to the newest learned observation, and commit
    (the finest in transactions of CHUNK blocks, so that a long history's first read holds the
    write lock for a moment at a time, not for the whole build).

    Two reads building the same blocks at once: one commits, the other's insert fails and is
    rolled back (it reads with the blocks there were, and raw rows for the rest)."""
    twin_id = twin.id  # the twin's row expires at each commit: not read again
    watermark = session.scalar(
        select(Version.watermark)
        .where(Version.twin_id == twin_id)
        .order_by(Version.number.desc())
        .limit(1)
    )
    learned = min(watermark or 0, twin.last_seq)
    have = built(session, twin_id, j)
    try:
        fine = SIZES[0]
        top = learned // fine  # blocks 0..top-1 are complete
        for first in range(have[fine], top, CHUNK):  # a transaction each: short write locks
            _from_rows(session, twin_id, j, first, min(first + CHUNK, top))
            session.commit()
        for finer, size in zip(SIZES, SIZES[1:], strict=False):
            coarse_top = top * fine // size
            if have[size] < coarse_top:
                _from_blocks(session, twin_id, j, finer, size, have[size], coarse_top)
        session.commit()
    except (IntegrityError, OperationalError):  # built by another read, or the lock was busy
        session.rollback()


def _from_rows(session: Session, twin_id: int, j: int, first: int, top: int) -> None:
    size = SIZES[0]
    o = Observation
    rows = values(j, (o.twin_id == twin_id) & (o.seq > first * size) & (o.seq <= top * size))
    block = ((rows.c.seq - 1) // size).label("block")
    query = select(literal(twin_id), literal(j), literal(size), block, *raw_aggregates(rows))
    session.execute(insert(SeriesBlock).from_select(_columns(), query.group_by(block)))


def _from_blocks(
    session: Session, twin_id: int, j: int, finer: int, size: int, first: int, top: int
) -> None:
    b = SeriesBlock
    ratio = size // finer
    block = (b.block // ratio).label("block")
    query = (
        select(b.twin_id, literal(j), literal(size), block, *block_aggregates())
        .where(
            b.twin_id == twin_id,
            b.output == j,
            b.size == finer,
            b.block >= first * ratio,
            b.block < top * ratio,
        )
        .group_by(b.twin_id, block)
    )
    session.execute(insert(SeriesBlock).from_select(_columns(), query))


def _columns() -> list[str]:
    out = ["twin_id", "output", "size", "block", "ts_sum", "n"]
    for m in MEASURES:
        out += [f"{m}_n", f"{m}_min", f"{m}_max", f"{m}_sum"]
    return out


def cover(
    first: int, last: int, sizes: tuple[int, ...], have: dict[int, int]
) -> Iterator[tuple[int, int, int]]:
    """Seqs first..last as (size, a, b) pieces in seq order: size 0 for the raw rows a..b, else
    the blocks a..b of that size; the largest existing blocks that fit, finer ones and raw rows
    at the edges."""
    if first > last:
        return
    if not sizes:
        yield 0, first, last
        return
    size, rest = sizes[0], sizes[1:]
    a = -(-(first - 1) // size)  # the first block starting at or after `first`
    b = min((last // size) - 1, have.get(size, 0) - 1)  # the last ending by `last`, and built
    if a > b:
        yield from cover(first, last, rest, have)
        return
    yield from cover(first, a * size, rest, have)
    yield size, a, b
    yield from cover((b + 1) * size + 1, last, rest, have)


def _stale(twin_id, first_seq):
    """The condition on a twin's blocks that only cover observations before `first_seq` (its
    oldest stored one), the newest block of each output and size excepted."""
    b, newer = SeriesBlock, SeriesBlock.__table__.alias("newer")
    has_newer = (
        select(newer.c.block)
        .where(
            newer.c.twin_id == b.twin_id,
            newer.c.output == b.output,
            newer.c.size == b.size,
            newer.c.block > b.block,
        )
        .exists()
    )
    return (b.twin_id == twin_id) & ((b.block + 1) * b.size < first_seq) & has_newer


def stale_exists(twin_id):
    """SQL: whether twin `twin_id` (a column or a value) has blocks retention removes."""
    o = Observation
    first = select(func.min(o.seq)).where(o.twin_id == twin_id).scalar_subquery()
    return select(SeriesBlock.block).where(_stale(twin_id, first)).exists()


def remove_stale(session: Session, twin_id: int, limit: int) -> int:
    """Delete up to `limit` of the twin's blocks that only cover removed observations (the
    oldest first, by the primary key); returns how many."""
    first = session.scalar(select(func.min(Observation.seq)).where(Observation.twin_id == twin_id))
    if first is None:
        return 0
    b = SeriesBlock
    rows = session.execute(
        select(b.output, b.size, b.block)
        .where(_stale(twin_id, first))
        .order_by(b.output, b.size, b.block)
        .limit(limit)
    ).all()
    upto: dict[tuple[int, int], int] = {}
    for output, size, block in rows:  # the stale blocks of an output and size lead its blocks
        upto[output, size] = block
    removed = 0
    for (output, size), block in upto.items():
        removed += session.execute(
            delete(b)
            .where(and_(b.twin_id == twin_id, b.output == output, b.size == size, b.block <= block))
            .execution_options(synchronize_session=False)
        ).rowcount
    return removed
