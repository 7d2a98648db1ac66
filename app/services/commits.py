"""Group commit for ingestion: the posts that arrive while one transaction commits share the
next one.

On SQLite every write transaction takes the database's one write lock and ends with an fsync
(`synchronous = FULL`); one transaction per post made the lock, not the CPU, the limit of
ingestion under many small posts. Here one committer thread per process takes the posts queued
for it (already parsed and checked, so a bad body never joins a group), runs each one's writes
in one transaction, commits once, and only then answers each post: a 202 still means its rows
are durable. A post is all or nothing and never fails another:

- a post refused while it writes (`DomainError`, e.g. its twin was deleted meanwhile) is
  answered with its error, and the group is rolled back and run again without it;
- any other failure (the database, a conflict, the commit itself) rolls the group back and
  runs each post alone, in its own transaction, so that only the culprit fails.

A post's writes run in the group's transaction after those of the posts before it, so seqs,
duplicates and late flags are exactly those of one transaction per post in that order.

A post that finds no other post waiting and the committer idle has nobody to share a commit
with: it commits its group of one in its own thread (`alone`), on the committer's connection,
under the same rules, without the round trip through the committer thread. One writer at a
time holds the turn (a group or a post alone); posts that come meanwhile queue for the next
group, so a lone post never delays a group by more than its own commit.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from app.db import make_engine, make_session_factory
from app.errors import DomainError

log = logging.getLogger(__name__)
T = TypeVar("T")
P = TypeVar("P")
R = TypeVar("R")
GROUP_ROWS = 20_000  # observations per group at most (a post larger than that commits alone)


@dataclass
class Job:
    """One post's writes: `write(session)` in the group's transaction; its result or error
    goes to `future` once the group has committed (or failed)."""

    write: Callable[[Session], Any]
    rows: int
    order: int  # the smallest twin id written: a group locks twins in id order
    future: Future = field(default_factory=Future)


class GroupCommit:
    """One committer thread; `submit` queues a post's writes, `run` awaits their commit."""

    def __init__(self, engine: Engine, max_rows: int = GROUP_ROWS):
        # its own connection, so that it never waits behind the requests for the API's pool
        # (an in-memory SQLite database has one connection: shared)
        shared = isinstance(engine.pool, StaticPool)
        url = engine.url.render_as_string(hide_password=False)
        self._engine = engine if shared else make_engine(url, pool_size=1, max_overflow=0)
        self.sessions = make_session_factory(self._engine)
        self._own = not shared
        self.max_rows = max_rows
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._closed = False
        # the turn to write: held by the committer while it runs a group, or by a post alone
        self._turn = threading.Condition()
        self._writing = False
        self._waiting = 0  # posts submitted and not yet taken into a group
        self.groups = 0  # transactions committed, and the posts they held (for tests, logs)
        self.posts = 0
        self.posts_alone = 0  # of those, posts committed alone in their own thread
        self._thread = threading.Thread(target=self._run, name="tandem-commit", daemon=True)
        self._thread.start()

    def submit(self, write: Callable[[Session], T], rows: int, order: int = 0) -> Future:
        job = Job(write, rows, order)
        with self._turn:
            if self._closed:
                raise RuntimeError("the committer is closed")
            self._waiting += 1
            self._queue.put(job)
        return job.future

    def alone(self, write: Callable[[Session], T], rows: int, order: int = 0) -> Future | None:
        """`write` committed in the calling thread, as a group of one, when no post waits and
        the committer is idle: its done future (the result, or the post's error). None when
        others write or wait: then the post joins the next group (`run`)."""
        with self._turn:
            if self._closed or self._writing or self._waiting:
                return None
            self._writing = True
        job = Job(write, rows, order)
        job.future.set_running_or_notify_cancel()
        try:
            if self._commit([job]):
                self.posts_alone += 1
        finally:
            self._release()
        return job.future

    async def run(self, write: Callable[[Session], T], rows: int, order: int = 0) -> T:
        """`write` in a shared transaction; returns its result once that has committed."""
        return await asyncio.wrap_future(self.submit(write, rows, order))

    @property
    def waiting(self) -> int:
        """Posts queued for the next group."""
        return self._waiting

    def close(self, timeout: float = 30.0) -> None:
        """Commit what is queued, then stop the thread."""
        with self._turn:
            self._closed = True
            self._queue.put(None)
        self._thread.join(timeout)
        if self._own:
            self._engine.dispose()

    # -- the committer thread -----------------------------------------------------------------
    def _run(self) -> None:
        carry: Job | None = None
        closing = False
        while True:
            if carry is not None:
                first, carry = carry, None
            elif closing:
                try:
                    first = self._queue.get_nowait()
                except queue.Empty:
                    return
            else:
                first = self._queue.get()
            if first is None:
                closing = True
                continue
            with self._turn:  # wait for a post committing alone; later posts now queue
                while self._writing:
                    self._turn.wait()
                self._writing = True
            try:
                carry, closing = self._group(first, closing)
            finally:
                self._release()

    def _group(self, first: Job, closing: bool) -> tuple[Job | None, bool]:
        """Take what is queued behind `first` into its group and commit it; returns the job
        left for the next group (over the rows' limit) and whether the queue has closed."""
        carry = None
        group, rows = [first], first.rows
        while rows < self.max_rows:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                closing = True
            elif rows + job.rows > self.max_rows:
                carry = job
                break
            else:
                group.append(job)
                rows += job.rows
        with self._turn:
            self._waiting -= len(group)
        group = [job for job in group if job.future.set_running_or_notify_cancel()]
        group.sort(key=lambda job: job.order)  # stable: one twin's posts keep their order
        try:
            self._commit(group)
        except BaseException:  # never ends the thread: answer what is left
            log.exception("group commit failed")
            for job in group:
                if not job.future.done():
                    job.future.set_exception(RuntimeError("the commit failed"))
        return carry, closing

    def _release(self) -> None:
        with self._turn:
            self._writing = False
            self._turn.notify_all()

    def _commit(self, group: list[Job]) -> bool:
        """Commit the group; True when all of it committed in one transaction."""
        while group:
            try:
                results = self._attempt(group)
            except _Refused as refused:
                refused.job.future.set_exception(refused.error)
                group = [job for job in group if job is not refused.job]
                continue
            except Exception as exc:
                if len(group) == 1:
                    group[0].future.set_exception(exc)
                    return False
                log.info("a group of %s posts failed (%s); committing each alone", len(group), exc)
                for job in group:
                    self._commit([job])
                return False
            self.groups += 1
            self.posts += len(group)
            for job, result in zip(group, results, strict=True):
                job.future.set_result(result)
            return True
        return False

    def _attempt(self, group: list[Job]) -> list[Any]:
        with self.sessions() as session:
            results = []
            for job in group:
                try:
                    results.append(job.write(session))
                except DomainError as error:
                    session.rollback()
                    raise _Refused(job, error) from error
            session.commit()
        return results


