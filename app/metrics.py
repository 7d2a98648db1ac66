"""Prometheus metrics, one registry per app: request and ingestion counters, and per-twin gauges
read from the database at scrape time (so every API process reports the same values)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.services.twins import list_twins, twin_statuses
from app.tables import Version

log = logging.getLogger("tandem.metrics")


class ServiceMetrics:
    def __init__(self, sessions: Callable[[], sessionmaker[Session] | None]):
        self.registry = CollectorRegistry(auto_describe=True)
        self.observations_accepted = Counter(
            "observations_accepted",
            "Observations stored.",
            ["twin"],
            registry=self.registry,
        )
        self.duplicates = Counter(
            "duplicates",
            "Observations not stored because the twin already had their ts.",
            ["twin"],
            registry=self.registry,
        )
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
        self.registry.register(TwinCollector(sessions))

    def ingested(self, twin: str, accepted: int, duplicates: int) -> None:
        self.observations_accepted.labels(twin).inc(accepted)
        self.duplicates.labels(twin).inc(duplicates)

    def forget(self, twin: str) -> None:
        """Drop a deleted twin's series."""
        for counter in (self.observations_accepted, self.duplicates):
            with contextlib.suppress(KeyError):
                counter.remove(twin)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class TwinCollector(Collector):
    """Per-twin gauges from the database: newest seq, version, calibration lag, rolling RMSE."""

    def __init__(self, sessions: Callable[[], sessionmaker[Session] | None]):
        self.sessions = sessions

    def describe(self):
        return []  # values come from the database at scrape time only

    def collect(self):
        up = GaugeMetricFamily("database_up", "1 when the last scrape could read the database.")
        gauges = {
            "last_seq": GaugeMetricFamily("twin_last_seq", "Newest accepted seq.", labels=["twin"]),
            "version": GaugeMetricFamily("twin_version", "Latest version number.", labels=["twin"]),
            "lag_obs": GaugeMetricFamily(
                "twin_calibration_lag_observations",
                "Accepted observations no version has learned yet.",
                labels=["twin"],
            ),
            "lag_s": GaugeMetricFamily(
                "twin_calibration_lag_seconds",
                "Receive-time span of the observations no version has learned yet.",
                labels=["twin"],
            ),
            "failing": GaugeMetricFamily(
                "twin_calibration_failing",
                "1 while the calibrator cannot learn the twin (status failing).",
                labels=["twin"],
            ),
            "failures": GaugeMetricFamily(
                "twin_calibration_failures",
                "Failed calibration attempts in a row.",
                labels=["twin"],
            ),
            "rmse": GaugeMetricFamily(
                "twin_rmse",
                "Rolling one-step RMSE of the twin's latest version per output.",
                labels=["twin", "output"],
            ),
        }
        factory = self.sessions()
        try:
            if factory is None:
                raise RuntimeError("the app has not started")
            with factory() as session:
                self._fill(session, gauges)
            up.add_metric([], 1)
        except Exception:
            log.exception("could not read twin metrics from the database")
            up.add_metric([], 0)
        yield up
        yield from gauges.values()

    @staticmethod
    def _fill(session: Session, gauges: dict[str, GaugeMetricFamily]) -> None:
        statuses = twin_statuses(session, list_twins(session))
        newest = (
            select(Version.twin_id, func.max(Version.number).label("number"))
            .group_by(Version.twin_id)
            .subquery()
        )
        metrics = dict(
            session.execute(
                select(Version.twin_id, Version.metrics).join(
                    newest,
                    (Version.twin_id == newest.c.twin_id) & (Version.number == newest.c.number),
                )
            ).all()
        )
        for s in statuses:
            gauges["last_seq"].add_metric([s.name], s.last_seq)
            gauges["version"].add_metric([s.name], s.version)
            gauges["lag_obs"].add_metric([s.name], s.calibration_lag.observations)
            gauges["lag_s"].add_metric([s.name], s.calibration_lag.seconds)
            gauges["failing"].add_metric([s.name], int(s.status == "failing"))
            gauges["failures"].add_metric([s.name], s.failures)
            outputs = (metrics.get(s.id) or {}).get("outputs") or {}
            for output, m in outputs.items():
                rmse = (m.get("twin") or {}).get("rmse")
                if isinstance(rmse, int | float) and not isinstance(rmse, bool):
                    gauges["rmse"].add_metric([s.name, output], rmse)


class RequestMetrics:
    """ASGI middleware counting requests by method, route template and status, and timing them."""

    def __init__(self, app, metrics: ServiceMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.http_requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.http_seconds.labels(scope["method"], route).observe(
                time.perf_counter() - started
            )
