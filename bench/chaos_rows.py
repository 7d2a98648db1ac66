"""The rows of issue 10's table for `bench/chaos.py`: each takes a fresh running server and
returns one line saying what happened."""

from __future__ import annotations

import math
import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx

RSS_GUARD = 3 * 1024**3  # bytes: a process past this is killed, and the row says so
FIRST_ORDER = {"inputs": ["u"], "outputs": ["y"], "model": {"kind": "first_order"}}


def rss(pid: int | None) -> int:
    """Resident bytes of a process (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, TypeError):
        pass
    return 0


def alive(pid: int | None) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, TypeError):
        return False
    return state != "Z"


def wait_for(predicate, timeout: float, interval: float = 0.05):
    """The predicate's first true value, or None after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (httpx.TransportError, ValueError):
            value = None
        if value:
            return value
        time.sleep(interval)
    return None


def mb(n: float) -> str:
    return f"{n / 1024**2:,.0f} MB"


class Watch(threading.Thread):
    """Samples a process's RSS; past RSS_GUARD it SIGKILLs it (or calls `on_guard`)."""

    def __init__(self, pid: int, on_guard=None):
        super().__init__(daemon=True)
        self.pid, self.on_guard = pid, on_guard
        self.peak, self.tripped = rss(pid), False
        self._halt = threading.Event()
        self.start()

    def run(self) -> None:
        while not self._halt.wait(0.05):
            now = rss(self.pid)
            self.peak = max(self.peak, now)
            if now > RSS_GUARD and not self.tripped:
                self.tripped = True
                if self.on_guard is not None:
                    self.on_guard()
                else:
                    os.kill(self.pid, signal.SIGKILL)

    def done(self) -> Watch:
        self._halt.set()
        self.join()
        return self


def rows(n: int, start: float = 0.0, y=None) -> list[dict]:
    y = y or (lambda i: 20.0 + 5.0 * math.sin(i / 7.0))
    return [
        {"ts": start + i, "inputs": {"u": 1.0 + (i % 5)}, "outputs": {"y": y(i)}} for i in range(n)
    ]


def make(server, name: str, **spec) -> tuple[int, int | None]:
    response = server.http.post("/twins", json={"name": name, **FIRST_ORDER, **spec})
    return response.status_code, response.json().get("id") if response.status_code == 201 else None


def post(server, twin_id: int, data: list[dict]) -> int:
    return server.http.post(
        f"/twins/{twin_id}/observations", json={"observations": data}
    ).status_code


def twin(server, twin_id: int) -> dict:
    return server.http.get(f"/twins/{twin_id}").json()


# -- rows -------------------------------------------------------------------------------------
def worst_lag(server, twin_id: int, start: float, seconds: float = 10.0) -> float:
    """Feed a twin 5 rows every half second from `start` for `seconds`; its worst calibration
    lag (seconds) meanwhile."""
    worst = 0.0
    for k in range(int(seconds / 0.5)):
        post(server, twin_id, rows(5, start + 5 * k))
        time.sleep(0.5)
        worst = max(worst, twin(server, twin_id)["calibration_lag"]["seconds"])
    return worst


def poisoned_gradient(server) -> str:
    """A healthy twin's worst lag alone (the reference, same server), then beside a gradient
    twin fed 1e300; then whether the poisoned twin is isolated and recovers."""
    _, alone = make(server, "alone")
    post(server, alone, rows(40))
    wait_for(lambda: twin(server, alone)["watermark"] == 40, 60)
    reference = worst_lag(server, alone, 40)
    # the same beside a gradient twin fed sound data: what a gradient neighbour costs anyway
    _, plain = make(server, "plain", learner={"method": "gradient", "seed": 1})
    post(server, plain, rows(240))
    beside_plain = worst_lag(server, alone, 200)
    server.http.delete(f"/twins/{plain}")
    server.http.delete(f"/twins/{alone}")
    _, sick = make(server, "sick", learner={"method": "gradient", "seed": 1})
    codes = {post(server, sick, rows(40)), post(server, sick, rows(100, 40, lambda i: 1e300))}
    codes.add(post(server, sick, rows(100, 140)))
    _, healthy = make(server, "healthy")
    post(server, healthy, rows(40))
    worst = worst_lag(server, healthy, 40)
    seen = wait_for(lambda: twin(server, sick)["status"] != "ok" and twin(server, sick), 10)
    ready = server.http.get("/readyz").status_code
    post(server, sick, rows(300, 240))
    recovered = wait_for(
        lambda: (s := twin(server, sick))["status"] == "ok" and s["watermark"] == 540 and s, 60
    )
    return (
        f"posts {sorted(codes)}; a healthy twin's worst lag {worst:.1f} s (alone: "
        f"{reference:.1f} s; beside a gradient twin fed sound data: {beside_plain:.1f} s); "
        "poisoned twin "
        + (f"{seen['status']} ({(seen['error'] or '')[:60]})" if seen else "never failing")
        + f"; /readyz {ready}; "
        + (
            "recovered: ok, all 540 learned"
            if recovered
            else f"not recovered: {twin(server, sick)}"
        )
    )


