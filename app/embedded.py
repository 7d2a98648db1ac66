"""Running the calibrator: beside `tandem serve` (a child process) or as `tandem worker`.

The embedded worker is a process, not a thread, so torch's learning and the HTTP server's
parsing use separate cores and never contend for one interpreter lock: on a 2-core machine
that doubled ingestion throughput while calibrating.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal

from app.calibrator import Calibrator, CalibratorConfig
from app.config import Settings
from app.db import make_engine, make_session_factory


def calibrator_config(settings: Settings) -> CalibratorConfig:
    return CalibratorConfig(
        batch=settings.calibration_batch,
        lease_seconds=settings.lease_seconds,
        poll_interval=settings.poll_interval,
        keep_checkpoints=settings.keep_checkpoints,
        version_retention=settings.version_retention,
        budget_seconds=settings.calibration_budget or None,
        retry_cap_seconds=settings.retry_cap,
    )


def run_worker(settings: Settings, stop) -> None:
    """A worker's life: calibrate until `stop` is set, then release its leases. torch gets the
    worker's thread budget."""
    import torch

    torch.set_num_threads(settings.torch_threads)
    engine = make_engine(settings.database_url)
    calibrator = Calibrator(make_session_factory(engine), calibrator_config(settings))
    try:
        calibrator.run_until(stop)
    finally:
        engine.dispose()


def _child(settings_json: str, stop) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when the worker stops
    os.nice(10)  # ingestion never waits for the learner: on a busy machine, HTTP goes first
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    run_worker(Settings.model_validate_json(settings_json), stop)


class EmbeddedWorker:
    """The calibrator in a child process of the API, started and stopped with it."""

    def __init__(self, settings: Settings):
        context = multiprocessing.get_context("spawn")  # no forked torch or database state
        self._stop = context.Event()
        self._process = context.Process(
            target=_child,
            args=(settings.model_dump_json(), self._stop),
            name="tandem-calibrator",
            daemon=True,
        )

    def start(self) -> EmbeddedWorker:
        self._process.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


__all__ = ["EmbeddedWorker", "run_worker"]
