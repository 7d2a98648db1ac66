"""`tandem demo`: the service on its embedded default, fed over real HTTP by a simulated heat
exchanger whose thermal resistance creeps up as it fouls, while the twin follows it."""

from __future__ import annotations

import math
import os
import threading
import time

import httpx
import uvicorn

from app.config import Settings
from app.db import describe_database
from app.main import create_app
from twin.plants import Drift, ThermalRCPlant

DEMO_TWIN = "demo-heat-exchanger"
R0, C0 = 0.05, 4000.0  # K/W, J/K: a 200 s time constant
FOULING = 0.3  # R grows by 30% ...
FOULING_OBSERVATIONS = 3000  # ... over this many observations, then keeps creeping
DT = 10.0  # nominal seconds between the plant's observations
BACKLOG = 7 * 86400.0  # the plant's clock starts this far in the past


def demo_plant(now: float | None = None) -> ThermalRCPlant:
    """The plant's clock starts a week before `now`: the demo replays that week at `--rate`
    observations a second, then streams one observation per `DT` as a sensor would, so no
    timestamp is ever ahead of the clock (the service refuses those far ahead)."""
    ramp = Drift.ramp(FOULING / FOULING_OBSERVATIONS)
    t0 = (time.time() if now is None else now) - BACKLOG
    return ThermalRCPlant(R=R0, C=C0, dt=DT, jitter=0.3, drift={"R": [ramp]}, t0=t0)


SEED = 1  # of the plant's noise and jitter


def run_demo(settings: Settings, host: str, port: int, rate: float, duration: float) -> None:
    app = create_app(settings)
    app.state.listen_host = host  # authentication is on beyond loopback (docs/security.md)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="http", daemon=True)
    thread.start()
    while not server.started:  # not another service that happens to hold the port
        if not thread.is_alive():
            raise RuntimeError(f"could not listen on {host}:{port} (is the port in use?)")
        time.sleep(0.02)
    base = f"http://{host}:{port}"
    print(f"Tandem on {base}, API docs at {base}/docs")
    print(f"database: {describe_database(settings.database_url)}")
    try:
        key = os.environ.get("TANDEM_API_KEY")  # needed once authentication is on
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        with httpx.Client(base_url=base, timeout=30.0, headers=headers) as client:
            wait_ready(client)
            now = time.time()
            twin_id = _fresh_twin(client, demo_plant(now))
            print(f"twin {DEMO_TWIN!r} is id {twin_id}: curl {base}/twins/{twin_id}/drift")
            _feed(client, twin_id, demo_plant(now), rate, duration)
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True
        time.sleep(0.5)


def wait_ready(
    client: httpx.Client, timeout: float = 60.0, process=None, reporting: bool = False
) -> None:
    """Poll `/readyz` until the service answers 200, and with `reporting` until every embedded
    calibration worker has reported too (past its imports: a child that is starting counts as
    ready until its heartbeat limit, and its imports take a core for seconds); raise
    RuntimeError after `timeout` s or as soon as `process` (a `subprocess.Popen` running it, if
    any) has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            response = client.get("/readyz")
            worker = response.json().get("worker") if response.status_code == 200 else None
            if response.status_code == 200 and (
                not reporting or worker is None or worker["reporting"]
            ):
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the service was not ready in {timeout:.0f} s")


def _fresh_twin(client: httpx.Client, plant: ThermalRCPlant) -> int:
    for twin in client.get("/twins").json():
        if twin["name"] == DEMO_TWIN:
            client.delete(f"/twins/{twin['id']}").raise_for_status()
    spec = plant.spec_dict()
    spec["name"] = DEMO_TWIN
    # A first guess 40% off the truth: the twin has to find the plant, then follow its drift.
    spec["model"]["params"] = {"R": R0 * 1.4, "C": C0 * 0.6}
    spec["model"]["bounds"] = {"R": [0.005, 0.5], "C": [100.0, 100000.0]}
    response = client.post("/twins", json=spec)
    response.raise_for_status()
    return response.json()["id"]


def _feed(client: httpx.Client, twin_id: int, plant, rate: float, duration: float) -> None:
    batch = max(1, round(rate / 5))
    started = last_print = time.monotonic()
    sent = 0
    names = list(plant.true_params(0, seed=SEED))  # the physical parameters: R, C
    print(
        f"{'observations':>12} "
        + " ".join(f"{'true ' + n:>9} {'twin ' + n:>9}" for n in names)
        + f" {'rmse':>7} {'uncal.':>7} {'lag':>5} {'alarms':>6}"
    )
    for obs in plant.stream(batch=batch, seed=SEED):
        rows = [
            {
                "ts": float(ts),
                "inputs": dict(zip(("Q", "T_amb"), map(float, u), strict=True)),
                "outputs": {"T": float(y[0])},
            }
            for ts, u, y in zip(obs.ts, obs.inputs, obs.outputs, strict=True)
        ]
        client.post(
            f"/twins/{twin_id}/observations", json={"observations": rows}
        ).raise_for_status()
        sent += len(rows)
        now = time.monotonic()
        if now - last_print >= 2.0:
            last_print = now
            _print_status(client, twin_id, sent, plant.true_params(sent - 1, seed=SEED))
        if duration and now - started >= duration:
            return
        # At `rate` while replaying the past; in real time once the plant's clock is now.
        ahead = float(obs.ts[-1]) + DT - time.time()
        time.sleep(max(0.0, started + sent / rate - time.monotonic(), ahead))


def _print_status(client: httpx.Client, twin_id: int, sent: int, truth: dict[str, float]) -> None:
    params = client.get(f"/twins/{twin_id}/parameters").json()
    drift = client.get(f"/twins/{twin_id}/drift").json()
    errors = drift.get("outputs", {}).get("T", {})
    rmse = (errors.get("twin") or {}).get("rmse")
    frozen = (errors.get("first_guess") or {}).get("rmse")
    values = params.get("parameters", {})
    pairs = " ".join(f"{_num(true)} {_num(values.get(n))}" for n, true in truth.items())
    print(
        f"{sent:>12} {pairs} {_fmt(rmse):>7} {_fmt(frozen):>7} "
        f"{drift['calibration_lag']['observations']:>5} {len(drift.get('events', [])):>6}",
        flush=True,
    )


def _num(x: float | None) -> str:
    """9 characters: 4 significant digits, whatever the parameter's scale (R 0.05, C 4000)."""
    return f"{'—':>9}" if x is None or not math.isfinite(x) else f"{x:>9.4g}"


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"
