"""Soak: the resident memory (RSS) of the API and of its calibration worker over a long run at
fleet load, with retention removing observations throughout.

    python bench/soak.py [--twins 1000] [--minutes 30] [--keep 600] [--keep-versions 60]
        [--sample 60] [--series 20]

Starts `tandem serve` (embedded default: SQLite and the worker child processes) on a fresh
database with `TANDEM_OBSERVATION_RETENTION_SECONDS=--keep` and
`TANDEM_VERSION_RETENTION=--keep-versions`, creates N `first_order` twins and posts each a batch
of 10 one-second observations every 10 s over real HTTP, staggered (N observations/s in all):
the workload of `bench/fleet.py` (its `Workload`, with times that track the clock, so that
retention by age removes throughout). Every --sample seconds it reads the downsampled series
of --series twins (as a dashboard does: that builds series blocks, which retention then
removes) and prints the RSS (from /proc) of the API and of its embedded workers together,
the rows of every table that grows, the failed posts and the calibration lag; at the end the
verdict: the RSS over the second half against the RSS at the half-way mark (the target:
within 10%). The reference, measured in the same run, is the RSS once the twins exist,
before the load.
"""

from __future__ import annotations

import argparse
import asyncio
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

from bench.fleet import (  # noqa: E402
    BURST_CONCURRENCY,
    PERIOD,
    TIMEOUT_S,
    Poster,
    Workload,
    create_twins,
    post,
)

TABLES = ("observations", "predictions", "versions", "series_blocks", "drift_events")


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def worker_pids(api: int) -> list[int]:
    """The embedded workers: the API's child processes but multiprocessing's tracker."""
    try:
        children = Path(f"/proc/{api}/task/{api}/children").read_text().split()
    except OSError:
        return []
    pids = []
    for pid in map(int, children):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"resource_tracker" not in cmdline:
            pids.append(pid)
    return sorted(pids)


def workers_rss_mb(api: int) -> float | None:
    """The embedded workers' RSS together (each holds its share of the twins)."""
    values = [v for v in map(rss_mb, worker_pids(api)) if v is not None]
    return sum(values) if values else None


