"""Sticky leases: how several workers share the twins of one database.

A worker keeps the twins it has claimed: it renews all its leases every third of the lease
time instead of releasing them after a pass, so that the state it holds in memory for them
stays warm. Each worker registers in the `workers` table with a heartbeat; a worker holds at
most its fair share of the twins (their number over the live workers, rounded up), so a
worker that joins finds the others releasing their excess within a second, and claims it as
work arrives. A worker that dies stops renewing: its leases run out within the lease time and
the others, whose shares grow as its heartbeat goes stale, take its twins over. One worker
alone (the embedded default) holds every twin.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from app import tables as t

log = logging.getLogger("tandem.leases")

SHARE_REFRESH_S = 1.0  # how often a worker beats and recomputes its share
FORGET_AFTER = 10  # lease times after which a silent worker's row is deleted


class Leases:
    """One worker's leases: its heartbeat, its share, claiming within it, renewing it."""

    def __init__(self, sessions: sessionmaker[Session], owner: str, lease_seconds: float):
        self.sessions, self.owner, self.lease_seconds = sessions, owner, lease_seconds
        self.share = 0  # twins this worker may hold
        self.held = 0  # twins it holds (as of its last refresh, plus claims since)
        self.live = 1  # live workers, itself included
        self._refreshed = -math.inf
        self._renewed = -math.inf

    @property
    def live_window(self) -> float:
        """A worker silent longer than this is no longer counted (half a lease time: it beats
        every second while it runs)."""
        return self.lease_seconds / 2

    @property
    def room(self) -> int:
        return max(self.share - self.held, 0)

    def claimable(self, now: float):
        """The SQL condition on twins this worker may lease now: its own, and while it has
        room, those nobody holds (no lease, or one that ran out)."""
        if self.room == 0:
            return t.Twin.lease_owner == self.owner
        return self._mine_or_free(now)

    def _mine_or_free(self, now: float):
        return or_(
            t.Twin.lease_owner == self.owner,
            t.Twin.lease_owner.is_(None),
            t.Twin.lease_expires_at < now,
        )

    def scope(self, session: Session, now: float):
        """The SQL condition on twins this worker's housekeeping (app.retention) covers: those
        it holds, and its part of those nobody holds (no lease, or one that ran out), split
        among the live workers by twin id, so that each twin is covered by one worker."""
        live = t.Worker.heartbeat_at >= now - self.live_window
        names = list(session.scalars(select(t.Worker.name).where(live).order_by(t.Worker.name)))
        if self.owner not in names:
            names = sorted([*names, self.owner])
        k, rank = len(names), names.index(self.owner)
        mine = (t.Twin.lease_owner == self.owner) & (t.Twin.lease_expires_at >= now)
        free = or_(t.Twin.lease_owner.is_(None), t.Twin.lease_expires_at < now)
        if k > 1:
            free = free & (t.Twin.id % k == rank)
        return or_(mine, free)

    def admit(self, rows: Sequence, owners: Sequence[str | None]) -> list:
        """Of `rows` (claim candidates in order, `owners` their current lease owners), those
        to lease: the worker's own, and others while its room lasts."""
        room, out = self.room, []
        for row, owner in zip(rows, owners, strict=True):
            if owner == self.owner:
                out.append(row)
            elif room > 0:
                out.append(row)
                room -= 1
        self.held += self.room - room
        return out

    def take(
        self,
        session: Session,
        ids: Sequence[int],
        now: float,
        expires: Sequence[float | None] | None = None,
    ) -> set[int]:
        """Lease those of `ids` that are still this worker's or free (inside the claiming
        transaction); return the ids leased. On PostgreSQL the claim's FOR UPDATE already
        locked them; SQLite has no row locks, and two workers (say two embedded children) may
        read the same free twins, but their UPDATEs run one after the other under its write
        lock, and the second finds the twins taken.

        With `expires` (the leases' expiry times as read, None where none), a twin this worker
        holds for at least two thirds of a lease time more is not written again: `refresh`
        renews it before then. In the steady state of sticky leases a claim then writes
        nothing, and on SQLite it takes no turn at the one writer."""
        fresh = now + 2 * self.lease_seconds / 3
        expires = expires or [None] * len(ids)
        kept = {i for i, e in zip(ids, expires, strict=True) if e is not None and e >= fresh}
        ids = [i for i in ids if i not in kept]
        if not ids:
            return kept
        taken = set(
            session.connection().scalars(
                update(t.Twin)
                .where(t.Twin.id.in_(ids), self._mine_or_free(now))
                .values(lease_owner=self.owner, lease_expires_at=now + self.lease_seconds)
                .returning(t.Twin.id)
            )
        )
        self.held -= len(ids) - len(taken)
        return taken | kept

    def refresh(self, force: bool = False) -> None:
        """Once a second: beat, count the live workers and the twins, recompute the share and
        release the excess; every third of the lease time, renew every lease held."""
        now_mono = time.monotonic()
        if not force and now_mono - self._refreshed < SHARE_REFRESH_S:
            return
        self._refreshed = now_mono
        renew = force or now_mono - self._renewed >= self.lease_seconds / 3
        now = time.time()
        with self.sessions.begin() as session:
            self._beat(session, now)
            self.live = (
                session.scalar(
                    select(func.count()).where(t.Worker.heartbeat_at >= now - self.live_window)
                )
                or 1
            )
            twins = session.scalar(select(func.count()).where(t.Twin.deleted_at.is_(None))) or 0
            self.share = math.ceil(twins / self.live)
            held = (t.Twin.lease_owner == self.owner) & t.Twin.deleted_at.is_(None)
            self.held = (
                session.scalar(select(func.count()).where(held, t.Twin.lease_expires_at >= now))
                or 0
            )
            if self.held > self.share:
                self._shed(session, self.held - self.share)
            if renew:
                session.execute(
                    update(t.Twin).where(held).values(lease_expires_at=now + self.lease_seconds)
                )
                session.execute(  # deleted twins go to the purge (app.purge), which waits for them
                    update(t.Twin)
                    .where(t.Twin.lease_owner == self.owner, t.Twin.deleted_at.is_not(None))
                    .values(lease_owner=None, lease_expires_at=None)
                )
        if renew:
            self._renewed = now_mono

    def _beat(self, session: Session, now: float) -> None:
        beat = update(t.Worker).where(t.Worker.name == self.owner).values(heartbeat_at=now)
        if session.execute(beat).rowcount == 0:
            session.execute(
                insert(t.Worker).values(name=self.owner, started_at=now, heartbeat_at=now)
            )
            session.execute(
                delete(t.Worker).where(
                    t.Worker.heartbeat_at < now - FORGET_AFTER * self.lease_seconds
                )
            )

    def _shed(self, session: Session, excess: int) -> None:
        """Release `excess` of this worker's twins (the newest) so that a joining worker can
        claim them; between passes, so that none is being calibrated."""
        ids = session.scalars(
            select(t.Twin.id)
            .where(t.Twin.lease_owner == self.owner, t.Twin.deleted_at.is_(None))
            .order_by(t.Twin.id.desc())
            .limit(excess)
        ).all()
        session.execute(
            update(t.Twin)
            .where(t.Twin.id.in_(ids), t.Twin.lease_owner == self.owner)
            .values(lease_owner=None, lease_expires_at=None)
        )
        self.held -= len(ids)
        log.info("released %d twins to the other %d workers", len(ids), self.live - 1)

    def release(self) -> None:
        """Stop: free every twin held and leave the registry, so the others take over now."""
        with self.sessions.begin() as session:
            session.execute(
                update(t.Twin)
                .where(t.Twin.lease_owner == self.owner)
                .values(lease_owner=None, lease_expires_at=None)
            )
            session.execute(delete(t.Worker).where(t.Worker.name == self.owner))
        self.held = 0
