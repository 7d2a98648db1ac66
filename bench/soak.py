"""Soak: the resident memory (RSS) of the API and of its calibration worker over a long run at
fleet load, with retention removing observations throughout.

    python bench/soak.py [--twins 1000] [--minutes 30] [--keep 600] [--sample 60]

Starts `tandem serve` (embedded default: SQLite and the worker child process) on a fresh
database with `TANDEM_OBSERVATION_RETENTION_SECONDS=--keep`, creates N `first_order` twins and
posts each a batch of 10 one-second observations every 10 s over real HTTP, staggered (N
observations/s in all), as the fleet workload does. Every --sample seconds it prints both
processes' RSS (from /proc), the observations stored, what retention removed so far and the
calibration lag; at the end a table and the verdict: each process's RSS over the second half
against its RSS at the half-way mark (the target: within 10%). The reference, measured in the
same run, is the RSS of both processes once the twins exist, before the load.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

import httpx  # noqa: E402
import orjson  # noqa: E402

BATCH, PERIOD = 10, 10.0  # observations per post (one second apart), seconds between posts
SPEC = {"inputs": ["u"], "outputs": ["y"], "model": {"kind": "first_order"}}


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def worker_pid(api: int) -> int | None:
    """The embedded worker: the API's child process that is not multiprocessing's tracker."""
    try:
        children = Path(f"/proc/{api}/task/{api}/children").read_text().split()
    except OSError:
        return None
    for pid in map(int, children):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"resource_tracker" not in cmdline:
            return pid
    return None


def stored(db: str) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return conn.execute("SELECT count(*) FROM observations").fetchone()[0]


def plant_rows(i: int, k0: int, t0: float) -> list[dict]:
    """Twin i's observations k0..k0+9: a first-order response to a slow square wave."""
    tau, gain = 10.0 + i % 7, 1.0 + 0.1 * (i % 5)
    rows = []
    for k in range(k0, k0 + BATCH):
        u = 1.0 if (k // 60) % 2 else 0.0
        y = gain * u * (1 - math.exp(-(k % 60) / tau)) + 0.01 * math.sin(k * 1.7 + i)
        rows.append({"ts": t0 + k, "inputs": {"u": u}, "outputs": {"y": y}})
    return rows


async def load(url: str, ids: list[int], seconds: float, t0: float, failed: list) -> None:
    """Each twin posts every PERIOD s, twins staggered evenly over the period."""
    n = len(ids)
    start = time.monotonic()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
        pending: set[asyncio.Task] = set()

        async def post(i: int, k0: int) -> None:
            body = orjson.dumps({"observations": plant_rows(i, k0, t0)})
            try:
                response = await http.post(
                    f"/twins/{ids[i]}/observations",
                    content=body,
                    headers={"content-type": "application/json"},
                )
                if response.status_code != 202:
                    failed.append(response.status_code)
            except httpx.HTTPError as e:
                failed.append(type(e).__name__)

        step = 0
        while (elapsed := time.monotonic() - start) < seconds:
            i = step % n
            due = (step // n) * PERIOD + i * PERIOD / n
            if due > elapsed:
                await asyncio.sleep(due - elapsed)
            task = asyncio.create_task(post(i, (step // n) * BATCH))
            pending.add(task)
            task.add_done_callback(pending.discard)
            step += 1
        await asyncio.gather(*pending)


def lag(http: httpx.Client) -> tuple[float, float]:
    twins = http.get("/twins", params={"limit": 10_000}).json()
    seconds = sorted(t["calibration_lag"]["seconds"] for t in twins)
    return statistics.median(seconds), seconds[int(0.95 * (len(seconds) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--twins", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--keep", type=float, default=600.0, help="retention, seconds of ts")
    parser.add_argument("--sample", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--port", type=int, default=8931)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="tandem-soak-")
    db = f"{tmp}/tandem.db"
    env = {
        **os.environ,
        "TANDEM_DATABASE_URL": f"sqlite:///{db}",
        "TANDEM_OBSERVATION_RETENTION_SECONDS": str(args.keep),
        "TANDEM_RETENTION_INTERVAL": "30",
        "TANDEM_RATE_LIMIT": "0",
    }
    tandem = str(Path(sys.executable).with_name("tandem"))
    command = [tandem, "serve", "--port", str(args.port)]
    api = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{args.port}"
    rows: list[tuple] = []
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline and api.poll() is None, "serve did not start"
                time.sleep(0.5)
            ids = [
                http.post("/twins", json={"name": f"soak-{i:05d}", **SPEC}).json()["id"]
                for i in range(args.twins)
            ]
            worker = worker_pid(api.pid)
            reference = (rss_mb(api.pid), rss_mb(worker) if worker else None)
            print(
                f"{args.twins} twins; RSS before the load: API {reference[0]:.0f} MB, "
                f"worker {reference[1] or float('nan'):.0f} MB",
                flush=True,
            )
            print(
                "| minute | API RSS MB | worker RSS MB | observations stored | "
                "failed posts | lag p50 / p95 s |"
            )
            print("|---|---|---|---|---|---|", flush=True)
            t0 = time.time() - 20  # ts = t0 + k tracks the clock, k one a second
            failed: list = []
            seconds = args.minutes * 60
            runner = asyncio.new_event_loop()
            thread = threading.Thread(
                target=runner.run_until_complete,
                args=(load(url, ids, seconds, t0, failed),),
                daemon=True,
            )
            started = time.monotonic()
            thread.start()
            while thread.is_alive():
                thread.join(timeout=args.sample)
                minute = (time.monotonic() - started) / 60
                worker = worker_pid(api.pid) or worker
                p50, p95 = lag(http)
                row = (minute, rss_mb(api.pid), rss_mb(worker), stored(db), p50, p95)
                rows.append(row)
                print(
                    f"| {row[0]:.1f} | {row[1]:.0f} | {row[2] or float('nan'):.0f} | "
                    f"{row[3]} | {len(failed)} | {p50:.1f} / {p95:.1f} |",
                    flush=True,
                )
        verdict(rows, failed)
    finally:
        api.send_signal(signal.SIGTERM)
        try:
            api.wait(30)
        except subprocess.TimeoutExpired:
            api.kill()


def verdict(rows: list[tuple], failed: list) -> None:
    half = [r for r in rows if r[0] >= rows[-1][0] / 2]
    print(f"failed posts: {len(failed)}")
    for k, name in ((1, "API"), (2, "worker")):
        base = half[0][k]
        values = [r[k] for r in half if r[k] is not None]
        if base is None or not values:
            print(f"{name}: no samples")
            continue
        spread = max(abs(v - base) for v in values) / base
        status = "flat" if spread <= 0.10 else "NOT flat"
        print(
            f"{name} RSS over the second half: {min(values):.0f}-{max(values):.0f} MB, "
            f"at most {100 * spread:.1f}% from {base:.0f} MB at the half-way mark: {status} "
            "(target: within 10%)"
        )


if __name__ == "__main__":
    main()
