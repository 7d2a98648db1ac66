"""Posting observations (JSON or NDJSON) and reading them back with their predictions."""

from __future__ import annotations

import math
from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Request, Response, status
from pydantic import TypeAdapter
from sqlalchemy.orm import Session

from app.deps import GroupCommitDep, MetricsDep, SessionDep, SettingsDep, TwinDep
from app.errors import DomainError, Invalid, NotFound, TooLarge, error_responses
from app.limits import MAX_INT64, TwinId
from app.schemas import History, IngestResult, ObservationIn
from app.services import history, ingestion
from app.services.commits import post as commits_post

router = APIRouter(prefix="/twins/{twin_id}/observations", tags=["observations"])

_ROW_SCHEMA = TypeAdapter(ObservationIn).json_schema()
# the README's examples: a heat exchanger's heat input Q, ambient T_amb and temperature T
_ROWS = [
    {"ts": "2026-11-25T10:00:00Z", "inputs": {"Q": 250.0, "T_amb": 21.0}, "outputs": {"T": 33.9}},
    {"ts": "2026-11-25T10:00:10Z", "inputs": {"Q": 250.0, "T_amb": 21.0}, "outputs": {"T": 34.0}},
]
INGESTED = {"accepted": 2, "duplicates": 0, "first_seq": 1, "last_seq": 2}
BATCH_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["observations"],
                "properties": {"observations": {"type": "array", "items": _ROW_SCHEMA}},
            },
            "example": {"observations": _ROWS},
        },
        "application/x-ndjson": {
            "schema": {"type": "string", "description": "One observation object per line."},
            "example": '{"ts": 1795601000, "inputs": {"Q": 0, "T_amb": 20}, '
            '"outputs": {"T": 30}}\n',
        },
        "text/csv": {
            "schema": {
                "type": "string",
                "description": "A header row `ts,<channel>,...` (every input and output of the "
                "twin, any order), then one observation per row; an empty cell is a missing "
                "value.",
            },
            "example": "ts,Q,T_amb,T\n2026-11-25T10:20:00Z,0,20,29.5\n",
        },
    },
}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=IngestResult,
    summary="Post observations to a twin",
    operation_id="postObservations",
    responses={
        202: {
            "description": "Accepted and durable: stored (or counted as duplicates) before "
            "this answer.",
            "content": {"application/json": {"example": INGESTED}},
        },
        **error_responses(
            404,
            413,
            415,
            422,
            e413="More rows than `TANDEM_MAX_BATCH_ROWS`, or a body over "
            "`TANDEM_MAX_BODY_BYTES` (`too_large`).",
            e415="A content type other than JSON, NDJSON or CSV (`unsupported_media_type`).",
            e422="A bad row: nothing was stored; `errors` names each row's `index` and field "
            "(`invalid`).",
        ),
    },
    openapi_extra={"requestBody": BATCH_BODY},
)
async def post_observations(
    request: Request,
    twin_id: TwinId,
    settings: SettingsDep,
    metrics: MetricsDep,
    commits: GroupCommitDep,
) -> IngestResult:
    """Store a batch of observations, all or nothing; duplicates of stored `ts` are counted and
    skipped. The response comes after the commit: a 202 means the batch is durable."""
    content_type = request.headers.get("content-type")
    ingestion.media_kind(content_type)  # 415 before reading a body it would not take
    body = await read_body(request, settings.max_body_bytes)

    channels = request.app.state.channels

    def check(session: Session) -> tuple[str, list[ingestion.Row]]:
        cached = channels.cached(twin_id)
        name, inputs, outputs = channels.get(session, twin_id)
        try:
            raw = ingestion.parse_batch(
                body, content_type, settings.max_batch_rows, inputs, outputs
            )
            window = ingestion.ts_window(settings.min_ts, settings.max_ts_ahead)
            return name, ingestion.check_rows(raw, inputs, outputs, window)
        except DomainError:
            if cached:  # a twin deleted since it was cached is not found, not a bad body
                channels.load(session, twin_id)
            raise

    try:
        (name, _), result = await commits_post(
            request.app.state.sessions,
            commits,
            check,
            lambda session, checked: ingestion.store(session, twin_id, checked[1]),
            lambda checked: (len(checked[1]), twin_id),
        )
    except NotFound:  # deleted since its channels were cached
        channels.forget(twin_id)
        raise
    metrics.ingested(name, result.accepted, result.duplicates)
    return result


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the body has {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.get(
    "",
    response_model=History,
    summary="Read a twin's observations with predictions",
    operation_id="listObservations",
    responses=error_responses(404, 422, e422="Invalid query parameter (`invalid`)."),
)
def read_observations(
    twin: TwinDep,
    session: SessionDep,
    settings: SettingsDep,
    start: Annotated[
        str | None, Query(description="Oldest ts, inclusive: epoch seconds or RFC 3339.")
    ] = None,
    end: Annotated[
        str | None, Query(description="Newest ts, inclusive: epoch seconds or RFC 3339.")
    ] = None,
    after_seq: Annotated[
        int | None, Query(ge=0, le=MAX_INT64, description="Only rows with a larger seq (paging).")
    ] = None,
    limit: Annotated[int | None, Query(ge=1, description="Rows per page.")] = None,
) -> Response:
    """Observations in `seq` (arrival) order with the prequential prediction and residual per
    output (null until a version has learned the observation, and for a late one it skipped)
    and flags ("late", "inputs_held")."""
    limit = min(limit or settings.history_limit, settings.max_history_limit)
    page = history.observation_history(
        session, twin, query_time(start, "start"), query_time(end, "end"), after_seq, limit
    )
    return Response(orjson.dumps(page), media_type="application/json")


def query_time(value: str | None, field: str) -> float | None:
    """A query parameter given as epoch seconds or RFC 3339, as epoch seconds; 422 otherwise."""
    if value is None:
        return None
    try:
        ts = float(value)
    except ValueError:
        try:
            ts = ingestion.parse_time(value)
        except ValueError:
            ts = math.nan
    if not math.isfinite(ts):
        raise Invalid(
            f"{field} must be epoch seconds or an RFC 3339 time",
            [{"field": field, "message": f"{value!r} is not a time"}],
        )
    return ts
