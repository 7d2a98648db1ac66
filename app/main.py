"""The app factory: settings in, FastAPI app out; the database is opened in the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute

from app import dashboard
from app.apidocs import install_api_docs
from app.auth import install_access
from app.config import Settings
from app.db import make_engine, make_session_factory, upgrade
from app.errors import install_error_handlers
from app.limits import install_limits, pool_options
from app.metrics import RequestMetrics, ServiceMetrics
from app.openapi import install_openapi
from app.purge import start_purger
from app.routes import gateway, observations, ops, reads, twins
from app.services.channels import ChannelCache
from app.services.checkpoints import TwinCache
from app.services.commits import GroupCommit

DESCRIPTION = """Digital twins that follow drifting real systems.

Post a twin's spec, stream observations to it, and read back what-if predictions, calibrated
parameters, version history and drift. Errors are `{"error", "detail", "errors": [...]}`."""


def operation_id(route: APIRoute) -> str:
    """A route's operationId where it does not set one: its function's name in camelCase
    (`read_twin` -> `readTwin`), stable for client generators."""
    first, *rest = route.name.split("_")
    return first + "".join(part.capitalize() for part in rest)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url, **pool_options(settings))
        if settings.migrate_on_startup:
            await run_in_threadpool(upgrade, engine)
        app.state.engine = engine
        app.state.sessions = make_session_factory(engine)
        app.state.purger = start_purger(app.state.sessions, settings)
        if settings.group_commit or (
            settings.group_commit is None and engine.dialect.name == "sqlite"
        ):
            app.state.commits = GroupCommit(engine)
        worker = None
        if settings.worker:
            from app.embedded import EmbeddedWorkers  # torch-heavy; only when workers run here

            metrics = app.state.metrics
            worker = EmbeddedWorkers(
                settings, app.state.sessions, on_restart=metrics.worker_restarts.inc
            ).start()
            metrics.worker_heartbeat_age.set_function(worker.heartbeat_age)
        app.state.worker = worker
        try:
            yield
        finally:
            if worker is not None:
                await run_in_threadpool(worker.stop)
            await run_in_threadpool(app.state.purger.stop)
            if app.state.commits is not None:
                await run_in_threadpool(app.state.commits.close)
                app.state.commits = None
            app.state.sessions = None
            engine.dispose()

    app = FastAPI(
        generate_unique_id_function=operation_id,
        title="Tandem",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.sessions = None
    app.state.worker = None
    app.state.commits = None  # app.services.commits.GroupCommit when group commit is on
    app.state.twin_cache = TwinCache(settings.twin_cache_size)
    app.state.channels = ChannelCache()  # a posting twin's name and channels
    app.state.metrics = ServiceMetrics(lambda: app.state.sessions)
    install_error_handlers(app)
    install_limits(app, settings)  # bodies read in full, bounded, inside access control
    install_access(app, settings)  # keys routes, access control, CORS
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    for module in (twins, observations, gateway, reads, ops):
        app.include_router(module.router)
    app.include_router(dashboard.router)
    install_openapi(app)
    install_api_docs(app)  # before /static: its assets live under /static/api-docs
    app.mount("/static", dashboard.static, name="static")
    return app
