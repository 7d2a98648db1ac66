"""Posting observations for many twins in one body (`POST /observations`), for gateways."""

from __future__ import annotations

import functools

from fastapi import APIRouter, Request, status
from pydantic import TypeAdapter
from sqlalchemy.orm import Session

from app.auth import AccessDep
from app.deps import GroupCommitDep, MetricsDep, SettingsDep
from app.errors import error_responses
from app.routes.observations import read_body
from app.schemas import GatewayIngestResult, GatewayObservationIn
from app.services import gateway, ingestion
from app.services.commits import post as commits_post

router = APIRouter(prefix="/observations", tags=["observations"])

_ROW_SCHEMA = TypeAdapter(GatewayObservationIn).json_schema()
GATEWAY_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["observations"],
                "properties": {"observations": {"type": "array", "items": _ROW_SCHEMA}},
            },
            "example": {
                "observations": [
                    {"twin_id": 1, "ts": 1735689600, "inputs": {"heat": 1.0}, "outputs": {"T": 21}},
                    {"twin": "ahu-7", "ts": 1735689600, "inputs": {}, "outputs": {"flow": 3.2}},
                ]
            },
        },
        "application/x-ndjson": {
            "schema": {
                "type": "string",
                "description": "One observation object per line, each with twin_id or twin.",
            }
        },
        "text/csv": {
            "schema": {
                "type": "string",
                "description": "A header row `twin_id` (or `twin`), `ts`, then channel columns "
                "(the union of the twins' channels); each row fills its own twin's channels "
                "and leaves the others empty. An empty cell of its twin's channel is missing.",
            },
            "example": "twin_id,ts,heat,T,flow\n1,1735689600,1.0,21.0,\n2,1735689600,,,3.2\n",
        },
    },
}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=GatewayIngestResult,
    summary="Post observations of many twins (gateways)",
    operation_id="postGatewayObservations",
    responses=error_responses(
        403,
        413,
        415,
        422,
        e403="A row of a twin outside the key's twins, or outside its scopes (`forbidden`).",
        e422="A bad row, or one naming no twin: nothing was stored; `errors` names each row's "
        "`index`, `twin` and field (`invalid`).",
    ),
    openapi_extra={"requestBody": GATEWAY_BODY},
)
async def post_gateway_observations(
    request: Request,
    settings: SettingsDep,
    metrics: MetricsDep,
    access: AccessDep,
    commits: GroupCommitDep,
) -> GatewayIngestResult:
    """Store observations of many twins, each row naming its twin by `twin_id` or `twin`
    (name): all or nothing over the whole body, with each twin's rows under the rules of
    `POST /twins/{id}/observations`. Errors name the row (`index`) and its `twin`; a key
    limited to some twins gets 403 for a row of any other. The 202 comes after the commit."""
    content_type = request.headers.get("content-type")
    ingestion.media_kind(content_type)  # 415 before reading a body it would not take
    body = await read_body(request, settings.max_body_bytes)

    def check(session: Session) -> gateway.Checked:
        raw = gateway.parse_body(body, content_type, settings.max_batch_rows)
        window = ingestion.ts_window(settings.min_ts, settings.max_ts_ahead)
        check = functools.partial(ingestion.check_rows, window=window)
        return gateway.prepare(session, raw, check, access.sees)

    checked, result = await commits_post(
        request.app.state.sessions,
        commits,
        check,
        gateway.store,
        lambda checked: (checked.size, min(checked.rows, default=0)),
    )
    for twin_id, part in result.twins.items():
        metrics.ingested(checked.names[twin_id], part.accepted, part.duplicates)
    return result
