"""Creating, listing, reading and deleting twins."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response, status
from pydantic import TypeAdapter

from app.auth import AccessDep
from app.db import after_commit
from app.deps import MetricsDep, SessionDep, SettingsDep, TwinCacheDep, TwinDep
from app.errors import error_responses
from app.limits import update_budget
from app.schemas import TwinCreate, TwinRead
from app.services import fleet
from app.services import twins as service

router = APIRouter(prefix="/twins", tags=["twins"])
PAGE = TypeAdapter(list[TwinRead])

LOCATION = {
    "Location": {"description": "The new twin's path, `/twins/{id}`.", "schema": {"type": "string"}}
}
TOTAL_COUNT = {
    "X-Total-Count": {
        "description": "How many twins match the filter, over all pages.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=TwinRead,
    summary="Create a twin",
    operation_id="createTwin",
    responses={
        201: {"description": "Created: the twin at version 0.", "headers": LOCATION},
        **error_responses(
            409,
            422,
            e409="A twin has that name (`conflict`).",
            e422="Invalid spec, naming the field (`model.params.R`), or a spec whose channels, "
            "size or estimated update cost exceed the service's limits, naming the option to "
            "lower (`invalid`).",
        ),
    },
)
def create_twin(
    body: TwinCreate, session: SessionDep, settings: SettingsDep, response: Response
) -> TwinRead:
    """Create a twin and its initial, untrained version 0. A spec whose channels, model size or
    estimated update cost exceed the configured limits is 422 naming the option to lower."""
    twin = service.create_twin(session, body, update_budget(settings))
    response.headers["Location"] = f"/twins/{twin.id}"
    return TwinRead.model_validate(service.twin_status(session, twin))


@router.get(
    "",
    response_model=list[TwinRead],
    summary="List twins with their status",
    operation_id="listTwins",
    responses={
        200: {"description": "One page of twins.", "headers": TOTAL_COUNT},
        **error_responses(422, e422="Invalid query parameter (`invalid`)."),
    },
)
def list_twins(
    session: SessionDep,
    access: AccessDep,
    prefix: Annotated[str | None, Query(max_length=128, description="Name prefix.")] = None,
    sort: Annotated[
        Literal["id", "name", "last_ts", "lag"],
        Query(description="Order: id, name, newest observation, or pending observations."),
    ] = "id",
    desc: Annotated[bool, Query(description="Descending order.")] = False,
    limit: Annotated[int | None, Query(ge=1, le=10_000, description="Twins per page.")] = None,
    offset: Annotated[int, Query(ge=0, le=2**31, description="Twins skipped.")] = 0,
    lagging: Annotated[
        float | None,
        Query(ge=0, le=1e12, description="Only twins whose calibration lag exceeds this (s)."),
    ] = None,
    drifting: Annotated[
        bool | None,
        Query(description="Only twins with (true) or without (false) a drift event this hour."),
    ] = None,
) -> Response:
    """Twins with their status and health (those of the key, if it is limited), oldest first
    unless sorted otherwise; every twin unless `limit` pages them. `X-Total-Count` says how
    many match the filters."""
    only = None if access.key is None else access.key.twins
    statuses, total = fleet.page_twins(
        session, prefix, sort, desc, limit, offset, only, lagging, drifting
    )
    # serialized once here: FastAPI would validate the page's models again before dumping them
    return Response(
        PAGE.dump_json(_reads(session, statuses)),
        media_type="application/json",
        headers={"X-Total-Count": str(total)},
    )


@router.get(
    "/{twin_id}",
    response_model=TwinRead,
    summary="Read a twin's status",
    operation_id="getTwin",
    responses=error_responses(404, 422, e422="Invalid twin id (`invalid`)."),
)
def read_twin(twin: TwinDep, session: SessionDep) -> TwinRead:
    """One twin with its status (latest version, newest seq, watermark, calibration lag) and
    health (current error against the first guess, drift events)."""
    return _reads(session, [service.twin_status(session, twin)])[0]


def _reads(session, statuses) -> list[TwinRead]:
    health = fleet.health(session, statuses)
    return [TwinRead.model_validate({**vars(s), **health[s.id]}) for s in statuses]


@router.delete(
    "/{twin_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a twin and its history",
    operation_id="deleteTwin",
    responses={
        204: {"description": "Deleted."},
        **error_responses(404, 422, e422="Invalid twin id (`invalid`)."),
    },
)
def delete_twin(
    twin: TwinDep, session: SessionDep, cache: TwinCacheDep, metrics: MetricsDep, request: Request
) -> Response:
    """Delete a twin with its observations, versions and drift events: gone at once for every
    reader, its rows purged in small batches afterwards."""
    twin_id, name = twin.id, twin.name
    service.delete_twin(session, twin)
    purger = request.app.state.purger
    after_commit(session, lambda: (cache.evict(twin_id), metrics.forget(name), purger.wake()))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
