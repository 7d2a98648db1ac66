"""Ingestion benchmark: observations per second through the real HTTP API of `tandem serve`
(embedded SQLite, embedded calibrator on), against raw sqlite3 inserts of the same rows.

    python bench/ingest.py [--quick] [--group-commit on|off]

Prints one table: HTTP and raw rows/s and their ratio (target >= 25%), the calibration lag
under that load and how long the calibrator takes to catch up, and p50/p99 predict latency.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402
import torch  # noqa: E402

from app.config import Settings  # noqa: E402
from app.db import make_engine, upgrade  # noqa: E402
from app.demo import wait_ready  # noqa: E402
from bench.report import print_targets  # noqa: E402
from twin.plants import FirstOrderPlant  # noqa: E402

BATCH = 1_000  # observations per POST and per raw transaction
WARMUP_BATCHES = 2  # posted before the clock starts (first-request imports, caches)
TARGET = 0.25  # HTTP rows/s as a fraction of raw sqlite3 rows/s
RAW_REPEATS = 3  # the storage limit is the best of these runs, each on a fresh file
LAG_POLL_S = 0.25  # seconds between GET /twins/{id} polls during the load
CATCH_UP_TIMEOUT_S = 300.0
READY_TIMEOUT_S = 120.0
JSON = {"content-type": "application/json"}
INSERT = (
    "INSERT INTO observations (twin_id, seq, ts, inputs, outputs, received_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)


# -- workload ---------------------------------------------------------------------------------
def workload(n_batches: int) -> tuple[list[bytes], list[list[tuple]]]:
    """The same first_order plant data as pre-serialized HTTP bodies and as raw table rows
    (twin_id, seq, ts, inputs JSON, outputs JSON, received_at), one list per batch."""
    obs = FirstOrderPlant().simulate(n_batches * BATCH).observations
    ts, u, y = obs.ts.tolist(), obs.inputs[:, 0].tolist(), obs.outputs[:, 0].tolist()
    bodies, rows = [], []
    now = time.time()
    for b in range(n_batches):
        span = range(b * BATCH, (b + 1) * BATCH)
        batch = [{"ts": ts[k], "inputs": {"u": u[k]}, "outputs": {"y": y[k]}} for k in span]
        bodies.append(orjson.dumps({"observations": batch}))
        rows.append(
            [(1, k + 1, ts[k], f"[{u[k]!r}]", f"[{y[k]!r}]", now) for k in span]  # seq from 1
        )
    return bodies, rows


# -- the storage limit ------------------------------------------------------------------------
def raw_sqlite_rate(path: Path, batches: list[list[tuple]]) -> tuple[float, str]:
    """Rows/s of sqlite3 `executemany`, one transaction per batch, into the app's own schema
    (made by its migrations) on a connection with the app's pragmas; also the pragmas seen."""
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    try:
        upgrade(engine)
        raw = engine.raw_connection()  # the engine's connect hook has set the app's pragmas
        conn: sqlite3.Connection = raw.driver_connection
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = conn.execute("PRAGMA synchronous").fetchone()[0]
        conn.execute("INSERT INTO twins (id, name, spec, created_at) VALUES (1, 'raw', '{}', 0)")
        conn.commit()
        start = time.perf_counter()
        for rows in batches:
            conn.executemany(INSERT, rows)
            conn.commit()
        elapsed = time.perf_counter() - start
        raw.close()
    finally:
        engine.dispose()
    names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
    return len(batches) * BATCH / elapsed, f"journal_mode={mode}, synchronous={names[sync]}"


