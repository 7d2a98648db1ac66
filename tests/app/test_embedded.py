"""The service with its embedded calibrator: observations posted over HTTP get learned."""

import os
import time

import pytest
import torch
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.app.conftest import SPEC, thermal_rows


def test_embedded_worker_learns_posted_observations(database_url):
    settings = Settings(database_url=database_url, worker=True, run_migrations=True)
    threads = torch.get_num_threads()  # the worker sets torch's thread budget for the process
    try:
        _run(settings)
    finally:
        torch.set_num_threads(threads)


def _run(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        twin_id = client.post("/twins", json={"name": "hx", **SPEC}).json()["id"]
        posted = client.post(
            f"/twins/{twin_id}/observations", json={"observations": thermal_rows(50)}
        )
        assert posted.status_code == 202
        deadline = time.monotonic() + 60
        while (status := client.get(f"/twins/{twin_id}").json())["watermark"] < 50:
            assert time.monotonic() < deadline, f"not calibrated in time: {status}"
            time.sleep(0.05)
        assert status["version"] >= 1 and status["calibration_lag"]["observations"] == 0
        predicted = client.post(
            f"/twins/{twin_id}/predict", json={"inputs": [{"heat": 5.0, "ambient": 20.0}], "dt": 1}
        )
        assert predicted.status_code == 200, predicted.text
        history = client.get(f"/twins/{twin_id}/observations").json()["observations"]
        assert any(r["prediction"] is not None for r in history)


def test_leases_of_a_server_that_is_gone_are_released_at_start(client, make_twin, sessions):
    import socket
    import subprocess
    import sys

    from sqlalchemy import select, update

    from app import tables as t
    from app.embedded import release_stale_leases

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no process has now
    host = socket.gethostname()
    owners = {
        make_twin("dead")["id"]: f"{host}:{gone.pid}:embedded-0",
        make_twin("alive")["id"]: f"{host}:{os.getpid()}:embedded-0",
        make_twin("elsewhere")["id"]: f"another-host:{gone.pid}:embedded-0",
        make_twin("worker")["id"]: f"{host}:{gone.pid}:1a2b",  # a `tandem worker`: left to expire
    }
    with sessions.begin() as session:
        for twin_id, owner in owners.items():
            session.execute(
                update(t.Twin)
                .where(t.Twin.id == twin_id)
                .values(lease_owner=owner, lease_expires_at=time.time() + 30)
            )
    assert release_stale_leases(sessions) == 1
    with sessions() as session:
        held = dict(session.execute(select(t.Twin.name, t.Twin.lease_owner)).all())
    assert held["dead"] is None
    assert held["alive"] == owners[2] and held["elsewhere"] == owners[3]
    assert held["worker"] == owners[4]


def test_serve_runs_an_embedded_worker_per_core_up_to_two_unless_told(monkeypatch):
    from pydantic import ValidationError

    from app.embedded import EmbeddedWorkers

    def children(settings: Settings) -> int:  # built, not started
        return len(EmbeddedWorkers(settings, sessions=None).children)

    for cores, expected in ((1, 1), (2, 2), (16, 2)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)))
        assert children(Settings(database_url="sqlite://")) == expected
    assert children(Settings(database_url="sqlite://", embedded_workers=3)) == 3
    with pytest.raises(ValidationError):
        Settings(database_url="sqlite://", embedded_workers=0)
