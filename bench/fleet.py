"""Fleet benchmark: N `first_order` twins (default learner), each posting a batch of 10
one-second observations every 10 s over real HTTP, staggered like a gateway (N observations/s
in all, N/10 requests/s), against a real `tandem serve` started here.

    python bench/fleet.py [--twins 20,100] [--duration 30] [--workers 1,2]
    python bench/fleet.py --postgres postgresql+psycopg://postgres@127.0.0.1:54330/postgres \
        --workers 1,2 --twins 500

For each configuration (the embedded default: SQLite and `tandem serve`'s embedded workers,
its default number or k; or PostgreSQL: `tandem serve --no-worker` and k `tandem worker`
processes) and fleet size, on a fresh database:
create the twins and post them warm-up batches, each learned before the next and before anything
is timed (by default enough for the first guess a physical twin makes from its first
`twin.replica.GUESS_AFTER` observations: a one-off that costs a few times a steady update, so a
fleet timed in its first minute measures its start; `--warm-batches 1` does that), then the
reference: one batch to every twin at once, timed until all are learned (the API's requests/s
and the calibrator's batches/s at this fleet size, so the capacity is measured in the same run),
then the staggered load for --duration seconds while every twin's `calibration_lag` is sampled
from `GET /twins`, then the seconds to catch up after the load stops.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import orjson  # noqa: E402

from bench.fleet_deploy import deployment  # noqa: E402
from bench.report import print_targets  # noqa: E402
from twin.plants import FirstOrderPlant  # noqa: E402
from twin.replica import GUESS_AFTER  # noqa: E402

BATCH = 10  # observations per post, one second apart
PERIOD = 10.0  # seconds between a twin's posts
PLANTS = 16  # distinct simulated plants; twin i follows plant i % PLANTS
PREFIX = "fleet-"
CONNECTIONS = 64  # the client's keep-alive pool
BURST_CONCURRENCY = 12  # under the API's database pool (5 + 10 overflow connections)
SETUP_RETRIES = 20  # set-up requests answered 503/429 are retried after their Retry-After
TIMEOUT_S = 30.0  # a post slower than this counts as failed
KEEP_ALIVE_S = 4.0  # reuse a connection idle for less (uvicorn closes one idle for 5 s)
TARGET_P95_S, TARGET_CATCH_UP_S = 5.0, 10.0


# -- workload ---------------------------------------------------------------------------------
class Workload:
    """Each twin's observations: ts T0 + k (k = 0, 1, ...), values from its plant's row k."""

    def __init__(self, n_twins: int, length: int):
        plants = [FirstOrderPlant(K=1.5 + 0.1 * p, tau=15.0 + p) for p in range(PLANTS)]
        sims = [plant.simulate(length, seed=p).observations for p, plant in enumerate(plants)]
        t0 = time.time() - 10 * length  # the past: no ts is ever in the future
        # every body serialized once: twins of one plant post the same rows (the same ts)
        self.bodies = [
            [
                orjson.dumps(
                    {
                        "observations": [
                            {
                                "ts": t0 + k,
                                "inputs": {"u": float(s.inputs[k % length, 0])},
                                "outputs": {"y": float(s.outputs[k % length, 0])},
                            }
                            for k in range(k0, k0 + BATCH)
                        ]
                    }
                )
                for k0 in range(0, length, BATCH)
            ]
            for s in sims
        ]
        self.next = [0] * n_twins  # the next k of each twin

    def body(self, i: int) -> bytes:
        p, k0 = i % PLANTS, self.next[i]
        self.next[i] += BATCH
        return self.bodies[p][k0 // BATCH]  # `length` covers every batch a run sends


@dataclass
class Result:
    config: str
    twins: int
    accepted_rate: float  # observations/s accepted during the load
    failed: int
    late: int  # posts sent more than one period after their slot (the client fell behind)
    lag: tuple[float, float, float]  # p50, p95, max seconds over every twin and sample
    samples: int
    catch_up: float | None
    burst_rps: float  # the reference: requests/s of one batch to every twin at once
    burst_learned: float  # ... and batches/s learned until all were
    load_learned: float  # batches/s learned during the load (posted minus what stayed pending)
    per_core: float  # twins at 1 obs/s one core holds: 10 x batches per CPU-second in the burst
    server_cores: float  # CPU seconds of the deployment per second of load
    client_cores: float

    def holds(self) -> bool:
        return (
            self.failed == 0
            and self.lag[1] < TARGET_P95_S
            and self.catch_up is not None
            and self.catch_up < TARGET_CATCH_UP_S
        )


# -- HTTP -------------------------------------------------------------------------------------
class Poster:
    """The load's posts over raw HTTP/1.1 keep-alive connections (asyncio streams, up to
    CONNECTIONS), pre-serialized bodies in, the `accepted` count out: a fraction of the CPU
    an HTTP library spends per request, so that the client leaves the cores to the service.
    Set-up and the lag samples use httpx."""

    def __init__(self, base: str):
        url = httpx.URL(base)
        self.host, self.port = url.host, url.port
        self.idle: deque = deque()  # (reader, writer, last used), the most recent last
        self.gate = asyncio.Semaphore(CONNECTIONS)
        self.head = f"Host: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"

    async def post(self, twin_id: int, body: bytes) -> tuple[int, bytes, float]:
        """(status, body, Retry-After) of one post; raises OSError, TimeoutError, or
        ValueError on a broken answer."""
        request = (
            f"POST /twins/{twin_id}/observations HTTP/1.1\r\n{self.head}"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        async with self.gate:
            while self.idle and time.monotonic() - self.idle[0][2] > KEEP_ALIVE_S:
                self.idle.popleft()[1].close()  # idle too long: the server may close it
            reused = self.idle.pop()[:2] if self.idle else None
            conn = reused or await asyncio.open_connection(self.host, self.port)
            try:
                answer = await asyncio.wait_for(self._exchange(conn, request), TIMEOUT_S)
            except (asyncio.IncompleteReadError, ConnectionError) as e:
                conn[1].close()
                if reused is None or getattr(e, "partial", b""):
                    raise
                # closed by the server while idle, before it read the request: once more, anew
                conn = await asyncio.open_connection(self.host, self.port)
                try:
                    answer = await asyncio.wait_for(self._exchange(conn, request), TIMEOUT_S)
                except BaseException:
                    conn[1].close()
                    raise
            except BaseException:
                conn[1].close()  # in an unknown state: not reused
                raise
            self.idle.append((*conn, time.monotonic()))
            return answer

    @staticmethod
    async def _exchange(conn, request: bytes) -> tuple[int, bytes, float]:
        reader, writer = conn
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, retry = None, 1.0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"retry-after":
                retry = float(value)
        if length is None:
            raise ValueError("an answer without Content-Length")
        return status, await reader.readexactly(length), retry

    def close(self) -> None:
        for _, writer, _ in self.idle:
            writer.close()
        self.idle.clear()


async def post(poster: Poster, twin_id: int, body: bytes, retry: bool = False) -> int:
    """Observations accepted, or -1 when the post failed (error status or timeout). With
    `retry` (set-up, not the measured load), a 503 or 429 is retried after its Retry-After."""
    for _ in range(SETUP_RETRIES if retry else 1):
        try:
            status, answer, wait = await poster.post(twin_id, body)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
            return -1
        if status == 202:
            return orjson.loads(answer)["accepted"]
        if status not in (429, 503):
            return -1
        await asyncio.sleep(wait)
    return -1


async def create_twins(client: httpx.AsyncClient, n: int, spec: dict | None = None) -> list[int]:
    """n twins of `spec` (default: `first_order` with its default learner) named in order."""
    spec = spec or FirstOrderPlant().spec_dict()
    gate = asyncio.Semaphore(BURST_CONCURRENCY)

    async def create(i: int) -> int:
        async with gate:
            for _ in range(SETUP_RETRIES):
                response = await client.post("/twins", json={"name": f"{PREFIX}{i:05d}", **spec})
                if response.status_code not in (429, 503):
                    break
                await asyncio.sleep(float(response.headers.get("retry-after", 1)))
            response.raise_for_status()
            return response.json()["id"]

    return list(await asyncio.gather(*(create(i) for i in range(n))))


async def lags(client: httpx.AsyncClient, n: int) -> list[float]:
    """Every fleet twin's calibration lag in seconds, from the paged twin list (none when the
    service is too busy to answer: that sample is skipped)."""
    out: list[float] = []
    for offset in range(0, n, 10_000):
        response = await client.get(
            "/twins", params={"prefix": PREFIX, "limit": 10_000, "offset": offset}
        )
        if response.status_code in (429, 503):
            return []
        response.raise_for_status()
        out += [t["calibration_lag"]["seconds"] for t in response.json()]
    return out


async def pending_total(client: httpx.AsyncClient, n: int) -> int | None:
    """The observations the fleet's twins have not learned yet, all together (None when the
    service was too busy to say)."""
    total = 0
    for offset in range(0, n, 10_000):
        response = await client.get(
            "/twins", params={"prefix": PREFIX, "limit": 10_000, "offset": offset}
        )
        if response.status_code in (429, 503):
            return None
        response.raise_for_status()
        total += sum(t["calibration_lag"]["observations"] for t in response.json())
    return total


async def pending(client: httpx.AsyncClient) -> int:
    """The most observations any fleet twin has not learned yet (-1: the service was too busy
    to say)."""
    response = await client.get(
        "/twins", params={"prefix": PREFIX, "sort": "lag", "desc": "true", "limit": 1}
    )
    if response.status_code in (429, 503):
        return -1
    response.raise_for_status()
    rows = response.json()
    return rows[0]["calibration_lag"]["observations"] if rows else 0


async def wait_caught_up(client: httpx.AsyncClient, timeout: float) -> float | None:
    """Seconds until no fleet twin has pending observations, or None past `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if await pending(client) == 0:
            return time.monotonic() - start
        await asyncio.sleep(0.2)
    return None


async def burst(poster: Poster, ids: list[int], work: Workload) -> tuple[float, int]:
    """One batch to every twin, BURST_CONCURRENCY at a time: seconds taken, posts failed."""
    gate = asyncio.Semaphore(BURST_CONCURRENCY)

    async def one(i: int) -> int:
        async with gate:
            return await post(poster, ids[i], work.body(i), retry=True)

    start = time.monotonic()
    accepted = await asyncio.gather(*(one(i) for i in range(len(ids))))
    return time.monotonic() - start, sum(a < 0 for a in accepted)


# -- the load ---------------------------------------------------------------------------------
async def load(
    client: httpx.AsyncClient,
    poster: Poster,
    ids: list[int],
    work: Workload,
    duration: float,
    every: float,
) -> tuple[int, int, int, list[float]]:
    """The staggered load: twin i posts at start + PERIOD * i / N, then every PERIOD, until
    `duration` is over; meanwhile every twin's lag is sampled every `every` s. Returns
    (accepted, failed, late, lag samples)."""
    n = len(ids)
    start = time.monotonic()
    end = start + duration
    totals = {"accepted": 0, "failed": 0, "late": 0}

    async def gateway(i: int) -> None:
        slot = start + PERIOD * i / n
        while slot < end:
            wait = slot - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            elif -wait > PERIOD:
                totals["late"] += 1
            accepted = await post(poster, ids[i], work.body(i))
            if accepted < 0:
                totals["failed"] += 1
            else:
                totals["accepted"] += accepted
            slot += PERIOD

    samples: list[float] = []

    async def sampler() -> None:
        while time.monotonic() + every < end:
            await asyncio.sleep(every)
            samples.extend(await lags(client, n))

    await asyncio.gather(sampler(), *(gateway(i) for i in range(n)))
    return totals["accepted"], totals["failed"], totals["late"], samples


async def measure(base: str, run, n: int, args) -> Result:
    length = BATCH * (args.warm_batches + 2 + int(args.duration / PERIOD) + 2)
    work = Workload(n, length)
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT_S, limits=limits) as client:
        ids = await create_twins(client, n, twin_spec(args.model, args.learner))
        poster = Poster(base)
        for _ in range(args.warm_batches):  # warm-up: first guesses, caches
            _, failed = await burst(poster, ids, work)
            if failed or await wait_caught_up(client, args.catch_up_timeout) is None:
                raise RuntimeError("a warm-up batch was not learned")
        burst_cpu = run.cpu_seconds()
        posted, failed = await burst(poster, ids, work)  # the reference, timed
        drained = await wait_caught_up(client, args.catch_up_timeout)
        burst_cpu = run.cpu_seconds() - burst_cpu
        if failed or drained is None:
            raise RuntimeError("the reference batch was not learned")
        cpu0, client0, t0 = run.cpu_seconds(), time.process_time(), time.monotonic()
        accepted, failed, late, samples = await load(
            client, poster, ids, work, args.duration, args.every
        )
        elapsed = time.monotonic() - t0
        cpu, client_cpu = run.cpu_seconds() - cpu0, time.process_time() - client0
        left = await pending_total(client, n)  # nothing was pending at the start
        learned = (accepted - left) / BATCH / args.duration if left is not None else float("nan")
        catch_up = await wait_caught_up(client, args.catch_up_timeout)
        poster.close()
    p50, p95, peak = np.percentile(samples, [50, 95, 100]) if samples else (np.nan,) * 3
    return Result(
        run.label,
        n,
        accepted / args.duration,
        failed,
        late,
        (float(p50), float(p95), float(peak)),
        len(samples) // max(n, 1),
        catch_up,
        n / posted,
        n / (posted + drained),
        learned,
        PERIOD * n / max(burst_cpu, 1e-9),
        cpu / elapsed,
        client_cpu / elapsed,
    )


# -- report -----------------------------------------------------------------------------------
def print_results(results: list[Result], duration: float, twins: str = "first_order") -> None:
    print(
        f"Fleet: {twins} twins, {BATCH} one-second observations per twin every "
        f"{PERIOD:.0f} s, staggered; {duration:.0f} s of load per row"
    )
    head = (
        f"{'configuration':<30} {'twins':>6} {'accepted':>10} {'failed':>6} {'late':>5} "
        f"{'lag p50 / p95 / max (s)':>24} {'catch-up':>9} {'ref: API':>10} {'ref: learned':>13} "
        f"{'learned':>10} {'ref: twins':>11} {'server':>7} {'client':>7}"
    )
    print(head)
    print(
        f"{'':<24} {'':>6} {'obs/s':>10} {'posts':>6} {'posts':>5} {'':>24} {'s':>9} "
        f"{'req/s':>10} {'batches/s':>13} {'batches/s':>10} {'per core':>11} {'cores':>7} "
        f"{'cores':>7}"
    )
    for r in results:
        lag = f"{r.lag[0]:.1f} / {r.lag[1]:.1f} / {r.lag[2]:.1f}"
        caught = f"{r.catch_up:.1f}" if r.catch_up is not None else "never"
        print(
            f"{r.config:<30} {r.twins:>6,} {r.accepted_rate:>10,.0f} {r.failed:>6} {r.late:>5} "
            f"{lag:>24} {caught:>9} {r.burst_rps:>10,.0f} {r.burst_learned:>13,.0f} "
            f"{r.load_learned:>10,.0f} {r.per_core:>11,.0f} {r.server_cores:>7.2f} "
            f"{r.client_cores:>7.2f}"
        )
    print(
        "\nref: one batch posted to every twin at once (warm), API requests/s while posting and "
        "batches learned/s until all were; a twin at 1 obs/s needs 0.1 batches/s, so "
        "10 x batches/s is the fleet the calibrator could hold; per core: 10 x batches per "
        "CPU-second the service's processes spent on the burst (posting and learning), the "
        "twins at 1 obs/s one core holds, whatever else the machine runs.\nlearned: batches "
        "learned a second during the load itself (posted minus what was still pending at its "
        "end), against the N/10 a second posted.\nlate: posts sent "
        "more than one period after their slot (the client fell behind; see its cores)."
    )
    by_config: dict[str, list[Result]] = {}
    for r in results:
        by_config.setdefault(r.config, []).append(r)
    targets = []
    for config, rows in by_config.items():
        held = [r.twins for r in rows if r.holds()]
        best = f"{max(held):,} twins" if held else "none of the sizes run"
        targets.append(
            (
                f"{config}: largest fleet with lag p95 < {TARGET_P95_S:.0f} s, no failed posts, "
                f"caught up < {TARGET_CATCH_UP_S:.0f} s: {best} (target 5,000 embedded)",
                any(r.twins >= 5000 for r in rows if r.holds()),
            )
        )
    print_targets(targets)


def twin_spec(model: str | None, learner: str | None) -> dict:
    """The fleet's twin: `first_order` (its default learner), or another model kind with the
    same channels (u in, y out) and its own default learner, or a learner named."""
    spec = FirstOrderPlant().spec_dict()
    if model is not None:
        spec["model"] = orjson.loads(model) if model.startswith("{") else {"kind": model}
    if learner is not None:
        spec["learner"] = {"method": learner}
    return spec


def _setting(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"--setting {text!r}: expected NAME=VALUE")
    return "TANDEM_" + name.upper().removeprefix("TANDEM_"), value


def parse_sizes(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--twins", type=parse_sizes, default=[20, 100], help="fleet sizes")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load per size")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between lag samples")
    parser.add_argument("--catch-up-timeout", type=float, default=120.0)
    parser.add_argument("--postgres", help="a PostgreSQL server URL: API + workers on it")
    parser.add_argument(
        "--workers",
        type=parse_sizes,
        help="worker processes: `tandem worker`s with --postgres (default 1,2), else the "
        "embedded children of `tandem serve` (default: its own, one)",
    )
    parser.add_argument(
        "--model",
        help='the twins\' model instead of first_order: a kind ("arx") or JSON '
        '(\'{"kind": "arx", "na": 2, "nb": 2}\'), on the same data (u in, y out)',
    )
    parser.add_argument("--learner", help="the twins' learner method instead of their default")
    parser.add_argument(
        "--warm-batches",
        type=int,
        default=GUESS_AFTER // BATCH + 1,
        help="batches each twin learns before anything is timed (default: past a physical "
        "twin's first guess; 1 times the fleet's first minutes)",
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a service setting for every process of the deployment, as its TANDEM_ variable "
        "without the prefix (CALIBRATION_TWINS=256); repeatable",
    )
    args = parser.parse_args(argv)
    settings = dict(_setting(text) for text in args.setting)
    print(
        f"cores {os.cpu_count()} ({len(os.sched_getaffinity(0))} usable), python "
        f"{platform.python_version()}, load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
        + "\n"
    )
    if args.postgres is None:
        configs = [(None, k) for k in args.workers or [0]]
    else:
        configs = [(args.postgres, k) for k in args.workers or [1, 2]]
    results = []
    for postgres, workers in configs:
        for n in args.twins:
            with (
                tempfile.TemporaryDirectory(prefix="tandem-fleet-") as tmp,
                deployment(Path(tmp), postgres, workers, settings) as run,
            ):
                results.append(asyncio.run(measure(run.base, run, n, args)))
            r = results[-1]
            print(f"  {r.config}, {n} twins: lag p95 {r.lag[1]:.1f} s", file=sys.stderr)
    spec = twin_spec(args.model, args.learner)
    described = spec["model"]["kind"] + (f" ({args.learner})" if args.learner else "")
    print_results(results, args.duration, described)
    return results


if __name__ == "__main__":
    main()