# -- the server -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    tmp: Path, port: int, log, group_commit: str | None = None, workers: int | None = None
) -> subprocess.Popen:
    """`tandem serve` on a fresh SQLite file, default settings otherwise (worker on), with
    `TANDEM_GROUP_COMMIT` and `TANDEM_EMBEDDED_WORKERS` set where given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
    env["TANDEM_DATABASE_URL"] = f"sqlite:///{tmp / 'bench.db'}"
    if group_commit is not None:
        env["TANDEM_GROUP_COMMIT"] = "true" if group_commit == "on" else "false"
    if workers is not None:
        env["TANDEM_EMBEDDED_WORKERS"] = str(workers)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-c", "from app.cli import main; main()", "serve"]
    command += ["--port", str(port)]
    return subprocess.Popen(command, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc), for the load's CPU budget."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- HTTP measurements ------------------------------------------------------------------------
def create_twin(client: httpx.Client) -> int:
    spec = {"name": "bench-ingest", **FirstOrderPlant().spec_dict()}
    response = client.post("/twins", json=spec)
    response.raise_for_status()
    return response.json()["id"]


def lag(client: httpx.Client, twin_id: int) -> tuple[int, float, int]:
    """(observations, seconds) of the twin's calibration lag, and its latest version."""
    response = client.get(f"/twins/{twin_id}")
    response.raise_for_status()
    status = response.json()
    return (
        status["calibration_lag"]["observations"],
        status["calibration_lag"]["seconds"],
        status["version"],
    )


@dataclass
class LagPoller:
    """Polls the twin's calibration lag from its own connection while the load runs."""

    base_url: str
    twin_id: int
    samples: list[tuple[int, float]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, name="lag-poller", daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=60.0) as client:
            while not self.stop.wait(LAG_POLL_S):
                self.samples.append(lag(client, self.twin_id)[:2])


def post_all(client: httpx.Client, twin_id: int, bodies: list[bytes]) -> None:
    url = f"/twins/{twin_id}/observations"
    for body in bodies:
        response = client.post(url, content=body, headers=JSON)
        if response.status_code != 202 or response.json()["accepted"] != BATCH:
            raise RuntimeError(f"POST observations: {response.status_code} {response.text[:200]}")


def wait_caught_up(client: httpx.Client, twin_id: int, timeout: float) -> float | None:
    """Seconds until the calibration lag is 0 observations, or None past the deadline."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if lag(client, twin_id)[0] == 0:
            return time.monotonic() - start
        time.sleep(0.1)
    return None


def predict_latency(client: httpx.Client, twin_id: int, horizon: int, n: int) -> list[float]:
    """Milliseconds of `n` predict requests of `horizon` steps, after two untimed ones."""
    body = orjson.dumps({"inputs": [{"u": 1.0}] * horizon, "dt": 1.0})
    url = f"/twins/{twin_id}/predict"
    times = []
    for k in range(n + 2):
        start = time.perf_counter()
        response = client.post(url, content=body, headers=JSON)
        elapsed = time.perf_counter() - start
        if response.status_code != 200 or len(response.json()["outputs"]) != horizon:
            raise RuntimeError(f"POST predict: {response.status_code} {response.text[:200]}")
        if k >= 2:
            times.append(1e3 * elapsed)
    return times


def http_run(
    client: httpx.Client, pid: int, base: str, bodies: list[bytes], n_predict: int
) -> tuple[float, list[tuple[str, str]]]:
    """The HTTP part: load with lag polling, catch-up, predict latency; the load's rows/s and
    the table's rows."""
    twin_id = create_twin(client)
    post_all(client, twin_id, bodies[:WARMUP_BATCHES])
    timed = bodies[WARMUP_BATCHES:]
    poller = LagPoller(base, twin_id)
    poller.thread.start()
    cpu0, client_cpu0 = cpu_seconds(pid), time.process_time()
    start = time.perf_counter()
    try:
        post_all(client, twin_id, timed)
        elapsed = time.perf_counter() - start
        cpu, client_cpu = cpu_seconds(pid) - cpu0, time.process_time() - client_cpu0
        end_obs, end_s, _ = lag(client, twin_id)
    finally:
        poller.stop.set()
        poller.thread.join()
    caught_up = wait_caught_up(client, twin_id, CATCH_UP_TIMEOUT_S)
    samples = [*poller.samples, (end_obs, end_s)]
    rate = len(timed) * BATCH / elapsed
    max_obs, max_s = max(s[0] for s in samples), max(s[1] for s in samples)
    out = [
        ("load wall time", f"{elapsed:>10.2f} s"),
        ("server CPU during load", f"{cpu:>10.2f} s  ({cpu / elapsed:.2f} cores busy)"),
        ("client CPU during load", f"{client_cpu:>10.2f} s  (bench process, poller included)"),
        ("lag max (obs / s)", f"{max_obs:>10,}  / {max_s:.1f} s  ({len(samples)} polls)"),
        ("lag at end of load (obs / s)", f"{end_obs:>10,}  / {end_s:.1f} s"),
        (
            "catch-up after load",
            f"{caught_up:>10.1f} s"
            if caught_up is not None
            else f"not caught up in {CATCH_UP_TIMEOUT_S:.0f} s",
        ),
    ]
    version = lag(client, twin_id)[2]
    if version < 1:
        return rate, [*out, ("predict", "skipped: the twin has no calibrated version")]
    busy = "" if caught_up is not None else ", calibrator still busy"
    for horizon in (10, 100):
        ms = predict_latency(client, twin_id, horizon, n_predict)
        p50, p99 = np.percentile(ms, [50, 99])
        out.append(
            (
                f"predict horizon {horizon} p50 / p99",
                f"{p50:>10.2f} ms / {p99:.2f} ms  ({n_predict} requests, version {version}{busy})",
            )
        )
    return rate, out


