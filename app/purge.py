"""Purging deleted twins' rows in small batches, in a thread of each API process.

`DELETE /twins/{id}` only marks the twin (`deleted_at`), so it answers at once however many
rows the twin has. The purger then deletes its observations, predictions, series blocks, drift
events and versions `batch` rows per transaction, pausing between transactions so that
ingestion and the calibrator get the write lock in between, and finally the twin row. It waits
while a worker still holds a live lease on the twin. It wakes when a twin is deleted and every
`interval` seconds (twins left half-purged by a stopped process are finished by the next one).
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from app.tables import DriftEvent, Observation, Prediction, SeriesBlock, Twin, Version

log = logging.getLogger("tandem.purge")

# (table, its key column within a twin): rows are removed by key, `batch` at a time
CHILDREN = (
    (Observation, Observation.seq),
    (Prediction, Prediction.seq),
    (SeriesBlock, SeriesBlock.block),  # every output and size of the first blocks
    (DriftEvent, DriftEvent.id),
    (Version, Version.id),
)


def purgeable(session: Session, now: float) -> list[int]:
    """Deleted twins that no worker holds (no lease, or an expired one)."""
    free = (Twin.lease_owner.is_(None)) | (Twin.lease_expires_at < now)
    query = select(Twin.id).where(Twin.deleted_at.is_not(None), free).order_by(Twin.id)
    return list(session.scalars(query))


def purge_batch(sessions: sessionmaker[Session], twin_id: int, batch: int) -> int:
    """Delete up to `batch` rows of one deleted twin in one transaction (the twin row itself
    once nothing else is left); return how many rows went."""
    with sessions.begin() as session:
        for table, key in CHILDREN:
            keys = (
                select(key)
                .where(table.twin_id == twin_id)
                .order_by(key)
                .limit(batch)
                .scalar_subquery()
            )
            gone = session.execute(
                delete(table)
                .where(table.twin_id == twin_id, key.in_(keys))
                .execution_options(synchronize_session=False)
            ).rowcount
            if gone:
                return gone
        return session.execute(
            delete(Twin)
            .where(Twin.id == twin_id, Twin.deleted_at.is_not(None))
            .execution_options(synchronize_session=False)
        ).rowcount


def purge(
    sessions: sessionmaker[Session],
    batch: int,
    pause: float = 0.0,
    stop: threading.Event | None = None,
) -> int:
    """Purge every purgeable deleted twin; return the rows deleted."""
    total = 0
    with sessions() as session:
        ids = purgeable(session, time.time())
    for twin_id in ids:
        while not (stop is not None and stop.is_set()):
            gone = purge_batch(sessions, twin_id, batch)
            total += gone
            if not gone:
                break
            if pause:
                time.sleep(pause)
    return total


class Purger:
    """The purge loop in a daemon thread: `wake()` after a delete commits, `stop()` at exit."""

    def __init__(self, sessions: sessionmaker[Session], batch: int, pause: float, interval: float):
        self.sessions, self.batch, self.pause, self.interval = sessions, batch, pause, interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tandem-purge", daemon=True)

    def start(self) -> Purger:
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                rows = purge(self.sessions, self.batch, self.pause, self._stop)
                if rows:
                    log.info("purged %d rows of deleted twins", rows)
            except Exception:  # the database may be away for a while: try again later
                log.warning("purge of deleted twins failed", exc_info=True)
            self._wake.wait(self.interval)


def start_purger(sessions: sessionmaker[Session], settings) -> Purger:
    """The purge thread of an API process, from `settings` (purge_batch, _pause, _interval)."""
    return Purger(
        sessions, settings.purge_batch, settings.purge_pause, settings.purge_interval
    ).start()
