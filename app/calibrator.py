"""The calibration worker: the exactly-once loop of DESIGN.md.

For each claimed twin with observations past its watermark: take the latest version (kept in
memory by the worker that committed it) and read the next observations in `seq` order; let the
twins predict, monitor and learn them together (`twin.fleet.step_together`: each twin's own
predictions and drift statistics, the learner updates of compatible twins batched in wide
tensor operations, each twin's numbers those it gets alone); then write the pass's new
versions, prequential predictions and drift events, for all its twins, in ONE transaction
(`app.versions`). A crash
before the commit loses nothing; the next run redoes the same observations from the committed
watermarks with the same result. Workers claim twins through leases in the database
(`FOR UPDATE SKIP LOCKED` on PostgreSQL), and the unique (twin, version number) key makes a
lost lease harmless: the second writer's commit fails, its twins are written one by one, and
the twin that conflicts is reloaded.

Twins are isolated from each other: a twin whose step raises or leaves a non-finite parameter
is rolled back to its last committed version, marked `failing` with the error, and retried
with exponential backoff; after `quarantine_after` failures in a row the retry learns one update
at a time and passes over (quarantines) the updates that still fail, so that the twin recovers
once its data do. Claims go to the longest-waiting work first (the oldest pending observation's
receive time), and a pass's twins share one time budget, each cut at an update boundary.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from sqlalchemy import bindparam, func, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, aliased, sessionmaker

from app import tables as t
from app.isolation import check_finite, describe, learn_isolated
from app.leases import Leases
from app.versions import Learned, VersionRows, WriteRules, version_rows, write_versions
from twin.fleet import step_together
from twin.observations import Observations
from twin.replica import StepResult, Twin

log = logging.getLogger("tandem.calibrator")

# A twin's next observations, in arrival order: built once, bound per twin (building the
# statement cost more than running it)
NEXT_OBSERVATIONS = (
    select(t.Observation.seq, t.Observation.ts, t.Observation.inputs, t.Observation.outputs)
    .where(t.Observation.twin_id == bindparam("twin_id"), t.Observation.seq > bindparam("after"))
    .order_by(t.Observation.seq)
    .limit(bindparam("rows"))
)


@dataclass(frozen=True)
class CalibratorConfig:
    batch: int = 1024  # observations per committed version, at most
    claim_limit: int = 64  # twins one pass claims, learns and commits together
    lease_seconds: float = 30.0
    poll_interval: float = 0.1
    keep_checkpoints: int = 3  # newest versions that keep full learner state
    version_retention: int = 0  # versions kept per twin (0: all); version 0 always stays
    budget_seconds: float | None = 1.0  # learning time per twin and pass (None: no limit)
    retry_seconds: float = 1.0  # first wait after a failure; doubles with each failure
    retry_cap_seconds: float = 60.0
    quarantine_after: int = 3  # failures in a row before updates that fail are passed over
    cached_twins: int = 10_000  # twins kept in memory between passes (about 50 kB each)

    @property
    def write_rules(self) -> WriteRules:
        return WriteRules(
            self.lease_seconds, self.quarantine_after, self.keep_checkpoints, self.version_retention
        )


class TwinGone(Exception):
    """The twin was deleted while the worker held it."""


class Claim(NamedTuple):
    """A twin leased for a pass: its failures in a row and its newest committed version."""

    twin_id: int
    failures: int
    version: int
    watermark: int


class Calibrator:
    """Claims twins with pending observations and calibrates them, many versions per commit."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        config: CalibratorConfig | None = None,
        owner: str | None = None,
    ):
        self.sessions = sessions
        self.config = config or CalibratorConfig()
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        # twin id -> (version number, twin): the state this worker committed last, kept while
        # it holds the lease, so that a pass reloads a checkpoint only after another wrote it
        self._cache: OrderedDict[int, tuple[int, Twin]] = OrderedDict()
        self.leases = Leases(sessions, self.owner, self.config.lease_seconds)  # sticky shares
        self.before_commit = None  # test hook: called between learning and commit
        self.on_progress: Callable[[], None] | None = None  # heartbeat: after each twin
        self.between_passes: Callable[[], None] | None = None  # housekeeping (app.retention)

    # -- the loop -----------------------------------------------------------------------------
    def run_once(self, stop: threading.Event | None = None) -> int:
        """Calibrate every claimed twin with pending observations once and commit them together;
        return how many observations were learned (or passed over). A twin's own failure never
        ends the pass nor rolls back the others."""
        read = []
        with self.sessions() as session:  # one for the pass's reads
            for claim in self._claim():
                if stop is not None and stop.is_set():
                    break
                item = self._guarded(claim.twin_id, claim.failures, self._read, session, claim)
                if item is not None:
                    read.append(item)
        batch = self._learn(read, stop)
        self._commit(batch)
        return sum(len(item.result.seq) for item in batch)

    def _guarded(self, twin_id: int, failures: int, fn, *args):
        """Run one twin's part of a pass; what goes wrong is that twin's alone."""
        try:
            return fn(*args)
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
        return None

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
    def _pending_query():
        """Twins with observations past their newest version's watermark (the twins table
        alone: each row holds its newest watermark)."""
        return select(t.Twin.id).where(
            t.Twin.last_seq > t.Twin.watermark, t.Twin.deleted_at.is_(None)
        )

    def _pending(self) -> bool:
        with self.sessions() as session:
            return session.scalar(self._pending_query().limit(1)) is not None

    def _claim(self) -> list[Claim]:
        """Lease up to `claim_limit` twins with pending work, longest-waiting first (by the
        receive time of the oldest observation not yet learned), within this worker's share
        (app.leases); twins that failed wait for their `retry_at`."""
        self.leases.refresh()
        now = time.time()
        free = self.leases.claimable(now)
        due = or_(t.Twin.retry_at.is_(None), t.Twin.retry_at <= now)
        oldest = aliased(t.Observation)
        query = (
            select(
                t.Twin.id,
                t.Twin.calibration_failures,
                t.Twin.version,
                t.Twin.watermark,
                t.Twin.lease_owner,
                t.Twin.lease_expires_at,
            )
            .outerjoin(oldest, (oldest.twin_id == t.Twin.id) & (oldest.seq == t.Twin.watermark + 1))
            .where(t.Twin.last_seq > t.Twin.watermark, t.Twin.deleted_at.is_(None), free, due)
            .order_by(func.coalesce(oldest.received_at, 0.0), t.Twin.id)
            .limit(self.config.claim_limit)
            .with_for_update(of=t.Twin, skip_locked=True)
        )
        with self.sessions.begin() as session:
            rows = session.connection().execute(query).all()  # Core: no ORM work
            claimed = self.leases.admit(
                [Claim(*map(int, row[:4])) for row in rows], [row[4] for row in rows]
            )
            expiry = {int(row[0]): row[5] if row[4] == self.owner else None for row in rows}
            taken = self.leases.take(
                session, [c.twin_id for c in claimed], now, [expiry[c.twin_id] for c in claimed]
            )
        return [c for c in claimed if c.twin_id in taken]

    # -- one twin -----------------------------------------------------------------------------
    def _load(self, session: Session, claim: Claim) -> Twin:
        """The twin at its newest version: this worker's own, unless another committed since."""
        cached = self._cache.get(claim.twin_id)
        if cached and cached[0] == claim.version:
            return cached[1]
        newest = select(t.Version.checkpoint).where(
            t.Version.twin_id == claim.twin_id, t.Version.number == claim.version
        )
        blob = session.connection().execute(newest).first()  # Core: no ORM work
        if blob is None:
            raise TwinGone(claim.twin_id)
        if blob[0] is None:
            raise RuntimeError(f"newest version {claim.version} has no checkpoint")
        return Twin.from_bytes(blob[0])

    def _exists(self, twin_id: int) -> bool:
        with self.sessions() as session:
            return session.get(t.Twin, twin_id) is not None

    def _read(self, session: Session, claim: Claim) -> tuple[Claim, Twin, Observations] | None:
        """The twin at its newest version and its next observations (None: nothing pending).
        What fails ends the session's transaction, so that the pass's next read starts clean."""
        try:
            twin = self._load(session, claim)
            size = twin.update_size
            bounds = {
                "twin_id": claim.twin_id,
                "after": twin.watermark,
                "rows": max(self.config.batch // size, 1) * size,  # on an update boundary
            }
            rows = session.connection().execute(NEXT_OBSERVATIONS, bounds).all()  # Core, no ORM
        except Exception:
            session.rollback()
            raise
        if not rows:
            return None
        self._cache.pop(claim.twin_id, None)  # the twin mutates now; cached once committed
        return claim, twin, _observations(rows, len(twin.spec.inputs), len(twin.spec.outputs))

    def _learn(self, read: list, stop: threading.Event | None) -> list[Learned]:
        """Step the twins read together (`twin.fleet.step_together`: their learner updates
        batched), within one time budget; a twin that failed `quarantine_after` times in a row
        learns alone, one update at a time (`learn_isolated`)."""
        quarantine = self.config.quarantine_after
        together = [item for item in read if item[0].failures < quarantine]
        alone = [item for item in read if item[0].failures >= quarantine]
        batch = []
        results = step_together(
            [twin for _, twin, _ in together], [obs for _, _, obs in together], self._deadline()
        )
        for (claim, twin, _), result in zip(together, results, strict=True):
            item = self._guarded(claim.twin_id, claim.failures, self._learned, claim, twin, result)
            if item is not None:
                batch.append(item)
        if self.on_progress is not None:
            self.on_progress()
        started = time.monotonic()
        for claim, twin, obs in alone:
            if (stop is not None and stop.is_set()) or (
                time.monotonic() - started > self.config.lease_seconds / 3
            ):
                break  # commit well within the leases; the rest stay ours for the next pass
            item = self._guarded(
                claim.twin_id, claim.failures, self._isolated, claim, twin, obs, self._deadline()
            )
            if item is not None:
                batch.append(item)
            if self.on_progress is not None:
                self.on_progress()
        return batch

    def _deadline(self) -> float | None:
        budget = self.config.budget_seconds
        return None if budget is None else time.monotonic() + budget

    def _isolated(self, claim: Claim, twin: Twin, obs: Observations, deadline) -> Learned:
        twin, result, error, passed = learn_isolated(twin, obs, deadline)
        if passed:
            log.warning(
                "twin %s: passed over %s observations it could not learn", claim.twin_id, passed
            )
        return self._learned(claim, twin, result, error)

    def _learned(
        self,
        claim: Claim,
        twin: Twin,
        result: StepResult | Exception,
        error: Exception | None = None,
    ) -> Learned:
        """The version to write for a stepped twin; raise what its step raised."""
        if isinstance(result, Exception):
            raise result
        if error is None:
            check_finite(twin)
        if self.before_commit is not None:
            self.before_commit(claim.twin_id, result)
        return Learned(claim.twin_id, claim.version + 1, twin, result, claim.failures, error)

    def _commit(self, batch: list[Learned]) -> None:
        """Write the pass's versions in one transaction; if that fails, twin by twin, so that
        one twin's conflict (another worker committed first, or it was deleted) is its own.
        Each twin's rows are built first, outside the transaction (on SQLite it holds the
        database's write lock from its first statement), a failure there its own too."""
        rules, now = self.config.write_rules, time.time()
        built = []
        for item in batch:
            rows = self._guarded(item.twin_id, item.failures, version_rows, item, rules, now)
            if rows is not None:
                built.append((item, rows))
        if not built:
            return
        try:
            self._write(built)
        except OperationalError:
            raise
        except Exception:
            if len(built) == 1:
                item = built[0][0]
                self._guarded(item.twin_id, item.failures, self._write, built)
                return
            for item, rows in built:
                self._guarded(item.twin_id, item.failures, self._write, [(item, rows)])

    def _write(self, built: list[tuple[Learned, VersionRows]]) -> None:
        batch = [item for item, _ in built]
        for item in batch:
            self._cache.pop(item.twin_id, None)
        with self.sessions.begin() as session:
            gone = write_versions(session, [rows for _, rows in built], self.config.write_rules)
        for item in batch:
            if item.twin_id in gone:
                if len(batch) == 1:
                    raise TwinGone(item.twin_id)
                log.info("twin %s was deleted while calibrating; dropped", item.twin_id)
            else:
                self._cache[item.twin_id] = (item.number, item.twin)
                if len(self._cache) > self.config.cached_twins:
                    self._cache.popitem(last=False)  # the least recently learned
                log.debug("twin %s: version %s", item.twin_id, item.number)

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


def _observations(rows, n_inputs: int, n_outputs: int) -> Observations:
    """Rows (seq, ts, inputs, outputs) read in `seq` (arrival) order, in time order: a late
    observation is learned where it belongs in time if the twin has not learned past it."""
    rows = sorted(rows, key=lambda r: r[1])
    seq = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    ts = np.fromiter((r[1] for r in rows), dtype=np.float64, count=len(rows))
    inputs = np.array([r[2] for r in rows], dtype=np.float64).reshape(len(rows), n_inputs)
    outputs = np.array([r[3] for r in rows], dtype=np.float64).reshape(len(rows), n_outputs)
    return Observations(ts, inputs, outputs, seq)
