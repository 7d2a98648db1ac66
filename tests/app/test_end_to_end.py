"""A drifting plant posts over real HTTP to `tandem serve`; the twin's parameters follow it."""

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from app.demo import wait_ready
from twin.plants import Drift, ThermalRCPlant

N = 1600
TOLERANCE = 0.08  # relative error of R: a ramp is followed about one half-life behind
DEADLINE = 180.0  # seconds for the worker to learn everything posted


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = free_port()
    env = {**os.environ, "TANDEM_DATABASE_URL": f"sqlite:///{tmp_path / 'e2e.db'}"}
    cmd = [sys.executable, "-c", "from app.cli import main; main()", "serve", "--port", str(port)]
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=base, timeout=30) as client:
        wait_ready(client, 60.0, proc)
        yield client
    proc.terminate()
    # uvicorn shuts down gracefully, then re-raises the signal it caught
    assert proc.wait(timeout=30) in (0, -15)
    log.close()


@pytest.mark.slow
def test_twin_follows_a_fouling_heat_exchanger_over_http(server):
    # Fouling: R creeps up 30% over the run.
    plant = ThermalRCPlant(jitter=0.3, drift={"R": [Drift.ramp(0.3 / N)]})
    sim = plant.simulate(N, seed=11)
    spec = {**sim.spec_dict(), "name": "hx-e2e"}
    spec["model"]["params"] = {"R": 0.07, "C": 2400.0}  # 40% off the truth
    created = server.post("/twins", json=spec)
    assert created.status_code == 201, created.text
    twin_id = created.json()["id"]
    obs = sim.observations
    halfway_r = None
    for start in range(0, N, 100):
        rows = [
            {
                "ts": float(ts),
                "inputs": {"Q": float(u[0]), "T_amb": float(u[1])},
                "outputs": {"T": float(y[0])},
            }
            for ts, u, y in zip(
                obs.ts[start : start + 100],
                obs.inputs[start : start + 100],
                obs.outputs[start : start + 100],
                strict=True,
            )
        ]
        posted = server.post(f"/twins/{twin_id}/observations", json={"observations": rows})
        assert posted.status_code == 202, posted.text
        assert posted.json()["accepted"] == len(rows)
        if start + 100 == N // 2:
            halfway_r = wait_until_learned(server, twin_id, N // 2)["R"]
    final = wait_until_learned(server, twin_id, N)
    truth_half, truth_end = sim.params["R"][N // 2 - 1], sim.params["R"][-1]
    assert abs(halfway_r - truth_half) / truth_half < TOLERANCE, (halfway_r, truth_half)
    assert abs(final["R"] - truth_end) / truth_end < TOLERANCE, (final["R"], truth_end)
    drift = server.get(f"/twins/{twin_id}/drift").json()
    r = drift["parameters"]["R"]
    assert r["first_guess"] == pytest.approx(0.07)  # the spec's, kept as the first guess
    assert r["relative_change"] > 0  # R crept up since the estimate converged
    twin_rmse = drift["outputs"]["T"]["twin"]["rmse"]
    frozen_rmse = drift["outputs"]["T"]["first_guess"]["rmse"]
    assert twin_rmse < 0.5 * frozen_rmse, (twin_rmse, frozen_rmse)


def wait_until_learned(client: httpx.Client, twin_id: int, seq: int) -> dict:
    deadline = time.monotonic() + DEADLINE
    while True:
        status = client.get(f"/twins/{twin_id}").json()
        if status["watermark"] >= seq:
            return client.get(f"/twins/{twin_id}/parameters").json()["parameters"]
        assert time.monotonic() < deadline, f"calibration stuck at {status['watermark']} < {seq}"
        time.sleep(0.1)
