"""What a twin knows: what-if predictions, parameters, version history and drift."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.deps import SessionDep, SettingsDep, TwinCacheDep, TwinDep
from app.errors import error_responses
from app.limits import check_whatif
from app.routes.observations import query_time
from app.schemas import (
    DriftRead,
    ParametersRead,
    PredictRequest,
    PredictResult,
    SeriesRead,
    VersionRead,
)
from app.services import checkpoints, history, series
from app.services.twins import twin_status

router = APIRouter(prefix="/twins/{twin_id}", tags=["reads"])

BAD_ID = "Invalid twin id (`invalid`)."
BAD_QUERY = "Invalid twin id or query parameter (`invalid`)."
Limit = Annotated[int, Query(ge=1, le=10_000, description="Most entries returned.")]


@router.post(
    "/predict",
    response_model=PredictResult,
    summary="Predict the outputs under future inputs (what-if)",
    operation_id="predict",
    responses=error_responses(
        404,
        409,
        422,
        e409="The twin cannot roll forward yet: no observation, or none learned (`conflict`).",
        e422="Invalid inputs or dt, future inputs that do not match the twin's channels, or "
        "more steps than this twin's what-if limit (`invalid`).",
    ),
)
def predict(
    body: PredictRequest,
    twin: TwinDep,
    session: SessionDep,
    cache: TwinCacheDep,
    settings: SettingsDep,
) -> PredictResult:
    """Roll the twin forward from its latest observed state under future inputs; `std` is the
    spread of noise paths at the twin's recent one-step error. 409 until it has learned."""
    check_whatif(twin.spec, len(body.inputs), settings)
    return checkpoints.predict(session, cache, twin, body, settings.max_horizon)


@router.get(
    "/parameters",
    response_model=ParametersRead,
    summary="Read the calibrated parameters",
    operation_id="getParameters",
    responses=error_responses(
        404,
        409,
        422,
        e409="The twin has no checkpointed version (only a damaged database lacks one).",
        e422=BAD_ID,
    ),
)
def parameters(twin: TwinDep, session: SessionDep, cache: TwinCacheDep) -> ParametersRead:
    """The latest version's parameters (named, physical units), learner summary and bounds."""
    return checkpoints.parameters(session, cache, twin)


@router.get(
    "/versions",
    response_model=list[VersionRead],
    summary="List the twin's versions, newest first",
    operation_id="listVersions",
    responses=error_responses(404, 422, e422=BAD_QUERY),
)
def versions(twin: TwinDep, session: SessionDep, limit: Limit = 100) -> list[VersionRead]:
    """Version history, newest first: parameters, watermark, loss and RMSE per output."""
    return history.versions(session, twin.id, limit)


@router.get(
    "/drift",
    response_model=DriftRead,
    summary="Read drift metrics and events",
    operation_id="getDrift",
    responses=error_responses(404, 422, e422=BAD_QUERY),
)
def drift(twin: TwinDep, session: SessionDep, limit: Limit = 100) -> DriftRead:
    """Drift metrics of the latest version, calibration lag and the newest drift events."""
    return history.drift(session, twin, twin_status(session, twin).calibration_lag, limit)


@router.get(
    "/series",
    response_model=SeriesRead,
    summary="Read one output downsampled over a time range",
    operation_id="getSeries",
    responses=error_responses(
        404, 422, e422="Invalid query parameter, or an output the twin does not have (`invalid`)."
    ),
)
def output_series(
    twin: TwinDep,
    session: SessionDep,
    output: Annotated[str | None, Query(description="Output channel (default: the first).")] = None,
    start: Annotated[str | None, Query(description="Epoch seconds or RFC 3339.")] = None,
    end: Annotated[str | None, Query(description="Epoch seconds or RFC 3339.")] = None,
    points: Annotated[int, Query(ge=2, le=10_000, description="Buckets, at most.")] = 1000,
) -> SeriesRead:
    """One output's observed values, predictions and residuals over a time range, downsampled
    on the server to min, max and mean per bucket: a month of 1 Hz data in a thousand points."""
    return series.output_series(
        session, twin, output, query_time(start, "start"), query_time(end, "end"), points
    )
