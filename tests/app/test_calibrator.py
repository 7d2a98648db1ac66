"""The calibration loop: exactly once, crash-safe, one worker per twin."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app import tables as t
from app.calibrator import Calibrator, CalibratorConfig
from app.config import Settings
from app.db import make_engine, make_session_factory
from app.main import create_app
from twin.plants import Drift, FirstOrderPlant

N = 600


def plant_rows(n: int = N, seed: int = 5):
    plant = FirstOrderPlant(jitter=0.5, drift={"tau": [Drift.ramp(0.5 / n)]})
    obs = plant.simulate(n, seed=seed).observations
    rows = [
        {"ts": float(ts), "inputs": {"u": float(u[0])}, "outputs": {"y": float(y[0])}}
        for ts, u, y in zip(obs.ts, obs.inputs, obs.outputs, strict=True)
    ]
    return plant, rows


def seeded_database(url: str, twins: int = 1) -> list[int]:
    """A database holding `twins` first-order twins with the same backlog of observations."""
    plant, rows = plant_rows()
    spec = plant.spec_dict()
    spec["learner"] = {"method": "pgpe", "update_size": 8}
    ids = []
    settings = Settings(database_url=url, worker=False, run_migrations=True)
    with TestClient(create_app(settings)) as client:
        for i in range(twins):
            created = client.post("/twins", json={**spec, "name": f"plant-{i}"})
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])
            for start in range(0, len(rows), 200):
                body = {"observations": rows[start : start + 200]}
                posted = client.post(f"/twins/{ids[-1]}/observations", json=body)
                assert posted.status_code == 202, posted.text
    return ids


def history(url: str, twin_id: int):
    engine = make_engine(url)
    with engine.connect() as conn:
        versions = conn.execute(
            select(t.Version.number, t.Version.watermark, t.Version.parameters)
            .where(t.Version.twin_id == twin_id)
            .order_by(t.Version.number)
        ).all()
        predictions = conn.execute(
            select(t.Prediction.seq, t.Prediction.prediction)
            .where(t.Prediction.twin_id == twin_id)
            .order_by(t.Prediction.seq)
        ).all()
    engine.dispose()
    return [tuple(v) for v in versions], [tuple(p) for p in predictions]


def calibrator(url: str, **config) -> Calibrator:
    config.setdefault("budget_seconds", None)  # commits of exactly `batch` (see test_isolation)
    return Calibrator(make_session_factory(make_engine(url)), CalibratorConfig(**config))


class PowerCut(BaseException):
    """Not an Exception: the calibrator's isolation of failing twins does not catch it."""


@pytest.fixture
def reference(tmp_path):
    """An uninterrupted run over the backlog, in commits of 64 observations."""
    url = f"sqlite:///{tmp_path / 'reference.db'}"
    (twin_id,) = seeded_database(url)
    calibrator(url, batch=64).drain()
    return history(url, twin_id)


def test_calibration_learns_every_observation_once_in_bounded_commits(reference):
    versions, predictions = reference
    assert [v[0] for v in versions] == list(range(len(versions)))
    watermarks = [v[1] for v in versions]
    assert watermarks[0] == 0 and watermarks[-1] == N
    assert all(0 < b - a <= 64 for a, b in zip(watermarks, watermarks[1:], strict=False))
    assert [p[0] for p in predictions] == list(range(1, N + 1))


def test_crash_between_learning_and_commit_changes_nothing(tmp_path, reference):
    url = f"sqlite:///{tmp_path / 'crashing.db'}"
    (twin_id,) = seeded_database(url)
    crashing = calibrator(url, batch=64, lease_seconds=0.5)  # a dead worker's lease runs out
    commits = {"n": 0}

    def crash_on_the_fourth_commit(*_):
        commits["n"] += 1
        if commits["n"] == 4:
            raise PowerCut("power cut")

    crashing.before_commit = crash_on_the_fourth_commit
    with pytest.raises(PowerCut, match="power cut"):
        crashing.drain()
    assert history(url, twin_id)[0][-1][1] == 3 * 64  # three versions landed, nothing more
    calibrator(url, batch=64).drain()  # a fresh worker: no memory of the lost step
    assert history(url, twin_id) == reference


def test_a_worker_that_loses_its_cache_reloads_the_checkpoint(tmp_path, reference):
    url = f"sqlite:///{tmp_path / 'reload.db'}"
    (twin_id,) = seeded_database(url)
    first = calibrator(url, batch=64, lease_seconds=0.5)
    first.run_once()
    first.run_once()
    calibrator(url, batch=64).drain()
    assert history(url, twin_id) == reference


@pytest.mark.slow
def test_killed_worker_process_resumes_exactly(tmp_path, reference):
    """SIGKILL a real `tandem worker` several times mid-run; the end result is the same."""
    url = f"sqlite:///{tmp_path / 'killed.db'}"
    (twin_id,) = seeded_database(url)
    env = {**os.environ, "TANDEM_DATABASE_URL": url, "TANDEM_CALIBRATION_BATCH": "64"}
    env["TANDEM_LEASE_SECONDS"] = "1"  # a killed worker's claim runs out quickly
    env["TANDEM_CALIBRATION_BUDGET"] = "0"  # commits of exactly 64, as in the reference
    worker = [sys.executable, "-c", "from app.cli import main; main()", "worker"]
    kills = 0
    deadline = time.monotonic() + 120
    while history(url, twin_id)[0][-1][1] < N:
        assert time.monotonic() < deadline, "the workers never finished"
        proc = subprocess.Popen(worker, env=env, stdout=subprocess.DEVNULL)
        start = history(url, twin_id)[0][-1][1]
        if kills < 3:
            while history(url, twin_id)[0][-1][1] < start + 64 and proc.poll() is None:
                time.sleep(0.02)  # wait for one commit, then kill in the middle of the next
            time.sleep(0.01 * (kills + 1))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        else:
            while history(url, twin_id)[0][-1][1] < N and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
    assert kills == 3
    assert history(url, twin_id) == reference


@pytest.mark.postgres
def test_two_workers_never_calibrate_one_twin_twice(postgres_url, reference):
    (first, *others) = seeded_database(postgres_url, twins=4)
    workers = [calibrator(postgres_url, batch=64) for _ in range(2)]
    threads = [threading.Thread(target=w.drain, kwargs={"timeout": 120}) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for twin_id in (first, *others):
        versions, predictions = history(postgres_url, twin_id)
        assert [v[0] for v in versions] == list(range(len(versions)))
        assert [p[0] for p in predictions] == list(range(1, N + 1))
        assert (versions, predictions) == reference