class _Refused(Exception):
    def __init__(self, job: Job, error: DomainError):
        super().__init__(str(error))
        self.job, self.error = job, error


async def post(
    sessions: sessionmaker[Session],
    commits: GroupCommit | None,
    check: Callable[[Session], P],
    store: Callable[[Session, P], R],
    size: Callable[[P], tuple[int, int]],
) -> tuple[P, R]:
    """A post's reads and checks (`check`, which raises for a bad body), then its writes
    (`store`); returns both results once the writes have committed. With group commit on,
    `store` runs alone in the same thread call as `check` when nobody else writes or waits,
    else in a shared transaction (`size`: the post's rows and the smallest twin id it writes);
    with it off, in the same session as `check`. Either way the post holds a connection of the
    pool only while it reads and checks, not while it waits for a thread or a group (the pool
    is smaller than the posts that may wait at once), nor, with group commit on, while it
    writes (the committer's connection)."""

    def first() -> tuple[P, Future | None, tuple[int, int]]:
        with sessions() as session:
            checked = check(session)
            if commits is None:
                result = store(session, checked)
                session.commit()
                done: Future = Future()
                done.set_result(result)
                return checked, done, (0, 0)
        sized = size(checked)
        return checked, commits.alone(lambda session: store(session, checked), *sized), sized

    checked, done, sized = await run_in_threadpool(first)
    if done is None:  # others write or wait: join the next group
        return checked, await commits.run(lambda session: store(session, checked), *sized)
    return checked, done.result()