def huge_population(server) -> str:
    code, twin_id = make(
        server, "huge", learner={"method": "pgpe", "popsize": 10000, "iterations": 10000}
    )
    if twin_id is None:
        return f"spec refused: {code}"
    worker = server.worker_pid()
    idle = rss(worker)

    def guard() -> None:  # the update in progress would not stop for a delete
        server.http.delete(f"/twins/{twin_id}")
        os.kill(worker, signal.SIGKILL)

    watch = Watch(worker, on_guard=guard)
    post(server, twin_id, rows(100))
    time.sleep(15)
    watch.done()
    note = f" (twin deleted, worker killed at {mb(RSS_GUARD)})" if watch.tripped else ""
    return f"201; worker RSS {mb(idle)} -> {mb(watch.peak)} in 15 s{note}"


def slow_update(server) -> str:
    """The issue's spec; when it is refused, the same beside a healthy twin with as many
    iterations as the update budget lets through comfortably (100: about 2.5 s estimated)."""
    learner = {"method": "pgpe", "popsize": 1000, "iterations": 3000}
    code, slow = make(server, "slow", learner=learner)
    if slow is None:
        refused = server.http.post(
            "/twins", json={"name": "slow", **FIRST_ORDER, "learner": learner}
        ).json()["errors"][0]["field"]
        code, slow = make(server, "slow", learner={**learner, "iterations": 100})
        if slow is None:
            return f"spec refused: {refused}; iterations 100 refused too: {code}"
        return f"spec refused: 422 ({refused}); iterations 100 accepted: " + lag_beside(
            server, slow
        )
    return f"{code}; " + lag_beside(server, slow)


def lag_beside(server, slow: int) -> str:
    """The worst calibration lag of a healthy twin fed small batches for 15 s, beside `slow`."""
    _, healthy = make(server, "healthy")
    post(server, slow, rows(100))
    worst = worst_lag(server, healthy, 1000, 15.0)
    server.http.delete(f"/twins/{slow}")
    return f"a healthy twin's lag at most {worst:.1f} s over 15 s"


def kill_worker(server) -> str:
    _, twin_id = make(server, "hx")
    post(server, twin_id, rows(40))
    wait_for(lambda: twin(server, twin_id)["watermark"] == 40, 30)
    first = server.worker_pid()
    os.kill(first, signal.SIGKILL)
    killed = time.monotonic()
    not_ready = wait_for(lambda: server.http.get("/readyz").status_code == 503, 15)
    new = wait_for(lambda: (p := server.worker_pid()) and p != first and server.ready(), 60)
    back = time.monotonic() - killed
    post(server, twin_id, rows(40, 40))
    resumed = wait_for(lambda: twin(server, twin_id)["watermark"] == 80, 30)
    restarts = server.ready()["worker"]["restarts"] if new else "?"
    return (
        f"/readyz 503: {'yes' if not_ready else 'no'}; restarted: "
        f"{'yes' if new else 'NO'} after {back:.1f} s (restarts {restarts}); "
        f"calibration resumed: {'yes' if resumed else 'NO'}"
    )


def sigterm_group_idle(server) -> str:
    started = time.monotonic()
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.proc.wait(timeout=60)
    except Exception:
        return "still running after 60 s"
    return f"exited ({server.proc.returncode}) after {time.monotonic() - started:.1f} s"


def huge_ts(server) -> str:
    _, twin_id = make(server, "hx")
    first = post(server, twin_id, [{"ts": 1e308, "inputs": {"u": 1}, "outputs": {"y": 1}}])
    later = post(server, twin_id, rows(5, time.time()))
    return f"ts 1e308: {first}; a real observation after it: {later}"


