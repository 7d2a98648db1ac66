"""Running the calibrator: inside `tandem serve` (a background thread) or as `tandem worker`."""

from __future__ import annotations

import threading

import torch
from sqlalchemy import Engine

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
    )


def calibrator_for(settings: Settings, engine: Engine | None = None):
    """A calibrator on `engine` (or a new one from settings); torch gets its thread budget."""
    torch.set_num_threads(settings.torch_threads)
    engine = engine or make_engine(settings.database_url)
    return Calibrator(make_session_factory(engine), calibrator_config(settings)), engine


class EmbeddedWorker:
    """The calibrator in a daemon thread of the API process; torch never runs on the event loop."""

    def __init__(self, settings: Settings, engine: Engine):
        self.calibrator, _ = calibrator_for(settings, engine)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self.calibrator.run_until, args=(self._stop,), name="calibrator", daemon=True
        )

    def start(self) -> EmbeddedWorker:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
