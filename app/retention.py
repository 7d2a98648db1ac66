"""Retention: observations, predictions and versions removed by age and by count per twin, so
that storage stays bounded at fleet scale (docs/retention.md).

The worker calls `Retention.step()` between calibration passes. A sweep (every `interval`
seconds) finds the twins with something to remove in one statement of per-twin index lookups;
each step then deletes for those twins, at most `batch` rows per transaction, until its time
budget is spent, and a later step carries on: steps take `share` of the worker's time while
there is work (after a long calibration pass, a step's budget grows with it, up to `burst`),
so a backlog of removals neither holds calibration back nor falls behind a busy worker.
Transactions stay short, so SQLite's one write lock is never held for long and ingestion and
calibration go on in between.

What is never removed, whatever the settings:
- an observation not yet learned (seq above the latest version's watermark), nor the newest
  `WINDOW_FLOOR` learned ones (the window the current version was fitted on, which the history
  and series reads show beside it);
- a prediction whose observation is kept by that rule;
- version 0 (the first guess's parameters; the drift baseline itself lives in the newest
  checkpoint's drift state) and the newest `keep_checkpoints` versions, which hold the full
  learner state the worker resumes from.

Series blocks (app.services.blocks) go once every observation they cover is gone, the newest
of each output and size excepted; drift events once their observation is gone and they are
older than the span the "drifting" filter reads (an hour).

A worker's retention (given its `Leases`) sweeps the twins it holds and its part of those
nobody holds (`Leases.scope`), so that k workers share the work instead of each doing all of it.

Observations go with their predictions (a prediction never outlives its observation: the
history reads predictions through observations), and they go first: learned observations
older than every window are the bulk of the database.

Index use (both engines): observation rules by count read `observations` on its primary key
(twin_id, seq); by age on the unique (twin_id, ts) key; prediction rules on the primary key of
`predictions` (twin_id, seq), joined to observations by (twin_id, seq) for age; version rules
on the unique (twin_id, number) key. The sweep's per-twin lookups are min/max probes of the
same keys.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from app.leases import Leases
from app.services import blocks
from app.services.fleet import DRIFTING_SECONDS
from app.tables import DriftEvent, Observation, Prediction, Twin, Version

log = logging.getLogger("tandem.retention")

REMOVED = ("observations", "predictions", "versions", "series_blocks", "drift_events")
WINDOW_FLOOR = 512  # newest learned observations always kept: the longest learner window


@dataclass(frozen=True)
class RetentionPolicy:
    """What to keep per twin; 0 disables a rule. Ages are seconds: observations and their
    predictions by `ts` against the clock, versions by when they were written."""

    observation_seconds: float = 0.0
    observation_count: int = 0
    prediction_seconds: float = 0.0
    prediction_count: int = 0
    version_seconds: float = 0.0
    version_count: int = 0
    thin_after: float = 0.0  # versions older than this keep only every `thin_every`-th number
    thin_every: int = 0
    keep_checkpoints: int = 3
    batch: int = 500  # rows per transaction
    interval: float = 60.0  # seconds between sweeps
    budget: float = 0.1  # seconds of deleting per step, at least
    share: float = 0.25  # of the worker's time retention takes while it has work (below 1)
    burst: float = 2.0  # seconds of deleting per step, at most (after a long pass)
    floor: int = WINDOW_FLOOR  # newest learned observations always kept

    @property
    def active(self) -> bool:
        return any(
            (
                self.observation_seconds,
                self.observation_count,
                self.prediction_seconds,
                self.prediction_count,
                self.versions_active,
            )
        )

    @property
    def versions_active(self) -> bool:
        return bool(self.version_seconds or self.version_count or self._thinning)

    @property
    def _thinning(self) -> bool:
        return bool(self.thin_after and self.thin_every > 1)


@dataclass
class TwinState:
    """What one sweep read of a twin: its newest seq and version, and the safe bound."""

    id: int
    last_seq: int
    newest: int  # newest version number
    safe: int  # newest seq that may be removed (learned, below the window floor)


class Retention:
    """Sweeps and deletes in bounded steps; `step()` is the worker's hook."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        policy: RetentionPolicy,
        leases: Leases | None = None,
    ):
        self.sessions = sessions
        self.policy = policy
        self.leases = leases  # a worker's: it sweeps its share of the twins (Leases.scope)
        self._queue: deque[TwinState] = deque()
        self._next_sweep = 0.0
        self._resume = 0.0  # monotonic time before which a step waits (its share of time)
        self._last = time.monotonic()  # when the previous step ended: calibration ran since
        self.removed = dict.fromkeys(REMOVED, 0)

    def step(self, now: float | None = None) -> int:
        """Delete for the policy's share of the time since the previous step (at least `budget`,
        at most `burst` seconds); sweep first when one is due and the last one's work is done.
        Returns the rows removed."""
        p = self.policy
        if not p.active:
            return 0
        started = time.monotonic()
        if started < self._resume:
            return 0
        owed = (started - self._last) * p.share / max(1.0 - p.share, 1e-9)
        clock = time.time() if now is None else now
        if not self._queue and clock >= self._next_sweep:
            self._next_sweep = clock + self.policy.interval
            self._queue.extend(self.sweep(clock))
        deadline = started + min(max(p.budget, owed), p.burst)
        removed = 0
        while self._queue and time.monotonic() < deadline:
            twin = self._queue[0]
            gone = self.remove_batch(twin, clock)
            removed += gone
            if not gone:  # nothing more of this twin this sweep
                self._queue.popleft()
        self._last = time.monotonic()
        self._resume = started + (self._last - started) / p.share  # calibration gets the rest
        return removed

    def hook(self) -> None:
        """`step()` for the worker loop: a failure (the database away) is logged, not raised;
        the next step tries again."""
        try:
            self.step()
        except Exception:
            log.warning("retention step failed", exc_info=True)
            self._queue.clear()

    def run(self, now: float | None = None) -> int:
        """One whole sweep and all its deletions (tests, the CLI)."""
        clock = time.time() if now is None else now
        removed = 0
        for twin in self.sweep(clock):
            while (gone := self.remove_batch(twin, clock)) > 0:
                removed += gone
        return removed

    # -- the sweep ------------------------------------------------------------------------------
    def sweep(self, now: float) -> list[TwinState]:
        """The twins that have something to remove, in one statement of per-twin probes."""
        p = self.policy
        newest = (
            select(func.max(Version.number))
            .where(Version.twin_id == Twin.id)
            .correlate(Twin)
            .scalar_subquery()
        )
        watermark = (
            select(Version.watermark)
            .where(Version.twin_id == Twin.id)
            .order_by(Version.number.desc())
            .limit(1)
            .correlate(Twin)
            .scalar_subquery()
        )

        def oldest(column):
            return (
                select(func.min(column))
                .where(column.table.c.twin_id == Twin.id)
                .correlate(Twin)
                .scalar_subquery()
            )

        first_prediction = oldest(Prediction.seq)
        first_prediction_ts = (
            select(Observation.ts)
            .where(Observation.twin_id == Twin.id, Observation.seq == first_prediction)
            .correlate(Twin)
            .scalar_subquery()
        )
        first_seq = oldest(Observation.seq)
        columns = [
            Twin.id,
            Twin.last_seq,
            newest,
            watermark,
            first_seq,
            oldest(Observation.ts),
            first_prediction,
            first_prediction_ts,
        ]
        columns.append(blocks.stale_exists(Twin.id))
        columns.append(select(DriftEvent.id).where(_events_due(Twin.id, first_seq, now)).exists())
        if p.versions_active:
            columns.append(
                select(Version.id)
                .where(self._versions_due(Twin.id, newest, now))
                .limit(1)
                .correlate(Twin)
                .exists()
            )
        with self.sessions() as session:
            query = select(*columns).where(Twin.deleted_at.is_(None))
            if self.leases is not None:
                query = query.where(self.leases.scope(session, now))
            rows = session.execute(query).all()
        due = []
        for twin_id, last_seq, top, wm, seq0, ts0, pred0, pred_ts0, *derived in rows:
            if top is None:
                continue  # being created or purged
            safe = min(int(wm or 0), int(last_seq)) - p.floor
            twin = TwinState(int(twin_id), int(last_seq), int(top), safe)
            if (
                self._observations_due(twin, seq0, ts0, now)
                or self._predictions_due(twin, pred0, pred_ts0, now)
                or any(derived)  # stale series blocks, old drift events, versions
            ):
                due.append(twin)
        return due

    def _observation_cut(self, twin: TwinState) -> int:
        """Newest seq the count rules remove (observations; predictions at least as far)."""
        count = self.policy.observation_count
        return min(twin.safe, twin.last_seq - count) if count else -1

    def _prediction_cut(self, twin: TwinState) -> int:
        count = self.policy.prediction_count
        own = min(twin.safe, twin.last_seq - count) if count else -1
        return max(own, self._observation_cut(twin))

    def _observations_due(self, twin: TwinState, seq0, ts0, now: float) -> bool:
        if seq0 is None or seq0 > twin.safe:
            return False
        age = self.policy.observation_seconds
        return seq0 <= self._observation_cut(twin) or bool(age and ts0 < now - age)

    def _predictions_due(self, twin: TwinState, pred0, ts0, now: float) -> bool:
        if pred0 is None or pred0 > twin.safe:
            return False
        age = self.policy.prediction_seconds
        old = bool(age and ts0 is not None and ts0 < now - age)
        return pred0 <= self._prediction_cut(twin) or old

    def _versions_due(self, twin_id, newest, now: float):
        """The condition on `versions` rows of a twin that retention removes."""
        p = self.policy
        rules = []
        if p.version_count:
            rules.append(Version.number <= newest - p.version_count)
        if p.version_seconds:
            rules.append(Version.created_at < now - p.version_seconds)
        if p._thinning:
            rules.append(
                (Version.created_at < now - p.thin_after) & (Version.number % p.thin_every != 0)
            )
        return (
            (Version.twin_id == twin_id)
            & (Version.number > 0)
            & (Version.number <= newest - p.keep_checkpoints)
            & or_(*rules)
        )

    # -- deleting -------------------------------------------------------------------------------
    def remove_batch(self, twin: TwinState, now: float) -> int:
        """One transaction: up to `batch` observations (with their predictions), else
        predictions, else versions, else series blocks of one twin. Returns the rows removed."""
        with self.sessions.begin() as session:
            seqs = self._observations(session, twin, now)
            if seqs:
                preds = self._delete_seqs(session, Prediction, twin.id, seqs)
                gone = self._delete_seqs(session, Observation, twin.id, seqs)
                self.removed["observations"] += gone
                self.removed["predictions"] += preds
                return gone + preds
            seqs = self._predictions(session, twin, now)
            if seqs:
                gone = self._delete_seqs(session, Prediction, twin.id, seqs)
                self.removed["predictions"] += gone
                return gone
            if self.policy.versions_active:
                ids = session.scalars(
                    select(Version.id)
                    .where(self._versions_due(twin.id, twin.newest, now))
                    .order_by(Version.number)
                    .limit(self.policy.batch)
                ).all()
                if ids:
                    gone = session.execute(
                        delete(Version)
                        .where(Version.id.in_(ids))
                        .execution_options(synchronize_session=False)
                    ).rowcount
                    self.removed["versions"] += gone
                    return gone
            gone = blocks.remove_stale(session, twin.id, self.policy.batch)
            self.removed["series_blocks"] += gone
            if gone:
                return gone
            gone = self._remove_events(session, twin.id, now)
            self.removed["drift_events"] += gone
            return gone

    def _remove_events(self, session: Session, twin_id: int, now: float) -> int:
        first = select(func.min(Observation.seq)).where(Observation.twin_id == twin_id)
        ids = session.scalars(
            select(DriftEvent.id)
            .where(_events_due(twin_id, first.scalar_subquery(), now))
            .order_by(DriftEvent.seq)
            .limit(self.policy.batch)
        ).all()
        if not ids:
            return 0
        return session.execute(
            delete(DriftEvent)
            .where(DriftEvent.id.in_(ids))
            .execution_options(synchronize_session=False)
        ).rowcount

    def _observations(self, session: Session, twin: TwinState, now: float) -> list[int]:
        p, o = self.policy, Observation
        cut = self._observation_cut(twin)
        if cut >= 1:  # primary key (twin_id, seq)
            query = select(o.seq).where(o.twin_id == twin.id, o.seq <= cut)
            seqs = session.scalars(query.order_by(o.seq).limit(p.batch)).all()
            if seqs:
                return list(seqs)
        if p.observation_seconds and twin.safe >= 1:  # unique key (twin_id, ts)
            old = (o.twin_id == twin.id) & (o.ts < now - p.observation_seconds)
            query = select(o.seq).where(old, o.seq <= twin.safe)
            return list(session.scalars(query.order_by(o.ts).limit(p.batch)))
        return []

    def _predictions(self, session: Session, twin: TwinState, now: float) -> list[int]:
        p, pr, o = self.policy, Prediction, Observation
        cut = self._prediction_cut(twin)
        if cut >= 1:  # primary key (twin_id, seq)
            query = select(pr.seq).where(pr.twin_id == twin.id, pr.seq <= cut)
            seqs = session.scalars(query.order_by(pr.seq).limit(p.batch)).all()
            if seqs:
                return list(seqs)
        if p.prediction_seconds and twin.safe >= 1:  # predictions' key, observations' by seq
            query = (
                select(pr.seq)
                .join(o, (o.twin_id == pr.twin_id) & (o.seq == pr.seq))
                .where(
                    pr.twin_id == twin.id,
                    pr.seq <= twin.safe,
                    o.ts < now - p.prediction_seconds,
                )
            )
            return list(session.scalars(query.order_by(pr.seq).limit(p.batch)))
        return []

    @staticmethod
    def _delete_seqs(session: Session, table, twin_id: int, seqs: list[int]) -> int:
        return session.execute(
            delete(table)
            .where(table.twin_id == twin_id, table.seq.in_(seqs))
            .execution_options(synchronize_session=False)
        ).rowcount


def _events_due(twin_id, first_seq, now: float):
    """Drift events retention removes: fired at an observation that is gone (below the twin's
    oldest stored seq) and older than the span the "drifting" filter reads."""
    e = DriftEvent
    return (e.twin_id == twin_id) & (e.seq < first_seq) & (e.created_at < now - DRIFTING_SECONDS)


def retention_policy(settings) -> RetentionPolicy:
    """The policy of `app.config.Settings`."""
    return RetentionPolicy(
        observation_seconds=settings.observation_retention_seconds,
        observation_count=settings.observation_retention_count,
        prediction_seconds=settings.prediction_retention_seconds,
        prediction_count=settings.prediction_retention_count,
        version_seconds=settings.version_retention_seconds,
        version_count=settings.version_retention,
        thin_after=settings.version_thin_after,
        thin_every=settings.version_thin_every,
        keep_checkpoints=settings.keep_checkpoints,
        batch=settings.retention_batch,
        interval=settings.retention_interval,
    )
