"""What a twin knows: what-if predictions, parameters, version history and drift."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.deps import SessionDep, SettingsDep, TwinCacheDep, TwinDep
from app.errors import error_responses
from app.schemas import DriftRead, ParametersRead, PredictRequest, PredictResult, VersionRead
from app.services import checkpoints, history
from app.services.twins import twin_status

router = APIRouter(prefix="/twins/{twin_id}", tags=["reads"])

Limit = Annotated[int, Query(ge=1, le=10_000, description="Most entries returned.")]


@router.post("/predict", response_model=PredictResult, responses=error_responses(404, 409, 422))
def predict(
    body: PredictRequest,
    twin: TwinDep,
    session: SessionDep,
    cache: TwinCacheDep,
    settings: SettingsDep,
) -> PredictResult:
    """Roll the twin forward from its latest observed state under future inputs; `std` is the
    spread of noise paths at the twin's recent one-step error. 409 until it has learned."""
    return checkpoints.predict(session, cache, twin, body, settings.max_horizon)


@router.get("/parameters", response_model=ParametersRead, responses=error_responses(404))
def parameters(twin: TwinDep, session: SessionDep, cache: TwinCacheDep) -> ParametersRead:
    """The latest version's parameters (named, physical units), learner summary and bounds."""
    return checkpoints.parameters(session, cache, twin)


@router.get("/versions", response_model=list[VersionRead], responses=error_responses(404))
def versions(twin: TwinDep, session: SessionDep, limit: Limit = 100) -> list[VersionRead]:
    """Version history, newest first: parameters, watermark, loss and RMSE per output."""
    return history.versions(session, twin.id, limit)


@router.get("/drift", response_model=DriftRead, responses=error_responses(404))
def drift(twin: TwinDep, session: SessionDep, limit: Limit = 100) -> DriftRead:
    """Drift metrics of the latest version, calibration lag and the newest drift events."""
    return history.drift(session, twin, twin_status(session, twin).calibration_lag, limit)
