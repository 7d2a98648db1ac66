"""Chaos benchmark: issue 10's adversarial table, re-run against a real `tandem serve` on SQLite.

    python bench/chaos.py [--rounds 20] [--rows 1 4 ...] [--skip-kill|-table|-sigterm]

Prints what happens today for every row of the issue's table (whoever owns the fix), then 20
rounds of kill -9 at random moments alternating the server and its worker child under 4
ingesting clients (acknowledged rows lost or doubled, calibration resumed after each restart),
SIGTERM in six situations with exit times, and server RSS under oversized requests against its
idle RSS. Requests that would take the machine's memory are watched and the server is killed
at `RSS_GUARD` (reported as such) rather than let run.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

import httpx  # noqa: E402

from bench.chaos_rows import TABLE_ROWS, alive, wait_for  # noqa: E402

START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """`tandem serve` in its own process group on a fixed port and database, restartable."""

    def __init__(self, tmp: Path, **env: str):
        self.tmp, self.port = tmp, free_port()
        self.db = tmp / "chaos.db"
        self.env = {**os.environ, "TANDEM_DATABASE_URL": f"sqlite:///{self.db}", **env}
        self.proc: subprocess.Popen | None = None
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        self.starts = 0

    def start(self, wait: bool = True) -> Serve:
        self.starts += 1
        log = open(self.tmp / f"serve-{self.starts}.log", "wb")  # noqa: SIM115 - the child's
        command = [sys.executable, "-c", "from app.cli import main; main()", "serve"]
        self.proc = subprocess.Popen(
            [*command, "--port", str(self.port)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        if wait and not wait_for(self.ready, START_TIMEOUT, 0.1):
            raise RuntimeError(f"the server did not become ready; see {log.name}")
        return self

    def ready(self) -> dict | None:
        response = self.http.get("/readyz", timeout=5)
        return response.json() if response.status_code == 200 else None

    def up(self) -> bool:
        return self.http.get("/healthz", timeout=5).status_code == 200

    @property
    def pid(self) -> int:
        return self.proc.pid

    def worker_pid(self, reporting: bool = False) -> int | None:
        """The embedded worker's pid (once it reports its heartbeat, if `reporting`)."""
        try:
            worker = self.http.get("/readyz", timeout=5).json().get("worker") or {}
        except (httpx.TransportError, ValueError):
            return None
        return worker.get("pid") if worker.get("reporting") or not reporting else None

    def kill(self) -> None:
        """kill -9 of the whole group (server and worker child)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def rows(self, sql: str, *args):
        with sqlite3.connect(self.db, timeout=30) as conn:
            return conn.execute(sql, args).fetchall()


def table(title: str, header: list[str], body: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in body:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


# -- the issue's table ------------------------------------------------------------------------
def issue_table(tmp: Path, only: list[int] | None = None) -> None:
    body = []
    for i, (name, run) in enumerate(TABLE_ROWS, 1):
        if only and i not in only:
            continue
        case = tmp / f"row-{len(body)}"
        case.mkdir()
        server = Serve(case).start()
        try:
            outcome = run(server)
        except Exception as exc:  # a row that breaks the bench is itself a finding
            outcome = f"bench error: {type(exc).__name__}: {exc}"[:200]
        finally:
            server.kill()
        body.append([name, outcome])
        print(f"  {name}: {outcome}", flush=True)
    table("Issue 10's table, re-run", ["what was done", "what happens now"], body)


# -- kill -9 rounds ---------------------------------------------------------------------------
class Client(threading.Thread):
    """Posts batches of rows with fresh timestamps to its own twin, retrying until each batch
    is acknowledged; remembers what was acknowledged."""

    def __init__(self, server: Serve, twin_id: int, index: int, stop: threading.Event):
        super().__init__(daemon=True)
        self.server, self.twin_id, self.stop = server, twin_id, stop
        self.acked: set[float] = set()
        self.ts = 1_000_000.0 + index
        self.retries = 0

    def run(self) -> None:
        http = httpx.Client(base_url=self.server.http.base_url, timeout=10)
        while not self.stop.is_set():
            rows = []
            for _ in range(20):
                self.ts += 1.0
                y = 20.0 + (self.ts % 17)
                rows.append({"ts": self.ts, "inputs": {"u": 1.0}, "outputs": {"y": y}})
            while not self.stop.is_set():
                try:
                    response = http.post(
                        f"/twins/{self.twin_id}/observations", json={"observations": rows}
                    )
                except httpx.TransportError:
                    self.retries += 1
                    time.sleep(0.1)
                    continue
                if response.status_code == 202:
                    self.acked.update(r["ts"] for r in rows)
                    break
                self.retries += 1
                time.sleep(0.1)
            time.sleep(0.02)
        http.close()


def newest_version(server: Serve) -> int:
    (n,) = server.rows("SELECT coalesce(max(id), 0) FROM versions")[0]
    return n


def kill_rounds(tmp: Path, rounds: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    server = Serve(tmp, TANDEM_LEASE_SECONDS="30").start()
    spec = {
        "inputs": ["u"],
        "outputs": ["y"],
        "model": {"kind": "first_order"},
        "learner": {"method": "pgpe", "seed": 1},
    }
    ids = [
        server.http.post("/twins", json={"name": f"chaos-{i}", **spec}).json()["id"]
        for i in range(4)
    ]
    stop = threading.Event()
    clients = [Client(server, twin_id, i, stop) for i, twin_id in enumerate(ids)]
    for c in clients:
        c.start()
    body = []
    for r in range(rounds):
        time.sleep(rng.uniform(0.5, 3.0))
        target = "server" if r % 2 == 0 else "worker"
        before = newest_version(server)
        killed = time.monotonic()
        if target == "server":
            server.kill()
            server.start(wait=False)
            wait_for(server.up, START_TIMEOUT)
        else:
            pid = server.worker_pid()
            if pid:
                os.kill(pid, signal.SIGKILL)
        old = pid if target == "worker" else None
        back = wait_for(
            lambda o=old: (p := server.worker_pid(reporting=True)) and p != o, START_TIMEOUT, 0.05
        )
        restarted = time.monotonic()
        # the restarted worker must commit a new version (the clients keep sending)
        resumed = wait_for(lambda b=before: newest_version(server) > b, 60, 0.05)
        done = time.monotonic()
        body.append(
            [
                str(r + 1),
                target,
                f"{restarted - killed:.1f}" if back else "never",
                f"{done - restarted:.1f}" if resumed else "> 60",
            ]
        )
        print(f"  round {r + 1}: {body[-1]}", flush=True)
    stop.set()
    for c in clients:
        c.join()
    wait_for(lambda: server.http.get(f"/twins/{ids[0]}").status_code == 200, 30)
    lost = doubled = 0
    for c in clients:
        stored = [
            ts for (ts,) in server.rows("SELECT ts FROM observations WHERE twin_id=?", c.twin_id)
        ]
        lost += len(c.acked - set(stored))
        doubled += len(stored) - len(set(stored))
        seqs = [
            s
            for (s,) in server.rows(
                "SELECT seq FROM observations WHERE twin_id=? ORDER BY seq", c.twin_id
            )
        ]
        doubled += int(seqs != list(range(1, len(seqs) + 1)))  # a gap or a repeat
    acked = sum(len(c.acked) for c in clients)
    server.kill()
    table(
        f"kill -9, {rounds} rounds alternating server and worker child, 4 ingesting clients",
        ["round", "killed", "new worker reporting after (s)", "next version after that (s)"],
        body,
    )
    late = [b for b in body if b[3] == "> 60" or float(b[3]) >= 5.0]
    print(
        f"acknowledged rows: {acked}, lost: {lost}, doubled: {doubled}, client retries: "
        f"{sum(c.retries for c in clients)}; rounds resumed in >= 5 s: {len(late)}"
    )


# -- SIGTERM ----------------------------------------------------------------------------------
def sigterm(tmp: Path) -> None:
    body = []
    for target in ("main", "group"):
        for state in ("idle", "busy", "dead"):
            case = tmp / f"term-{target}-{state}"
            case.mkdir()
            env = {"TANDEM_CALIBRATION_BUDGET": "0", "TANDEM_CALIBRATION_BATCH": "4096"}
            server = Serve(case, **env).start()
            worker = server.worker_pid()
            if state == "busy":
                busy_twin(server)
            elif state == "dead":
                os.kill(worker, signal.SIGKILL)
                wait_for(lambda w=worker: not alive(w), 5)
            started = time.monotonic()
            if target == "main":
                os.kill(server.pid, signal.SIGTERM)
            else:
                os.killpg(server.pid, signal.SIGTERM)
            try:
                server.proc.wait(timeout=60)
                took = f"{time.monotonic() - started:.1f}"
            except subprocess.TimeoutExpired:
                took = "> 60 (killed)"
                server.kill()
            leases = server.rows("SELECT count(*) FROM twins WHERE lease_owner IS NOT NULL")[0][0]
            gone = wait_for(lambda w=worker: not alive(w), 5)
            body.append([target, state, took, str(leases), "yes" if gone else "no"])
            print(f"  SIGTERM {body[-1]}", flush=True)
    table(
        "SIGTERM (target: under 10 s)",
        ["signal to", "worker", "exit after (s)", "leases left", "worker gone"],
        body,
    )


def busy_twin(server: Serve) -> None:
    spec = {
        "inputs": ["u"],
        "outputs": ["y"],
        "model": {"kind": "first_order"},
        "learner": {"method": "pgpe", "seed": 1},
    }
    twin_id = server.http.post("/twins", json={"name": "busy", **spec}).json()["id"]
    rows = [
        {"ts": float(i), "inputs": {"u": 1.0}, "outputs": {"y": float(i % 13)}} for i in range(6000)
    ]
    for start in range(0, len(rows), 2000):
        body = {"observations": rows[start : start + 2000]}
        server.http.post(f"/twins/{twin_id}/observations", json=body)
    wait_for(lambda: server.rows("SELECT lease_owner FROM twins WHERE lease_owner IS NOT NULL"), 30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--rows", type=int, nargs="*", help="only these rows of the table (1-13)")
    parser.add_argument("--skip-table", action="store_true")
    parser.add_argument("--skip-kill", action="store_true")
    parser.add_argument("--skip-sigterm", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tandem-chaos-") as tmp:
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"chaos on {os.cpu_count()} cpus, load average {load}, logs in {tmp}", flush=True)
        if not args.skip_table:
            issue_table(Path(tmp), args.rows)
        if not args.skip_kill:
            (Path(tmp) / "kill").mkdir()
            kill_rounds(Path(tmp) / "kill", args.rounds)
        if not args.skip_sigterm:
            sigterm(Path(tmp))
        print("load average at the end: " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
