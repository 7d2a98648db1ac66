"""Creating, listing, reading and deleting twins."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from app.auth import AccessDep
from app.db import after_commit
from app.deps import MetricsDep, SessionDep, TwinCacheDep, TwinDep
from app.errors import error_responses
from app.schemas import TwinCreate, TwinRead
from app.services import twins as service

router = APIRouter(prefix="/twins", tags=["twins"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TwinRead,
    responses=error_responses(409, 422),
)
def create_twin(body: TwinCreate, session: SessionDep, response: Response) -> TwinRead:
    """Create a twin and its initial, untrained version 0."""
    twin = service.create_twin(session, body)
    response.headers["Location"] = f"/twins/{twin.id}"
    return TwinRead.model_validate(service.twin_status(session, twin))


@router.get("", response_model=list[TwinRead])
def list_twins(session: SessionDep, access: AccessDep) -> list[TwinRead]:
    """All twins with their status, oldest first (those of the key, if it is limited)."""
    twins = [t for t in service.list_twins(session) if access.sees(t.id)]
    statuses = service.twin_statuses(session, twins)
    return [TwinRead.model_validate(s) for s in statuses]


@router.get("/{twin_id}", response_model=TwinRead, responses=error_responses(404))
def read_twin(twin: TwinDep, session: SessionDep) -> TwinRead:
    """One twin with its status: latest version, newest seq, watermark and calibration lag."""
    return TwinRead.model_validate(service.twin_status(session, twin))


@router.delete("/{twin_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404))
def delete_twin(
    twin: TwinDep, session: SessionDep, cache: TwinCacheDep, metrics: MetricsDep
) -> Response:
    """Delete a twin with its observations, versions and drift events."""
    twin_id, name = twin.id, twin.name
    service.delete_twin(session, twin)
    after_commit(session, lambda: (cache.evict(twin_id), metrics.forget(name)))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