def counts(db: str) -> dict[str, int]:
    """Rows of each table that grows with the load."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return {name: conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0] for name in TABLES}


async def load(url: str, ids: list[int], work: Workload, seconds: float, failed: list) -> int:
    """Each twin posts every PERIOD s, twins staggered evenly over the period, until `seconds`
    are over (a post still due then is dropped), at most BURST_CONCURRENCY posts in flight:
    under the API's database pool, and a client that queues thousands of requests in its pool
    spends its time managing the queue. Returns the posts sent more than a period late."""
    n = len(ids)
    start = time.monotonic()
    end = start + seconds
    late = 0
    gate = asyncio.Semaphore(BURST_CONCURRENCY)
    http = Poster(url)  # bench/fleet.py's client: raw HTTP/1.1, a fraction of httpx's CPU
    try:

        async def gateway(i: int) -> None:
            nonlocal late
            slot = start + PERIOD * i / n
            while slot < end:
                wait = slot - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                elif -wait > PERIOD:
                    late += 1
                async with gate:
                    if time.monotonic() >= end:
                        return
                    if await post(http, ids[i], work.body(i)) < 0:
                        failed.append(i)
                slot += PERIOD

        await asyncio.gather(*(gateway(i) for i in range(n)))
    finally:
        http.close()
    return late


def setup(url: str, n: int) -> list[int]:
    async def run() -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT_S) as http:
            return await create_twins(http, n)

    return asyncio.run(run())


def read_series(http: httpx.Client, ids: list[int]) -> int:
    """A dashboard's sparklines: each twin's series in 10 points (with more than 32 rows a
    point, merged from series blocks); returns the reads that failed."""
    failed = 0
    for twin_id in ids:
        try:
            failed += http.get(f"/twins/{twin_id}/series", params={"points": 10}).status_code != 200
        except httpx.HTTPError:
            failed += 1
    return failed


def lag(http: httpx.Client) -> tuple[float, float]:
    twins = http.get("/twins", params={"limit": 10_000}).json()
    seconds = sorted(t["calibration_lag"]["seconds"] for t in twins)
    return statistics.median(seconds), seconds[int(0.95 * (len(seconds) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--twins", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--keep", type=float, default=600.0, help="retention, seconds of ts")
    parser.add_argument("--keep-versions", type=int, default=60, help="versions per twin")
    parser.add_argument("--sample", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--series", type=int, default=20, help="series read per sample")
    parser.add_argument("--port", type=int, default=8931)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="tandem-soak-")
    db = f"{tmp}/tandem.db"
    env = {
        **os.environ,
        "TANDEM_DATABASE_URL": f"sqlite:///{db}",
        "TANDEM_OBSERVATION_RETENTION_SECONDS": str(args.keep),
        "TANDEM_VERSION_RETENTION": str(args.keep_versions),
        "TANDEM_RETENTION_INTERVAL": "30",
        "TANDEM_RATE_LIMIT": "0",
    }
    tandem = str(Path(sys.executable).with_name("tandem"))
    command = [tandem, "serve", "--port", str(args.port)]
    log = open(f"{tmp}/serve.log", "wb")  # noqa: SIM115 (a pipe nobody reads would fill up)
    api = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
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
            ids = setup(url, args.twins)
            plotted = ids[:: max(len(ids) // max(args.series, 1), 1)][: args.series]
            reference = (rss_mb(api.pid), workers_rss_mb(api.pid))
            print(
                f"{args.twins} twins; RSS before the load: API {reference[0]:.0f} MB, "
                f"{len(worker_pids(api.pid))} workers together "
                f"{reference[1] or float('nan'):.0f} MB",
                flush=True,
            )
            print(
                "| minute | API RSS MB | workers RSS MB | "
                + " | ".join(TABLES)
                + " | failed posts | lag p50 / p95 s |"
            )
            print("|---|---|---|" + "---|" * len(TABLES) + "---|---|", flush=True)
            work = Workload(args.twins, length=3_600)
            work.t0 = time.time() - 20  # ts = t0 + k tracks the clock, k one a second
            failed: list = []
            seconds = args.minutes * 60
            late: list[int] = []

            def drive() -> None:
                late.append(asyncio.run(load(url, ids, work, seconds, failed)))

            thread = threading.Thread(target=drive, daemon=True)
            started = time.monotonic()
            thread.start()
            while thread.is_alive():
                thread.join(timeout=args.sample)
                minute = (time.monotonic() - started) / 60
                read_series(http, plotted)
                p50, p95 = lag(http)
                row = (minute, rss_mb(api.pid), workers_rss_mb(api.pid), counts(db), p50, p95)
                rows.append(row)
                tables = " | ".join(f"{row[3][name]:,}" for name in TABLES)
                print(
                    f"| {row[0]:.1f} | {row[1]:.0f} | {row[2] or float('nan'):.0f} | {tables} | "
                    f"{len(failed)} | {p50:.1f} / {p95:.1f} |",
                    flush=True,
                )
        print(f"posts sent more than a period late: {late[0] if late else 'unknown'}")
        print(f"the server's log: {tmp}/serve.log")
        verdict(rows, failed)
    finally:
        api.send_signal(signal.SIGTERM)
        try:
            api.wait(30)
        except subprocess.TimeoutExpired:
            api.kill()
        log.close()


def verdict(rows: list[tuple], failed: list) -> None:
    half = [r for r in rows if r[0] >= rows[-1][0] / 2]
    print(f"failed posts: {len(failed)}")
    for name in TABLES:
        values = [r[3][name] for r in half]
        print(f"{name} over the second half: {min(values):,}-{max(values):,} rows")
    for k, name in ((1, "API"), (2, "workers (together)")):
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
