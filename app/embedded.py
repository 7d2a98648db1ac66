"""Running the calibrator: beside `tandem serve` (supervised child processes) or as `tandem worker`.

The embedded worker is a process, not a thread, so torch's learning and the HTTP server's
parsing use separate cores and never contend for one interpreter lock: on a 2-core machine
that doubled ingestion throughput while calibrating. `tandem serve` runs one such child, or
several (`TANDEM_EMBEDDED_WORKERS`), which share the twins through the same sticky leases as
separate `tandem worker` processes do (app.leases); docs/fleet.md measures when that helps.

Nothing shared with the child can be left held by it when it dies: the parent stops it with
SIGTERM (then SIGKILL), the child writes its heartbeat into a lock-free shared double, and the
child notices its parent's death by polling its parent pid. A supervisor thread in the parent
restarts a child that died (with backoff) and releases the dead child's leases at once, so
calibration resumes without waiting for them to run out.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from app import tables as t
from app.calibrator import Calibrator, CalibratorConfig
from app.config import Settings
from app.db import make_engine, make_session_factory
from app.retention import Retention, retention_policy

log = logging.getLogger("tandem.worker")

STOP_GRACE = 3.0  # seconds a stopping child gets to finish its twin and release its leases
RESTART_DELAY = (0.5, 30.0)  # first and longest wait before restarting a dead child
STABLE_AFTER = 60.0  # a child that lived this long restarts after the shortest wait again


def calibrator_config(settings: Settings) -> CalibratorConfig:
    return CalibratorConfig(
        batch=settings.calibration_batch,
        claim_limit=settings.calibration_twins,
        lease_seconds=settings.lease_seconds,
        poll_interval=settings.poll_interval,
        keep_checkpoints=settings.keep_checkpoints,
        version_retention=settings.version_retention,
        budget_seconds=settings.calibration_budget or None,
        retry_cap_seconds=settings.retry_cap,
    )


def run_worker(
    settings: Settings,
    stop: threading.Event,
    owner: str | None = None,
    heartbeat: Callable[[], None] | None = None,
) -> None:
    """A worker's life: calibrate until `stop` is set, then release its leases. torch gets the
    worker's thread budget; malloc keeps a pass's tensors in its heap, and the cycle collector
    leaves the imports alone and runs less often (`twin.runtime`)."""
    import torch

    from twin.runtime import tune_allocator, tune_garbage_collector

    torch.set_num_threads(settings.torch_threads)
    tune_allocator()
    tune_garbage_collector()
    engine = make_engine(settings.database_url)
    calibrator = Calibrator(make_session_factory(engine), calibrator_config(settings), owner)
    calibrator.on_progress = heartbeat
    retention = Retention(calibrator.sessions, retention_policy(settings), calibrator.leases)
    calibrator.between_passes = retention.hook
    try:
        calibrator.run_until(stop)
    finally:
        engine.dispose()


def release_leases(sessions: sessionmaker[Session], owner: str) -> None:
    """Free the twins a (dead) worker had claimed, and its place among the workers (its
    replacement then holds every twin at once, not half of them until its heartbeat is stale)."""
    with sessions.begin() as session:
        session.execute(
            update(t.Twin)
            .where(t.Twin.lease_owner == owner)
            .values(lease_owner=None, lease_expires_at=None)
        )
        session.execute(delete(t.Worker).where(t.Worker.name == owner))


def release_stale_leases(sessions: sessionmaker[Session]) -> int:
    """Release the leases of embedded workers on this host whose server is gone (killed with
    -9, so nobody released them): without this a restarted server waits out their lease time
    before calibrating those twins again. Returns how many were released."""
    host = socket.gethostname()
    with sessions.begin() as session:
        owners = session.scalars(
            select(t.Twin.lease_owner)
            .where(t.Twin.lease_owner.like(f"{host}:%:embedded-%"))
            .distinct()
        ).all()
        registered = session.scalars(
            select(t.Worker.name).where(t.Worker.name.like(f"{host}:%:embedded-%"))
        ).all()
        stale = [o for o in {*owners, *registered} if not _alive(int(o.split(":")[-2]))]
        if not stale:
            return 0
        session.execute(delete(t.Worker).where(t.Worker.name.in_(stale)))
        result = session.execute(
            update(t.Twin)
            .where(t.Twin.lease_owner.in_(stale))
            .values(lease_owner=None, lease_expires_at=None)
        )
    log.info("released the leases of %d twins held by servers that are gone", result.rowcount)
    return result.rowcount


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _child(settings_json: str, owner: str, beat, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when the worker stops
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    os.nice(10)  # ingestion never waits for the learner: on a busy machine, HTTP goes first
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")

    def orphaned() -> None:  # the parent was killed: nobody will stop us
        while not stop.wait(0.5):
            if os.getppid() != parent:
                stop.set()

    threading.Thread(target=orphaned, daemon=True).start()

    def heartbeat() -> None:
        beat.value = time.time()

    run_worker(Settings.model_validate_json(settings_json), stop, owner, heartbeat)


class EmbeddedWorker:
    """The calibrator in a supervised child process of the API, started and stopped with it."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        on_restart: Callable[[], None] | None = None,
        index: int = 0,
    ):
        self.index = index
        self._settings_json = settings.model_dump_json()
        self._sessions = sessions
        self._on_restart = on_restart
        self._context = multiprocessing.get_context("spawn")  # no forked torch or database state
        self._beat = self._context.RawValue("d", 0.0)  # no lock: a dead writer holds nothing
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # the parent's own threads only
        self._process: multiprocessing.process.BaseProcess | None = None
        self._owner = ""
        self._started_at = 0.0
        self.restarts = 0
        self.died_at: float | None = None  # when a child was last found dead
        self._supervisor = threading.Thread(
            target=self._supervise, name="tandem-supervisor", daemon=True
        )

    # -- status -------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def reporting(self) -> bool:
        """Whether the current child has reported since it started (it is past its imports)."""
        return self._beat.value > 0

    @property
    def recovering(self) -> bool:
        """Whether a child died and no child has reported since (readiness fails meanwhile,
        however quickly the new one starts)."""
        return self.died_at is not None and not self.reporting

    def heartbeat_age(self) -> float:
        """Seconds since the child last reported progress (since its start when it has not)."""
        beat = self._beat.value or self._started_at
        return max(time.time() - beat, 0.0)

    # -- life ---------------------------------------------------------------------------------
    def start(self) -> EmbeddedWorker:
        with self._lock:
            self._spawn()
        self._supervisor.start()
        return self

    def _spawn(self) -> None:
        host, pid = socket.gethostname(), os.getpid()
        self._owner = f"{host}:{pid}:embedded-{self.index}-{self.restarts}"
        self._beat.value = 0.0
        self._started_at = time.time()
        self._process = self._context.Process(
            target=_child,
            args=(self._settings_json, self._owner, self._beat, os.getpid()),
            name=f"tandem-calibrator-{self.index}",
            daemon=True,
        )
        self._process.start()

    def _supervise(self) -> None:
        delay = RESTART_DELAY[0]
        while not self._stopping.is_set():
            process = self._process
            process.join(0.2)
            if process.is_alive() or self._stopping.is_set():
                continue
            lived = time.time() - self._started_at
            self.died_at = time.time()
            self._beat.value = 0.0  # not reporting until a new child has
            delay = RESTART_DELAY[0] if lived > STABLE_AFTER else delay
            log.warning(
                "calibration worker %s exited (code %s); restarting in %.1f s",
                process.pid,
                process.exitcode,
                delay,
            )
            self._release(self._owner)
            if self._stopping.wait(delay):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self.restarts += 1
                self._spawn()
            if self._on_restart is not None:
                self._on_restart()
            delay = min(delay * 2, RESTART_DELAY[1])

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM the child, SIGKILL it after `grace` seconds, release its leases."""
        self.terminate()
        self.finish(time.monotonic() + grace)

    def terminate(self) -> None:
        """The first half of `stop`: no more restarts, and SIGTERM to the child."""
        self._stopping.set()
        if self._supervisor.is_alive():
            self._supervisor.join(2.0)  # so that only this thread waits on the child now
        with self._lock:
            process = self._process
        if process is not None:
            process.terminate()  # SIGTERM; a child that is gone already is no error

    def finish(self, deadline: float) -> None:
        """The second half of `stop`: wait for the child until `deadline` (monotonic), SIGKILL
        it after, and release its leases."""
        with self._lock:
            process, owner = self._process, self._owner
        if process is not None:
            process.join(max(deadline - time.monotonic(), 0.0))
            if process.is_alive():
                log.warning("calibration worker %s did not stop in time; killed", process.pid)
                process.kill()
                process.join(2.0)
            self._release(owner)

    def _release(self, owner: str) -> None:
        try:
            release_leases(self._sessions, owner)
        except Exception as exc:  # the database may be gone too; the leases then run out
            log.warning("could not release the worker's leases: %s", exc)


class EmbeddedWorkers:
    """The API's calibrator children, each an `EmbeddedWorker`, seen as one: ready when every
    child reports, as old as its most silent child, restarted as often as all together."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        on_restart: Callable[[], None] | None = None,
    ):
        self._sessions = sessions
        self.children = [
            EmbeddedWorker(settings, sessions, on_restart, index)
            for index in range(settings.embedded_workers)
        ]

    @property
    def pid(self) -> int | None:
        return self.children[0].pid

    @property
    def pids(self) -> list[int | None]:
        return [child.pid for child in self.children]

    @property
    def reporting(self) -> bool:
        return all(child.reporting for child in self.children)

    @property
    def recovering(self) -> bool:
        return any(child.recovering for child in self.children)

    @property
    def restarts(self) -> int:
        return sum(child.restarts for child in self.children)

    def heartbeat_age(self) -> float:
        return max(child.heartbeat_age() for child in self.children)

    def start(self) -> EmbeddedWorkers:
        try:
            release_stale_leases(self._sessions)
        except Exception as exc:  # the leases then run out by themselves
            log.warning("could not release stale leases: %s", exc)
        for child in self.children:
            child.start()
        return self

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM every child at once, SIGKILL those still running `grace` seconds later."""
        for child in self.children:
            child.terminate()
        deadline = time.monotonic() + grace
        for child in self.children:
            child.finish(deadline)


__all__ = [
    "EmbeddedWorker",
    "EmbeddedWorkers",
    "release_leases",
    "release_stale_leases",
    "run_worker",
]
