"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from app.db import current_revision, head_revision
from app.deps import MetricsDep
from app.errors import error_body
from app.schemas import Health, NotReady, Readiness

router = APIRouter(tags=["ops"])
log = logging.getLogger("tandem.ops")


@router.get("/healthz", response_model=Health, summary="Liveness probe", operation_id="getHealth")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness probe",
    operation_id="getReadiness",
    responses={
        200: {"description": "Ready to serve."},
        503: {
            "model": NotReady,
            "description": "Not ready (`not_ready`): the database is unreachable or not at the "
            "newest migration, or the embedded worker is silent or being replaced.",
        },
    },
)
def readyz(request: Request) -> JSONResponse:
    """Ready when the database answers, its schema is at the newest migration, and the embedded
    calibration worker (if this process runs one) reported within `TANDEM_HEARTBEAT_TIMEOUT`."""
    engine = request.app.state.engine
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        revision = current_revision(engine)
    except Exception:  # the driver's text names hosts and users: logged, never answered
        log.warning("readiness: database unreachable", exc_info=True)
        return _not_ready("database unreachable")
    head = head_revision()
    if revision != head:
        return _not_ready(f"database schema is at {revision or 'no revision'}, not at {head}")
    body = {"status": "ready", "revision": revision}
    worker = request.app.state.worker
    if worker is not None:
        age = worker.heartbeat_age()
        body["worker"] = {
            "pid": worker.pid,
            "pids": worker.pids,
            "reporting": worker.reporting,
            "heartbeat_age": age,
            "restarts": worker.restarts,
        }
        limit = request.app.state.settings.heartbeat_timeout
        if worker.recovering:
            return _not_ready(
                "the calibration worker died and its replacement has not reported yet",
                worker=body["worker"],
            )
        if age > limit:
            return _not_ready(
                f"the calibration worker has not reported for {age:.0f} s (limit {limit:g} s)",
                worker=body["worker"],
            )
    return JSONResponse(body)


def _not_ready(reason: str, **extra) -> JSONResponse:
    return JSONResponse({"status": "unavailable", **error_body("not_ready", reason), **extra}, 503)


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics",
    operation_id="getMetrics",
    responses={
        200: {
            "description": "Prometheus text exposition format.",
            "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
        }
    },
)
def metrics(metrics: MetricsDep) -> Response:
    """Prometheus text format: request and ingestion counters, per-twin gauges."""
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