def big_bodies(server) -> str:
    _, twin_id = make(server, "hx")
    post(server, twin_id, rows(40))
    idle = rss(server.pid)
    out = []
    for path, size in ((f"/twins/{twin_id}/predict", 105), ("/twins", 210)):
        body = b'{"dt": 1, "inputs": [' + b'{"u": 1.0},' * (size * 1024**2 // 11) + b'{"u": 1}]}'
        watch = Watch(server.pid)
        try:
            code = server.http.post(
                path, content=body, headers={"content-type": "application/json"}, timeout=120
            ).status_code
        except httpx.TransportError as exc:
            code = type(exc).__name__
        time.sleep(1.0)
        after = rss(server.pid)
        watch.done()
        killed = " (killed at guard)" if watch.tripped else ""
        out.append(
            f"{size} MB to {path.split('/')[-1]}: {code}, peak {mb(watch.peak)}{killed}, "
            f"after {mb(after)}"
        )
        if watch.tripped:
            break
    return f"idle RSS {mb(idle)}; " + "; ".join(out)


def wide_arx(server) -> str:
    outputs = [f"y{i}" for i in range(5000)]
    spec = {"inputs": ["u"], "outputs": outputs, "model": {"kind": "arx"}}
    idle = rss(server.pid)
    watch = Watch(server.pid)
    started = time.monotonic()
    try:
        code = server.http.post("/twins", json={"name": "wide", **spec}, timeout=120).status_code
    except httpx.TransportError as exc:
        code = type(exc).__name__
    took = time.monotonic() - started
    watch.done()
    killed = " (killed at guard)" if watch.tripped else ""
    return f"{code} in {took:.1f} s; server RSS {mb(idle)} -> {mb(watch.peak)}{killed}"


def stalled_uploads(server) -> str:
    _, twin_id = make(server, "hx")
    out = []
    for n in (16, 200):
        sockets = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(
                f"POST /twins/{twin_id}/observations HTTP/1.1\r\nhost: x\r\n"
                "content-type: application/json\r\ncontent-length: 100000\r\n\r\n{".encode()
            )
            sockets.append(s)
        time.sleep(0.5)
        codes: dict[str, int] = {}
        started = time.monotonic()
        for _ in range(5):
            try:
                code = str(server.http.get("/twins", timeout=5).status_code)
            except httpx.TimeoutException:
                code = "timeout"
            codes[code] = codes.get(code, 0) + 1
        took = time.monotonic() - started
        for s in sockets:
            s.close()
        out.append(f"{n} stalled: GET /twins x5 -> {codes} in {took:.1f} s")
    return "; ".join(out)


def poisoned_pgpe(server) -> str:
    _, twin_id = make(server, "pg")
    post(server, twin_id, rows(40))
    post(server, twin_id, rows(100, 40, lambda i: 1e300))
    post(server, twin_id, rows(300, 140))
    wait_for(lambda: twin(server, twin_id)["watermark"] == 440, 60)
    status = twin(server, twin_id)
    values = server.http.get(f"/twins/{twin_id}/parameters").json().get("parameters", {})
    history = server.http.get(f"/twins/{twin_id}/observations", params={"after_seq": 420}).json()
    predicted = sum(r["prediction"] is not None for r in history.get("observations", []))
    return (
        f"status {status['status']}, watermark {status['watermark']}/440; parameters {values}; "
        f"last 20 rows predicted: {predicted}"
    )


def status(request) -> str:
    """A request's status code, or what went wrong on the wire."""
    try:
        return str(request().status_code)
    except httpx.TransportError as exc:
        return f"{type(exc).__name__} ({exc})"


def big_ids(server) -> str:
    a = status(lambda: server.http.get("/twins/9223372036854775808"))
    spec = {"name": "seed", **FIRST_ORDER, "learner": {"method": "pgpe", "seed": 2**70}}
    b = status(lambda: server.http.post("/twins", json=spec))
    up = status(lambda: server.http.get("/healthz"))
    return f"GET /twins/2**63: {a}; learner.seed 2**70: {b}; /healthz after: {up}"


def no_keys(server) -> str:
    _, twin_id = make(server, "hx")
    plain = server.http.post(
        f"/twins/{twin_id}/observations",
        content=b'{"observations": [{"ts": 1, "inputs": {"u": 1}, "outputs": {"y": 1}}]}',
        headers={"content-type": "text/plain"},
    ).status_code
    cors = server.http.options(
        "/twins",
        headers={"origin": "http://evil.example", "access-control-request-method": "DELETE"},
    ).headers.get("access-control-allow-origin")
    deleted = server.http.delete(f"/twins/{twin_id}").status_code
    return (
        f"text/plain post without key: {plain}; CORS allow-origin: {cors}; "
        f"DELETE without key: {deleted}"
    )


def late_replay(server) -> str:
    _, twin_id = make(server, "hx")
    post(server, twin_id, rows(50, 1000))
    code = post(server, twin_id, rows(10, 900))
    stored = twin(server, twin_id)["last_seq"]
    wait_for(lambda: twin(server, twin_id)["watermark"] == 60, 60)
    history = server.http.get(f"/twins/{twin_id}/observations").json()["observations"]
    flagged = sum("late" in r["flags"] for r in history)
    late = server.http.get(f"/twins/{twin_id}/drift").json()["late"]
    return (
        f"replay of 10 older rows: {code}; stored rows: {stored}/60, flagged late: {flagged}; "
        f"/drift late: {late}"
    )


TABLE_ROWS = [
    ("gradient twin fed 100 outputs of 1e300, then normal data", poisoned_gradient),
    ("learner popsize 10000, iterations 10000 and 100 rows", huge_population),
    ("popsize 1000, iterations 3000 beside a healthy twin", slow_update),
    ("kill -9 of the calibrator child", kill_worker),
    ("SIGTERM to the process group, worker idle", sigterm_group_idle),
    ("one observation with ts 1e308, then real ones", huge_ts),
    ("105 MB body to /predict, 210 MB to /twins", big_bodies),
    ("arx spec with 5,000 outputs", wide_arx),
    ("16 (then 200) uploads stalled after their headers", stalled_uploads),
    ("100 outputs of 1e300 into a pgpe twin, then normal data", poisoned_pgpe),
    ("GET /twins/9223372036854775808, learner.seed 2**70", big_ids),
    ("a web page posting text/plain, CORS, deleting without a key", no_keys),
    ("a gateway replaying buffered (older) data", late_replay),
]
