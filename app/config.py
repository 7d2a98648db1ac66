"""Service settings, read from the environment with the `TANDEM_` prefix (or a `.env` file)."""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TANDEM_", env_file=".env", extra="ignore")

    database_url: str = "sqlite:///./tandem.db"
    run_migrations: bool | None = Field(
        None, description="Upgrade the schema to head at startup; default: on for SQLite only."
    )
    worker: bool = Field(True, description="Run the calibrator inside the API process.")
    embedded_workers: int = Field(
        default_factory=lambda: default_embedded_workers(),
        gt=0,
        description="Calibrator processes `tandem serve` runs beside the API; default one per "
        "usable core, at most 2 (docs/fleet.md, 'Several embedded workers').",
    )

    # ingestion and reads
    max_batch_rows: int = Field(10_000, gt=0)
    max_body_bytes: int = Field(16 * 1024 * 1024, gt=0)
    group_commit: bool | None = Field(
        None,
        description="Posts of observations share transactions (one commit for the posts that "
        "arrive while one commits); default: on for SQLite only.",
    )
    max_horizon: int = Field(10_000, gt=0)
    history_limit: int = Field(1_000, gt=0, description="Default rows per history page.")
    max_history_limit: int = Field(10_000, gt=0)
    twin_cache_size: int = Field(32, ge=0, description="Loaded twins kept in memory (LRU).")
    min_ts: float = Field(
        0.0, allow_inf_nan=False, description="Oldest accepted ts, epoch seconds (1970-01-01)."
    )
    max_ts_ahead: float = Field(
        86_400.0, ge=0, allow_inf_nan=False, description="How far ahead of the clock a ts may be."
    )

    # what one request may cost (app.limits)
    max_request_bytes: int = Field(
        2 * 1024 * 1024, gt=0, description="Body size of every route but observations'."
    )
    body_timeout: float = Field(30.0, gt=0, description="Seconds a request body may take.")
    pool_size: int = Field(5, gt=0, description="Database connections the API keeps open.")
    pool_overflow: int = Field(10, ge=0, description="Extra connections under load.")
    pool_timeout: float = Field(
        1.0, gt=0, description="Seconds a request waits for a connection before a 503."
    )

    # what a twin may cost (twin.learners.cost, app.limits)
    max_channels: int = Field(256, gt=0, description="Inputs plus outputs of one twin.")
    max_parameters: int = Field(100_000, gt=0, description="Parameters of one twin's model.")
    max_update_memory_mb: float = Field(512.0, gt=0, description="Estimated memory of an update.")
    max_update_seconds: float = Field(10.0, gt=0, description="Estimated time of an update.")
    max_whatif_values: int = Field(
        5_200_000, gt=0, description="Steps x (paths + 1) x outputs of one what-if."
    )
    max_whatif_seconds: float = Field(5.0, gt=0, description="Estimated time of one what-if.")

    # deleted twins (app.purge)
    purge_batch: int = Field(1_000, gt=0, description="Rows a purge transaction deletes.")
    purge_pause: float = Field(0.01, ge=0, description="Seconds between purge transactions.")
    purge_interval: float = Field(60.0, gt=0, description="Seconds between purge sweeps.")

    # calibrator (app.calibrator, app.embedded)
    calibration_batch: int = Field(1024, gt=0, description="Most observations per version.")
    calibration_twins: int = Field(
        64, gt=0, description="Most twins one calibrator pass learns and commits together."
    )
    lease_seconds: float = Field(30.0, gt=0, description="How long a worker's claim lasts.")
    poll_interval: float = Field(0.1, gt=0, description="Seconds between calibrator polls.")
    keep_checkpoints: int = Field(3, gt=0, description="Newest versions that keep full state.")
    version_retention: int = Field(20_000, ge=0, description="Versions kept per twin (0: all).")
    # retention (app.retention), applied by the worker; 0 keeps everything
    observation_retention_seconds: float = Field(
        0.0, ge=0, description="Observations (with predictions) older than this go (s, by ts)."
    )
    observation_retention_count: int = Field(
        0, ge=0, description="Newest observations kept per twin."
    )
    prediction_retention_seconds: float = Field(
        0.0, ge=0, description="Predictions of observations older than this go (s, by ts)."
    )
    prediction_retention_count: int = Field(
        0, ge=0, description="Newest predictions kept per twin."
    )
    version_retention_seconds: float = Field(
        0.0, ge=0, description="Versions written longer ago than this go (s)."
    )
    version_thin_after: float = Field(
        0.0, ge=0, description="Versions older than this (s) are thinned to every k-th."
    )
    version_thin_every: int = Field(0, ge=0, description="k: thinned versions keep every k-th.")
    retention_batch: int = Field(500, gt=0, description="Rows one retention transaction deletes.")
    retention_interval: float = Field(60.0, gt=0, description="Seconds between retention sweeps.")
    torch_threads: int = Field(1, gt=0, description="torch intra-op threads of a worker.")
    calibration_budget: float = Field(
        1.0, ge=0, description="Seconds of learning per pass, its twins together (0: no limit)."
    )
    heartbeat_timeout: float = Field(
        10.0, gt=0, description="/readyz fails when the embedded worker is silent this long."
    )
    retry_cap: float = Field(60.0, gt=0, description="Longest wait before retrying a failing twin.")

    # access (app.auth): API keys, rate limits, CORS
    auth: Literal["auto", "on", "off"] = Field(
        "auto", description="auto: on when listening beyond loopback or when any API key exists."
    )
    rate_limit: float = Field(50.0, ge=0, description="Requests/s per API key (0: no limit).")
    rate_burst: int = Field(100, gt=0, description="Requests a key may send at once.")
    key_refresh_seconds: float = Field(
        1.0, ge=0, description="How old the API's snapshot of the keys table may be."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed cross-site (comma-separated)."
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def migrate_on_startup(self) -> bool:
        return self.is_sqlite if self.run_migrations is None else self.run_migrations


MAX_DEFAULT_EMBEDDED_WORKERS = 2  # they share SQLite's one writer; more were not measured


def default_embedded_workers() -> int:
    """One calibrator child per core this process may use, at most two: a child learns on one
    core, and the API's requests take part of a core beside them (on 2 cores, at 5,000 twins two
    children kept the calibration lag p95 at 5.9 s where one let it grow to 15.7 s, and one
    client's large posts went as fast with two)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT_EMBEDDED_WORKERS))
