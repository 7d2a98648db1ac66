"""Typed SQLAlchemy models of the schema; `migrations/` is the only thing that creates it."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def json_dumps(value: Any) -> str:
    """The engines' JSON serializer: orjson (fast; NaN and inf become null)."""
    return orjson.dumps(value).decode()


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Twin(Base):
    """One replica of one real system; `last_seq`/`last_ts` describe its newest observation."""

    __tablename__ = "twins"
    __table_args__ = {"sqlite_autoincrement": True}  # ids are never reused after a delete

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    last_ts: Mapped[float | None] = mapped_column(Float)
    last_received_at: Mapped[float | None] = mapped_column(Float)
    late_observations: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # the newest version's number and watermark, written with it (see app.versions): twins
    # with pending observations are those with last_seq > watermark
    version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    watermark: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[float | None] = mapped_column(Float)
    # calibration health: "failing" while the twin's steps raise (see app.calibrator)
    calibration_status: Mapped[str] = mapped_column(String(16), default="ok", server_default="ok")
    calibration_error: Mapped[str | None] = mapped_column(Text)
    calibration_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    retry_at: Mapped[float | None] = mapped_column(Float)
    # Set by DELETE: the twin is gone for every reader at once; app.purge removes its rows
    # (and then it) in small batches, so no transaction holds the write lock for long.
    deleted_at: Mapped[float | None] = mapped_column(Float)


# Observation.flags bits
INPUTS_HELD = 1  # an input was missing (null): the twin holds the previous observation's value
LATE = 2  # older than the twin's newest observation when it arrived
FLAG_NAMES = {INPUTS_HELD: "inputs_held", LATE: "late"}


def flag_names(flags: int) -> list[str]:
    """The names of the bits set in an observation's flags, in bit order."""
    return [name for bit, name in FLAG_NAMES.items() if flags & bit]


class Observation(Base):
    """One accepted observation; inputs and outputs are lists in the spec's channel order, with
    null where a channel is missing.

    On PostgreSQL both keys are covering indexes (docs/fleet.md): the primary key carries
    `received_at`, so the calibration lag and the claim order read the oldest pending
    observation from the index alone, and (twin_id, ts) carries `seq`, so retention by age
    finds what to delete from the index alone."""

    __tablename__ = "observations"
    __table_args__ = (
        PrimaryKeyConstraint("twin_id", "seq", postgresql_include=["received_at"]),
        UniqueConstraint("twin_id", "ts", postgresql_include=["seq"]),
    )

    twin_id: Mapped[int] = mapped_column(ForeignKey("twins.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(BigInteger, autoincrement=False)
    ts: Mapped[float] = mapped_column(Float)
    inputs: Mapped[list[float | None]] = mapped_column(JSON)
    outputs: Mapped[list[float | None]] = mapped_column(JSON)
    received_at: Mapped[float] = mapped_column(Float)
    flags: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Prediction(Base):
    """The prequential one-step prediction of an observation, written by the calibrator."""

    __tablename__ = "predictions"

    twin_id: Mapped[int] = mapped_column(
        ForeignKey("twins.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(Integer)
    prediction: Mapped[list[float | None]] = mapped_column(JSON)
    residual: Mapped[list[float | None]] = mapped_column(JSON)
    # what the first guess (the frozen initial version) predicted; null before revision 0005
    first_guess: Mapped[list[float | None] | None] = mapped_column(JSON)


class SeriesBlock(Base):
    """Aggregates of one output over `size` consecutive observations (seqs block*size+1 to
    (block+1)*size), all learned: what downsampled series reads merge instead of raw rows
    (app.services.blocks). Built by those reads; derived data, deleted with the twin."""

    __tablename__ = "series_blocks"

    twin_id: Mapped[int] = mapped_column(
        ForeignKey("twins.id", ondelete="CASCADE"), primary_key=True
    )
    output: Mapped[int] = mapped_column(Integer, primary_key=True)  # index in the spec's outputs
    size: Mapped[int] = mapped_column(Integer, primary_key=True)  # observations a block spans
    block: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    n: Mapped[int] = mapped_column(Integer)  # observations stored (fewer after retention)
    ts_sum: Mapped[float] = mapped_column(Float)  # of the observations' times
    # per measure (observed, predicted, residual, first_guess): non-null values, min, max, sum
    observed_n: Mapped[int] = mapped_column(Integer)
    observed_min: Mapped[float | None] = mapped_column(Float)
    observed_max: Mapped[float | None] = mapped_column(Float)
    observed_sum: Mapped[float | None] = mapped_column(Float)
    predicted_n: Mapped[int] = mapped_column(Integer)
    predicted_min: Mapped[float | None] = mapped_column(Float)
    predicted_max: Mapped[float | None] = mapped_column(Float)
    predicted_sum: Mapped[float | None] = mapped_column(Float)
    residual_n: Mapped[int] = mapped_column(Integer)
    residual_min: Mapped[float | None] = mapped_column(Float)
    residual_max: Mapped[float | None] = mapped_column(Float)
    residual_sum: Mapped[float | None] = mapped_column(Float)
    first_guess_n: Mapped[int] = mapped_column(Integer)
    first_guess_min: Mapped[float | None] = mapped_column(Float)
    first_guess_max: Mapped[float | None] = mapped_column(Float)
    first_guess_sum: Mapped[float | None] = mapped_column(Float)


class Version(Base):
    """A calibrated state of a twin; `checkpoint` (full state) is kept for the newest few."""

    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("twin_id", "number"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    twin_id: Mapped[int] = mapped_column(ForeignKey("twins.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    watermark: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Float)
    parameters: Mapped[dict[str, float]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    checkpoint: Mapped[bytes | None] = mapped_column(LargeBinary)


class DriftEvent(Base):
    """A drift detector's alarm on one output at one observation."""

    __tablename__ = "drift_events"
    __table_args__ = (
        Index("ix_drift_events_twin_id_seq", "twin_id", "seq"),
        # the "drifting" filter's probe of a twin's recent events, and the twin list's counts
        Index("ix_drift_events_twin_id_created_at", "twin_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    twin_id: Mapped[int] = mapped_column(ForeignKey("twins.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[float] = mapped_column(Float)
    output: Mapped[str] = mapped_column(String(64))
    detector: Mapped[str] = mapped_column(String(64))
    statistic: Mapped[float] = mapped_column(Float)
    start_seq: Mapped[int | None] = mapped_column(BigInteger)  # estimated start of the change
    created_at: Mapped[float] = mapped_column(Float)


class ApiKey(Base):
    """An API key: its SHA-256 (never the key itself), what it may do, and to which twins."""

    __tablename__ = "api_keys"
    __table_args__ = {"sqlite_autoincrement": True}  # a revoked key's id is never reused

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # the key's first characters, to recognize it
    hash: Mapped[str] = mapped_column(String(64), unique=True)  # hex SHA-256 of the whole key
    scopes: Mapped[list[str]] = mapped_column(JSON)
    twins: Mapped[list[int] | None] = mapped_column(JSON)  # null: every twin
    rate: Mapped[float | None] = mapped_column(Float)  # requests/s; null: the service default
    created_at: Mapped[float] = mapped_column(Float)


class Worker(Base):
    """A calibration worker's heartbeat: the live ones share the twins (app.leases)."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)  # its lease owner
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float)
