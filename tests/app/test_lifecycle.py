"""The supervised worker and shutdown, with real processes and real signals: `tandem serve` runs
as a subprocess (in its own process group) on a free port of a SQLite database."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select

from app import tables as t
from tests.app.conftest import SPEC, thermal_rows

START_TIMEOUT = 90.0  # a cold start imports torch twice (server and worker child)
EXIT_LIMIT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


class Server:
    """`tandem serve` in its own session (so the group can be signalled), with helpers."""

    def __init__(self, tmp_path: Path, **env: str):
        self.port = free_port()
        self.db = tmp_path / "tandem.db"
        self.log = open(tmp_path / "serve.log", "w+b")  # noqa: SIM115 - closed in stop()
        environ = {
            **os.environ,
            "TANDEM_DATABASE_URL": f"sqlite:///{self.db}",
            "TANDEM_HEARTBEAT_TIMEOUT": "3",
            **env,
        }
        command = [sys.executable, "-c", "from app.cli import main; main()", "serve"]
        self.proc = subprocess.Popen(
            [*command, "--port", str(self.port)],
            env=environ,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)
        wait_for(self.ready, START_TIMEOUT, "the server and its worker to be ready", 0.2)

    def ready(self) -> dict | None:
        try:
            response = self.http.get("/readyz")
        except httpx.TransportError:
            assert self.proc.poll() is None, self.output()
            return None
        return response.json() if response.status_code == 200 else None

    def worker_pid(self) -> int:
        return self.http.get("/readyz").json()["worker"]["pid"]

    def watermark(self, twin_id: int) -> int:
        return self.http.get(f"/twins/{twin_id}").json()["watermark"]

    def leases(self) -> list[str]:
        engine = create_engine(f"sqlite:///{self.db}")
        try:
            with engine.connect() as conn:
                return list(
                    conn.scalars(select(t.Twin.lease_owner).where(t.Twin.lease_owner.is_not(None)))
                )
        finally:
            engine.dispose()

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


@pytest.fixture
def serve(tmp_path):
    servers = []

    def start(**env) -> Server:
        servers.append(Server(tmp_path, **env))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def post_twin(server: Server, rows: int, name: str = "hx", **spec) -> int:
    twin_id = server.http.post("/twins", json={"name": name, **SPEC, **spec}).json()["id"]
    data = thermal_rows(rows)
    for start in range(0, rows, 1000):
        body = {"observations": data[start : start + 1000]}
        assert server.http.post(f"/twins/{twin_id}/observations", json=body).status_code == 202
    return twin_id


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_calibration_resumes(serve):
    server = serve()
    first = server.worker_pid()
    twin_id = post_twin(server, 40)
    wait_for(lambda: server.watermark(twin_id) == 40, 60, "the first observations learned")

    os.kill(first, signal.SIGKILL)
    body = wait_for(
        lambda: (r := server.http.get("/readyz")).status_code == 503 and r.json(),
        10,
        "/readyz to notice the silent worker",
    )
    assert "not reported" in body["detail"]
    wait_for(lambda: server.ready() and server.worker_pid() != first, 60, "a new worker")
    assert server.ready()["worker"]["restarts"] == 1
    assert "\nworker_restarts_total 1.0\n" in server.http.get("/metrics").text
    data = thermal_rows(80)[40:]
    assert server.http.post(f"/twins/{twin_id}/observations", json={"observations": data})
    wait_for(lambda: server.watermark(twin_id) == 80, 30, "calibration to resume")
    assert not alive(first)


def make_busy(server: Server) -> int:
    """A backlog whose one step takes seconds: wait until the worker holds its lease."""
    twin_id = post_twin(server, 6000, name="slow")
    wait_for(lambda: server.leases(), 30, "the worker to claim the slow twin")
    return twin_id


@pytest.mark.slow
@pytest.mark.parametrize("target", ["main", "group"])
@pytest.mark.parametrize("state", ["idle", "busy", "dead"])
def test_sigterm_ends_the_service_within_ten_seconds(serve, target, state):
    # no budget, big batches: a busy worker is seconds into one step when the signal comes
    server = serve(TANDEM_CALIBRATION_BUDGET="0", TANDEM_CALIBRATION_BATCH="4096")
    worker = server.worker_pid()
    workers = server.ready()["worker"]["pids"]
    if state == "busy":
        make_busy(server)
    elif state == "dead":
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: not alive(worker), 5, "the worker to die")
    started = time.monotonic()
    if target == "main":
        os.kill(server.proc.pid, signal.SIGTERM)
    else:
        os.killpg(server.proc.pid, signal.SIGTERM)
    try:
        server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running 30 s after SIGTERM:\n{server.output()}")
    took = time.monotonic() - started
    assert took < EXIT_LIMIT, f"{took:.1f} s\n{server.output()}"
    assert server.leases() == []
    wait_for(lambda: not any(map(alive, workers)), 5, "the workers to be gone")
    assert "Traceback" not in server.output()


@pytest.mark.slow
def test_embedded_workers_share_the_twins_and_survive_one_death(serve):
    server = serve(TANDEM_EMBEDDED_WORKERS="2")
    pids = server.ready()["worker"]["pids"]
    assert len(set(pids)) == 2 and all(map(alive, pids))
    ids = [
        server.http.post("/twins", json={"name": f"hx-{k}", **SPEC}).json()["id"] for k in range(8)
    ]
    learned = 0

    def feed() -> None:  # 20 more observations to every twin, and wait until all are learned
        nonlocal learned
        rows = thermal_rows(learned + 20)[learned:]
        for twin_id in ids:
            body = {"observations": rows}
            assert server.http.post(f"/twins/{twin_id}/observations", json=body).status_code == 202
        learned += 20
        for twin_id in ids:
            wait_for(
                lambda i=twin_id: server.watermark(i) == learned, 60, f"twin {twin_id} learned"
            )

    def children() -> set[str]:
        return {owner.rsplit(":", 1)[1].rsplit("-", 1)[0] for owner in server.leases()}

    # sticky leases, a share each: the child that claimed everything first sheds half of it
    # within a second of seeing the other, which claims that half as its work arrives
    for _ in range(10):
        feed()
        if children() == {"embedded-0", "embedded-1"}:
            break
    assert children() == {"embedded-0", "embedded-1"}

    os.kill(pids[1], signal.SIGKILL)
    wait_for(
        lambda: (ready := server.ready()) and ready["worker"]["pids"][1] != pids[1],
        60,
        "the dead child replaced",
    )
    assert server.ready()["worker"]["pids"][0] == pids[0] and alive(pids[0])
    assert server.ready()["worker"]["restarts"] == 1
    feed()
    assert "Traceback" not in server.output()


@pytest.mark.slow
def test_every_post_answered_202_before_a_kill_is_stored(serve):
    """Posts race from several clients (sharing group commits) when the server is killed with
    SIGKILL: every post answered 202 before the kill is in the database, whole."""
    server = serve()
    ids = [
        server.http.post("/twins", json={"name": f"k{k}", **SPEC}).json()["id"] for k in range(4)
    ]
    acknowledged: list[tuple[int, dict]] = []
    stop = threading.Event()

    def client(k: int) -> None:
        with httpx.Client(base_url=server.http.base_url, timeout=10) as http:
            for n in range(10_000):
                if stop.is_set():
                    return
                body = {"observations": thermal_rows(5, start=1_000.0 + 1e6 * k + 5 * n)}
                try:
                    response = http.post(f"/twins/{ids[k % 4]}/observations", json=body)
                except httpx.TransportError:
                    return
                if response.status_code == 202:
                    acknowledged.append((ids[k % 4], response.json()))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(acknowledged) >= 200, 60, "posts to be acknowledged")
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    stop.set()
    for thread in threads:
        thread.join()
    engine = create_engine(f"sqlite:///{server.db}")
    try:
        with engine.connect() as conn:
            seqs = {
                twin_id: set(
                    conn.scalars(select(t.Observation.seq).where(t.Observation.twin_id == twin_id))
                )
                for twin_id in ids
            }
    finally:
        engine.dispose()
    for twin_id, answer in acknowledged:
        assert answer["accepted"] == 5
        assert set(range(answer["first_seq"], answer["last_seq"] + 1)) <= seqs[twin_id]
