"""The calibration worker: the exactly-once loop of DESIGN.md.

For each twin with observations past its watermark: take the latest version (cached in memory),
read the next observations in `seq` order, let the twin predict, monitor and learn them, then
write the new version, the prequential predictions and the drift events in ONE transaction.
A crash before the commit loses nothing; the next run redoes the same observations from the
committed watermark with the same result. Workers claim twins through leases in the database
(`FOR UPDATE SKIP LOCKED` on PostgreSQL), and the unique (twin, version number) key makes a
lost lease harmless: the second writer's commit fails and it reloads.

Twins are isolated from each other: a twin whose step raises or leaves a non-finite parameter
is rolled back to its last committed version, marked `failing` with the error, and retried
with exponential backoff; after `quarantine_after` failures in a row the retry learns one update
at a time and passes over (quarantines) the updates that still fail, so that the twin recovers
once its data do. Claims go to the longest-waiting work first (the oldest pending observation's
receive time), and a pass gives each twin a time budget, cut at an update boundary.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, aliased, sessionmaker

from app import tables as t
from app.isolation import check_finite, describe, learn_isolated
from app.leases import Leases
from twin.observations import Observations
from twin.replica import StepResult, Twin

log = logging.getLogger("tandem.calibrator")


@dataclass(frozen=True)
class CalibratorConfig:
    batch: int = 1024  # observations per committed version, at most
    claim_limit: int = 4  # twins one pass claims, so that several workers share the work
    lease_seconds: float = 30.0
    poll_interval: float = 0.1
    keep_checkpoints: int = 3  # newest versions that keep full learner state
    version_retention: int = 0  # versions kept per twin (0: all); version 0 always stays
    budget_seconds: float | None = 1.0  # learning time per twin and pass (None: no limit)
    retry_seconds: float = 1.0  # first wait after a failure; doubles with each failure
    retry_cap_seconds: float = 60.0
    quarantine_after: int = 3  # failures in a row before updates that fail are passed over


class TwinGone(Exception):
    """The twin was deleted while the worker held it."""


class Calibrator:
    """Claims twins with pending observations and calibrates them, one version per commit."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        config: CalibratorConfig | None = None,
        owner: str | None = None,
    ):
        self.sessions = sessions
        self.config = config or CalibratorConfig()
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._cache: dict[int, tuple[int, Twin]] = {}  # twin id -> (version number, twin)
        self.leases = Leases(sessions, self.owner, self.config.lease_seconds)  # sticky shares
        self.before_commit = None  # test hook: called between learning and commit
        self.on_progress: Callable[[], None] | None = None  # heartbeat: after each twin
        self.between_passes: Callable[[], None] | None = None  # housekeeping (app.retention)

    # -- the loop -----------------------------------------------------------------------------
    def run_once(self, stop: threading.Event | None = None) -> int:
        """Calibrate every claimable twin with pending observations once; return how many
        observations were learned (or passed over). A twin's own failure never ends the pass."""
        learned = 0
        for twin_id, failures in self._claim():
            if stop is not None and stop.is_set():
                break
            budget = self.config.budget_seconds
            deadline = None if budget is None else time.monotonic() + budget
            try:
                learned += self._calibrate(twin_id, failures, deadline)
            except TwinGone:
                log.info("twin %s was deleted while calibrating; dropped", twin_id)
                self._cache.pop(twin_id, None)
            except IntegrityError:
                self._cache.pop(twin_id, None)
                if self._exists(twin_id):
                    log.warning("twin %s: another worker committed first; reloading", twin_id)
                else:
                    log.info("twin %s was deleted while calibrating; dropped", twin_id)
            except OperationalError:
                self._cache.pop(twin_id, None)
                raise  # the database, not the twin: the pass backs off
            except Exception as exc:
                self._cache.pop(twin_id, None)
                self._fail(twin_id, failures, exc)
            if self.on_progress is not None:
                self.on_progress()
        return learned

    def run_until(self, stop: threading.Event) -> None:
        """Loop until `stop` is set; sleep `poll_interval` only when there was nothing to do."""
        while not stop.is_set():
            if self.on_progress is not None:
                self.on_progress()
            try:
                busy = self.run_once(stop) > 0
            except OperationalError as exc:  # database busy or restarting: back off, retry
                log.warning("calibration pass failed: %s", exc)
                busy = False
            except Exception:
                log.exception("calibration pass failed")
                busy = False
            if self.between_passes is not None:
                self.between_passes()
            if not busy:
                stop.wait(self.config.poll_interval)
        self.leases.release()

    def drain(self, timeout: float = 60.0) -> None:
        """Run passes until no twin has pending observations, waiting out other workers'
        leases (for tests and the CLI)."""
        deadline = time.monotonic() + timeout
        while self.run_once() > 0 or self._pending():
            if time.monotonic() > deadline:
                raise TimeoutError("calibration did not catch up in time")
            time.sleep(self.config.poll_interval)

    # -- leases -------------------------------------------------------------------------------
    @staticmethod
    def _latest():
        """Each twin's newest watermark."""
        return (
            select(t.Version.twin_id, func.max(t.Version.watermark).label("watermark"))
            .group_by(t.Version.twin_id)
            .subquery()
        )

    def _pending_query(self):
        """Twins with observations past their newest version's watermark."""
        latest = self._latest()
        return (
            select(t.Twin.id)
            .join(latest, latest.c.twin_id == t.Twin.id)
            .where(t.Twin.last_seq > latest.c.watermark, t.Twin.deleted_at.is_(None))
        )

    def _pending(self) -> bool:
        with self.sessions() as session:
            return session.scalar(self._pending_query().limit(1)) is not None

    def _claim(self) -> list[tuple[int, int]]:
        """Lease up to `claim_limit` twins with pending work, longest-waiting first (by the
        receive time of the oldest observation not yet learned), within this worker's share
        (app.leases); twins that failed wait for their `retry_at`. Returns (twin id, failures
        in a row)."""
        self.leases.refresh()
        now = time.time()
        free = self.leases.claimable(now)
        due = or_(t.Twin.retry_at.is_(None), t.Twin.retry_at <= now)
        latest = self._latest()
        oldest = aliased(t.Observation)
        query = (
            select(t.Twin.id, t.Twin.calibration_failures, t.Twin.lease_owner)
            .join(latest, latest.c.twin_id == t.Twin.id)
            .outerjoin(
                oldest, (oldest.twin_id == t.Twin.id) & (oldest.seq == latest.c.watermark + 1)
            )
            .where(t.Twin.last_seq > latest.c.watermark, t.Twin.deleted_at.is_(None), free, due)
            .order_by(func.coalesce(oldest.received_at, 0.0), t.Twin.id)
            .limit(self.config.claim_limit)
            .with_for_update(of=t.Twin, skip_locked=True)
        )
        with self.sessions.begin() as session:
            rows = session.execute(query).all()
            claimed = self.leases.admit(
                [(int(i), int(f)) for i, f, _ in rows], [o for *_, o in rows]
            )
            self.leases.take(session, [i for i, _ in claimed], now)
        return claimed

    # -- one twin -----------------------------------------------------------------------------
    def _load(self, session: Session, twin_id: int) -> tuple[int, Twin]:
        number = session.scalar(
            select(func.max(t.Version.number)).where(t.Version.twin_id == twin_id)
        )
        if number is None:
            raise TwinGone(twin_id)
        cached = self._cache.get(twin_id)
        if cached and cached[0] == number:
            return cached
        blob = session.scalar(
            select(t.Version.checkpoint).where(
                t.Version.twin_id == twin_id, t.Version.number == number
            )
        )
        if blob is None:
            raise RuntimeError(f"newest version {number} has no checkpoint")
        return number, Twin.from_bytes(blob)

    def _exists(self, twin_id: int) -> bool:
        with self.sessions() as session:
            return session.get(t.Twin, twin_id) is not None

    def _calibrate(self, twin_id: int, failures: int, deadline: float | None) -> int:
        with self.sessions() as session:
            number, twin = self._load(session, twin_id)
            size = twin.update_size
            rows = session.execute(
                select(
                    t.Observation.seq, t.Observation.ts, t.Observation.inputs, t.Observation.outputs
                )
                .where(t.Observation.twin_id == twin_id, t.Observation.seq > twin.watermark)
                .order_by(t.Observation.seq)
                .limit(max(self.config.batch // size, 1) * size)  # cut on an update boundary
            ).all()
        if not rows:
            return 0
        obs = _observations(rows, len(twin.spec.inputs), len(twin.spec.outputs))
        self._cache.pop(twin_id, None)  # the twin mutates now; cached again only once committed
        if failures >= self.config.quarantine_after:
            twin, result, error, passed = learn_isolated(twin, obs, deadline)
            if passed:
                log.warning(
                    "twin %s: passed over %s observations it could not learn", twin_id, passed
                )
        else:
            result, error = twin.step(obs, deadline), None
            check_finite(twin)
        if self.before_commit is not None:
            self.before_commit(twin_id, result)
        self._commit(twin_id, number + 1, twin, result, failures, error)
        self._cache[twin_id] = (number + 1, twin)
        return len(result.seq)

    def _fail(self, twin_id: int, failures: int, exc: Exception) -> None:
        """Leave the twin at its last committed version, say why, and retry it later."""
        failures += 1
        wait = min(self.config.retry_seconds * 2 ** (failures - 1), self.config.retry_cap_seconds)
        error = describe(exc)
        log.warning(
            "twin %s failing (%s in a row, retry in %.0f s): %s", twin_id, failures, wait, error
        )
        with self.sessions.begin() as session:
            session.execute(
                update(t.Twin)
                .where(t.Twin.id == twin_id)
                .values(
                    calibration_status="failing",
                    calibration_error=error,
                    calibration_failures=failures,
                    retry_at=time.time() + wait,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )

    def _commit(
        self,
        twin_id: int,
        number: int,
        twin: Twin,
        result: StepResult,
        failures: int = 0,
        error: Exception | None = None,
    ) -> None:
        now = time.time()
        metrics = twin.metrics()
        metrics["loss"] = result.loss
        metrics["observations"] = int(len(result.seq))
        health = {"calibration_status": "ok", "calibration_error": None, "calibration_failures": 0}
        if error is not None:  # quarantining: still failing, but making progress, so no wait
            health = {
                "calibration_status": "failing",
                "calibration_error": describe(error),
                "calibration_failures": max(failures, self.config.quarantine_after),
            }
        with self.sessions.begin() as session:
            session.execute(
                insert(t.Version),
                [
                    {
                        "twin_id": twin_id,
                        "number": number,
                        "watermark": twin.watermark,
                        "created_at": now,
                        "parameters": twin.parameters(),
                        "metrics": metrics,
                        "checkpoint": twin.to_bytes(),
                    }
                ],
            )
            session.execute(
                insert(t.Prediction),
                [
                    {
                        "twin_id": twin_id,
                        "seq": int(s),
                        "version": number,
                        "prediction": _json_row(p),
                        "residual": _json_row(r),
                        "first_guess": _json_row(f),
                    }
                    for s, p, r, f in zip(
                        result.seq,
                        result.predictions,
                        result.residuals,
                        result.frozen_predictions,
                        strict=True,
                    )
                ],
            )
            if result.events:
                session.execute(
                    insert(t.DriftEvent),
                    [{"twin_id": twin_id, "created_at": now, **e.to_dict()} for e in result.events],
                )
            self._prune(session, twin_id, number)
            renewed = session.execute(
                update(t.Twin)
                .where(t.Twin.id == twin_id, t.Twin.deleted_at.is_(None))
                .values(lease_expires_at=now + self.config.lease_seconds, retry_at=None, **health)
            )
            if renewed.rowcount != 1:  # marked deleted meanwhile: roll the version back
                raise TwinGone(twin_id)
        log.debug("twin %s: version %s, watermark %s", twin_id, number, twin.watermark)

    def _prune(self, session: Session, twin_id: int, number: int) -> None:
        """Drop full learner state from all but the newest checkpoints, and old versions."""
        keep = self.config.keep_checkpoints
        session.execute(
            update(t.Version)
            .where(
                t.Version.twin_id == twin_id,
                t.Version.number <= number - keep,
                t.Version.checkpoint.is_not(None),
            )
            .values(checkpoint=None)
        )
        if self.config.version_retention:
            session.execute(
                delete(t.Version).where(
                    t.Version.twin_id == twin_id,
                    t.Version.number > 0,
                    t.Version.number <= number - self.config.version_retention,
                )
            )


def _observations(rows, n_inputs: int, n_outputs: int) -> Observations:
    """Rows (seq, ts, inputs, outputs) read in `seq` (arrival) order, in time order: a late
    observation is learned where it belongs in time if the twin has not learned past it."""
    rows = sorted(rows, key=lambda r: r[1])
    seq = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    ts = np.fromiter((r[1] for r in rows), dtype=np.float64, count=len(rows))
    inputs = np.array([r[2] for r in rows], dtype=np.float64).reshape(len(rows), n_inputs)
    outputs = np.array([r[3] for r in rows], dtype=np.float64).reshape(len(rows), n_outputs)
    return Observations(ts, inputs, outputs, seq)


def _json_row(values: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in values]
