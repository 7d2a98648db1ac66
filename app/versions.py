"""Writing what the calibrator learned: many twins' new versions, prequential predictions and
drift events in ONE transaction (one commit, one fsync, for a whole pass).

Each twin's part is exactly once on its own: its version row's unique (twin, number) key fails
the transaction if another worker committed that number first, and a twin marked deleted
meanwhile gets nothing written. The caller retries a failed batch twin by twin, so one twin's
conflict never loses the others' work.

The rows are built before the transaction (`version_rows`: checkpoint bytes, metrics,
parameters, predictions and events as JSON-ready values, about half of a commit's time), so
that the transaction, which on SQLite holds the database's one write lock from its first
UPDATE, holds it only for the writes (`write_versions`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson
from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from app import tables as t
from app.db import insert_rows
from app.isolation import describe
from twin.replica import StepResult, Twin


@dataclass
class Learned:
    """One twin's step, ready to be written as its version `number`."""

    twin_id: int
    number: int
    twin: Twin
    result: StepResult
    failures: int = 0
    error: Exception | None = None  # quarantining: the newest update that still failed


@dataclass(frozen=True)
class WriteRules:
    lease_seconds: float
    quarantine_after: int
    keep_checkpoints: int  # newest versions that keep full learner state
    version_retention: int  # versions kept per twin (0: all); version 0 always stays


@dataclass
class VersionRows:
    """One twin's rows for its new version, built before the transaction that writes them."""

    twin_id: int
    number: int
    health: dict  # the twin row's new version, watermark and calibration health
    version: dict
    predictions: list[tuple]  # PREDICTION_COLUMNS
    events: list[dict]


def version_rows(item: Learned, rules: WriteRules, now: float | None = None) -> VersionRows:
    """The rows of a twin's step as its version `item.number` (no database work)."""
    now = time.time() if now is None else now
    return VersionRows(
        item.twin_id,
        item.number,
        _health(item, rules),
        _version(item, now),
        _predictions(item),
        [{"twin_id": item.twin_id, "created_at": now, **e.to_dict()} for e in item.result.events],
    )


def write_versions(session: Session, batch: list[VersionRows], rules: WriteRules) -> set[int]:
    """Write every twin's version in the session's transaction; return the ids of the twins
    marked deleted meanwhile, for which nothing was written."""
    now = time.time()
    twins = t.Twin.__table__
    conn = session.connection()  # Core: no ORM work per statement
    # The twins' rows first: on SQLite that takes the write lock before anything is read, and
    # on PostgreSQL it locks the rows a concurrent DELETE marks.
    conn.execute(
        update(twins)
        .where(twins.c.id == bindparam("b_id"), twins.c.deleted_at.is_(None))
        .values(
            version=bindparam("b_version"),
            watermark=bindparam("b_watermark"),
            lease_expires_at=now + rules.lease_seconds,
            retry_at=None,
            calibration_status=bindparam("b_status"),
            calibration_error=bindparam("b_error"),
            calibration_failures=bindparam("b_failures"),
        ),
        # in id order, as every writer that locks several twins' rows, so that none deadlock
        sorted((item.health for item in batch), key=lambda row: row["b_id"]),
    )
    ids = [item.twin_id for item in batch]
    gone = set(
        conn.scalars(select(twins.c.id).where(twins.c.id.in_(ids), twins.c.deleted_at.is_not(None)))
    )
    gone |= set(ids) - set(conn.scalars(select(twins.c.id).where(twins.c.id.in_(ids))))
    batch = [item for item in batch if item.twin_id not in gone]
    if not batch:
        return gone
    conn.execute(insert(t.Version.__table__), [item.version for item in batch])
    predictions = [row for item in batch for row in item.predictions]
    if predictions:
        insert_rows(conn, t.Prediction.__table__, PREDICTION_COLUMNS, predictions)
    events = [row for item in batch for row in item.events]
    if events:
        conn.execute(insert(t.DriftEvent.__table__), events)
    _prune(conn, batch, rules)
    return gone


def _health(item: Learned, rules: WriteRules) -> dict:
    row = {"b_id": item.twin_id, "b_version": item.number, "b_watermark": item.twin.watermark}
    if item.error is None:
        return {**row, "b_status": "ok", "b_error": None, "b_failures": 0}
    # quarantining: still failing, but making progress, so no wait
    failures = max(item.failures, rules.quarantine_after)
    return {**row, "b_status": "failing", "b_error": describe(item.error), "b_failures": failures}


def _version(item: Learned, now: float) -> dict:
    metrics = item.twin.metrics()
    metrics["loss"] = item.result.loss
    metrics["observations"] = int(len(item.result.seq))
    return {
        "twin_id": item.twin_id,
        "number": item.number,
        "watermark": item.twin.watermark,
        "created_at": now,
        "parameters": item.twin.parameters(),
        "metrics": metrics,
        "checkpoint": item.twin.to_bytes(),
    }


def _predictions(item: Learned) -> list[tuple]:
    """Prediction rows as the driver takes them (`PREDICTION_COLUMNS`, `app.db.insert_rows`),
    JSON encoded once by orjson, which writes NaN and inf as null."""
    r = item.result
    dumps = orjson.dumps
    return [
        (item.twin_id, s, item.number, dumps(p).decode(), dumps(e).decode(), dumps(f).decode())
        for s, p, e, f in zip(
            r.seq.tolist(),
            r.predictions.tolist(),
            r.residuals.tolist(),
            r.frozen_predictions.tolist(),
            strict=True,
        )
    ]


PREDICTION_COLUMNS = ("twin_id", "seq", "version", "prediction", "residual", "first_guess")


PRUNE_WINDOW = 16  # version numbers below those kept that a commit prunes (it adds one)


def _prune(conn: Connection, batch: list[VersionRows], rules: WriteRules) -> None:
    """Drop full learner state from the version that left the newest `keep_checkpoints`, and
    delete the one that left the newest `version_retention` (never version 0). Each commit adds
    one version per twin, so the few numbers just below those kept hold all there is to do:
    each statement reads PRUNE_WINDOW index entries per twin, not all its versions (up to
    20,000), inside the commit. A longer backlog (a count lowered by more than that) is
    retention's, which removes versions in small batches (app.retention)."""
    versions = t.Version.__table__
    number = versions.c.number
    window = (
        (versions.c.twin_id == bindparam("b_id"))
        & (number > bindparam("b_upto") - PRUNE_WINDOW)
        & (number <= bindparam("b_upto"))
    )
    keep = rules.keep_checkpoints
    conn.execute(
        update(versions).where(window, versions.c.checkpoint.is_not(None)).values(checkpoint=None),
        [{"b_id": item.twin_id, "b_upto": item.number - keep} for item in batch],
    )
    if rules.version_retention:
        conn.execute(
            delete(versions).where(window, number > 0),
            [{"b_id": i.twin_id, "b_upto": i.number - rules.version_retention} for i in batch],
        )
