"""Request dependencies, each declared once as an `Annotated` alias."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import run_after_commit
from app.limits import TwinId
from app.metrics import ServiceMetrics
from app.services.checkpoints import TwinCache
from app.services.commits import GroupCommit
from app.services.twins import get_twin
from app.tables import Twin


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """One session per request: commit when the route succeeds, roll back when it raises."""
    session = request.app.state.sessions()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
    run_after_commit(session)


async def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


async def get_commits(request: Request) -> GroupCommit | None:
    return request.app.state.commits


async def get_twin_cache(request: Request) -> TwinCache:
    return request.app.state.twin_cache


SettingsDep = Annotated[Settings, Depends(get_settings)]
# scope="function": commit before the response is sent, so a 2xx means the data is durable
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
TwinCacheDep = Annotated[TwinCache, Depends(get_twin_cache)]
GroupCommitDep = Annotated[GroupCommit | None, Depends(get_commits)]


def get_path_twin(twin_id: TwinId, session: SessionDep) -> Twin:
    return get_twin(session, twin_id)


TwinDep = Annotated[Twin, Depends(get_path_twin)]
