"""Prometheus metrics, one registry per app: request and ingestion counters, and per-twin gauges
read from the database at scrape time (so every API process reports the same values)."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.utils import floatToGoString
from sqlalchemy.orm import Session, sessionmaker

from app.services import fleet

log = logging.getLogger("tandem.metrics")
CLIENT_LEFT = 499  # the status counted for a request answered with nothing (as nginx logs it)


class ServiceMetrics:
    def __init__(self, sessions: Callable[[], sessionmaker[Session] | None]):
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "http_requests",
            "HTTP requests handled.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_seconds = Histogram(
            "http_request_duration_seconds",
            "Time to handle an HTTP request.",
            ["method", "route"],
            registry=self.registry,
        )
        self.worker_restarts = Counter(
            "worker_restarts",
            "Times the embedded calibration worker died and was restarted.",
            registry=self.registry,
        )
        self.worker_heartbeat_age = Gauge(
            "worker_heartbeat_age_seconds",
            "Seconds since the embedded calibration worker last reported progress.",
            registry=self.registry,
        )
        self.database_up = Gauge(
            "database_up", "1 when the last scrape could read the database.", registry=self.registry
        )
        self.sessions = sessions
        # per-twin counters: {twin name: [accepted, duplicates]}, written as text (see render)
        self._counts: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def ingested(self, twin: str, accepted: int, duplicates: int) -> None:
        with self._lock:
            counts = self._counts.setdefault(twin, [0.0, 0.0])
            counts[0] += accepted
            counts[1] += duplicates

    def forget(self, twin: str) -> None:
        """Drop a deleted twin's series."""
        with self._lock:
            self._counts.pop(twin, None)

    def render(self) -> bytes:
        """The exposition text. Per-twin series are written here directly: with 10,000 twins
        they are 70,000+ samples, and prometheus_client's generic exposition took seconds."""
        twins = self._twin_families()
        return generate_latest(self.registry) + twins.encode()

    def _twin_families(self) -> str:
        with self._lock:
            counts = list(self._counts.items())
        lines: list[str] = []
        for k, (name, help_text) in enumerate(COUNTERS):
            lines += [f"# HELP {name}_total {help_text}", f"# TYPE {name}_total counter"]
            lines += [f'{name}_total{{twin="{_label(t)}"}} {_value(c[k])}' for t, c in counts]
        gauges: dict[str, list[str]] = {name: [] for name, _ in GAUGES}
        factory = self.sessions()
        try:
            if factory is None:
                raise RuntimeError("the app has not started")
            with factory() as session:
                _fill(session, gauges)
            self.database_up.set(1)
        except Exception:
            log.exception("could not read twin metrics from the database")
            self.database_up.set(0)
        for name, help_text in GAUGES:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", *gauges[name]]
        return "\n".join(lines) + "\n"


COUNTERS = (
    ("observations_accepted", "Observations stored."),
    ("duplicates", "Observations not stored because the twin already had their ts."),
)
GAUGES = (
    ("twin_last_seq", "Newest accepted seq."),
    ("twin_version", "Latest version number."),
    ("twin_calibration_lag_observations", "Accepted observations no version has learned yet."),
    (
        "twin_calibration_lag_seconds",
        "Age of the oldest observation no version has learned yet (since it was received).",
    ),
    ("twin_calibration_failing", "1 while the calibrator cannot learn the twin (status failing)."),
    ("twin_calibration_failures", "Failed calibration attempts in a row."),
    ("twin_rmse", "Rolling one-step RMSE of the twin's latest version per output."),
)


def _fill(session: Session, gauges: dict[str, list[str]]) -> None:
    """Per-twin gauge lines from one statement over the fleet (`app.services.fleet.gauges`)."""
    now = time.time()
    for name, last_seq, status, failures, number, watermark, metrics, received in fleet.gauges(
        session
    ):
        pending = max(last_seq - watermark, 0)
        seconds = max(now - received, 0.0) if pending and received is not None else 0.0
        twin = f'twin="{_label(name)}"'
        gauges["twin_last_seq"].append(f"twin_last_seq{{{twin}}} {_value(last_seq)}")
        gauges["twin_version"].append(f"twin_version{{{twin}}} {_value(number)}")
        lag = "twin_calibration_lag_observations"
        gauges[lag].append(f"{lag}{{{twin}}} {_value(pending)}")
        lag = "twin_calibration_lag_seconds"
        gauges[lag].append(f"{lag}{{{twin}}} {_value(seconds)}")
        failing = int(status == "failing")
        gauges["twin_calibration_failing"].append(
            f"twin_calibration_failing{{{twin}}} {_value(failing)}"
        )
        gauges["twin_calibration_failures"].append(
            f"twin_calibration_failures{{{twin}}} {_value(failures)}"
        )
        for output, m in ((metrics or {}).get("outputs") or {}).items():
            rmse = (m.get("twin") or {}).get("rmse")
            if isinstance(rmse, int | float) and not isinstance(rmse, bool):
                labels = f'{twin},output="{_label(output)}"'
                gauges["twin_rmse"].append(f"twin_rmse{{{labels}}} {_value(rmse)}")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _value(value: float) -> str:
    v = float(value)
    return repr(v) if math.isfinite(v) else floatToGoString(v)


class RequestMetrics:
    """ASGI middleware counting requests by method, route template and status, and timing them."""

    def __init__(self, app, metrics: ServiceMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: int | None = None
        started = time.perf_counter()

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except BaseException:
            status = status or 500
            raise
        finally:
            # Refusals before routing (401, 403, 413, 408, ...) are named by their route too
            # (`app.auth`); a request answered with nothing (the client left mid-body) is 499.
            route = getattr(scope.get("route"), "path", "unmatched")
            code = str(status or CLIENT_LEFT)
            self.metrics.http_requests.labels(scope["method"], route, code).inc()
            self.metrics.http_seconds.labels(scope["method"], route).observe(
                time.perf_counter() - started
            )