# -- report -----------------------------------------------------------------------------------
def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    print(title)
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")
    print()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 batches, 50 predicts each")
    parser.add_argument(
        "--group-commit",
        choices=("on", "off"),
        help="TANDEM_GROUP_COMMIT for the server (default: the service's, on for SQLite)",
    )
    parser.add_argument(
        "--embedded-workers", type=int, help="TANDEM_EMBEDDED_WORKERS for the server (default 1)"
    )
    args = parser.parse_args(argv)
    n_batches, n_predict = (20, 50) if args.quick else (100, 200)
    bodies, raw_rows = workload(WARMUP_BATCHES + n_batches)
    threads = Settings.model_fields["torch_threads"].default
    print_table(
        "Machine",
        [
            ("cores", f"{os.cpu_count()} ({len(os.sched_getaffinity(0))} usable)"),
            ("python", f"{platform.python_version()} ({platform.machine()})"),
            ("torch", f"{torch.__version__}, server torch threads {threads} (default)"),
            ("sqlite", sqlite3.sqlite_version),
            ("load average", " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1, 5, 15 min)"),
            ("group commit", args.group_commit or "default (on for SQLite)"),
            ("embedded workers", str(args.embedded_workers or "default (1)")),
        ],
    )
    with tempfile.TemporaryDirectory(prefix="tandem-bench-") as tmp_name:
        tmp = Path(tmp_name)
        raw = [
            raw_sqlite_rate(tmp / f"raw{k}.db", raw_rows[WARMUP_BATCHES:])
            for k in range(RAW_REPEATS)
        ]
        raw_rate, pragmas = max(raw)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log_path = tmp / "server.log"
        with open(log_path, "wb") as log:
            server = start_server(tmp, port, log, args.group_commit, args.embedded_workers)
        try:
            with httpx.Client(base_url=base, timeout=60.0) as client:
                wait_ready(client, READY_TIMEOUT_S, server, reporting=True)
                http_rate, rows = http_run(client, server.pid, base, bodies, n_predict)
        except BaseException:
            print("server log (tail):\n" + log_path.read_text(errors="replace")[-4000:])
            raise
        finally:
            stop_server(server)
    ratio = http_rate / raw_rate
    print_table(
        f"Ingestion: {n_batches} batches of {BATCH} observations, first_order twin",
        [
            ("HTTP POST /observations", f"{http_rate:>10,.0f} rows/s  (one keep-alive client)"),
            (
                "raw sqlite3 executemany",
                f"{raw_rate:>10,.0f} rows/s  (best of {RAW_REPEATS}; {pragmas})",
            ),
            ("HTTP / raw", f"{100 * ratio:>10.1f} %"),
            *rows,
        ],
    )
    print_targets([(f"HTTP ingestion >= 25% of raw sqlite3 ({100 * ratio:.1f}%)", ratio >= TARGET)])


if __name__ == "__main__":
    main()
