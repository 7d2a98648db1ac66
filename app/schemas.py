"""Request and response bodies of the REST contract, one family per resource.

Observation batches are not modelled here row by row: `app.services.ingestion` validates them
with plain code for speed, and these classes only document their shape in the OpenAPI schema.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SkipValidation,
    WithJsonSchema,
)

from app.spec_schema import LEARNER, MODEL, SPEC, placeholder

FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0)]

# Control (Cc), format (Cf: bidirectional overrides, zero-width characters), surrogate (Cs) and
# line/paragraph separator (Zl, Zp) characters make a name look like another one, or break logs.
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def visible_name(name: str) -> str:
    for i, ch in enumerate(name):
        if unicodedata.category(ch) in HIDDEN_CATEGORIES:
            raise ValueError(f"character {i} (U+{ord(ch):04X}) is a control or invisible character")
    return name


Name = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(visible_name)]


class ReadModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorBody(BaseModel):
    """Every error response: a code, a sentence, and the offending fields or rows."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": "invalid",
                    "detail": "invalid twin spec: model.params.R: must be positive",
                    "errors": [{"field": "model.params.R", "message": "must be positive"}],
                }
            ]
        }
    )

    error: str = Field(
        description="A stable code: `invalid`, `not_found`, `conflict`, `too_large`, "
        "`unsupported_media_type`, `unauthorized`, `forbidden`, `rate_limited`, `busy`, ..."
    )
    detail: str = Field(description="What is wrong, in a sentence.")
    errors: list[dict[str, Any]] = Field(
        description="Each offending field (`field`, `message`; `index` for a batch row); at "
        "most 100, the detail says how many there were."
    )


# -- probes -----------------------------------------------------------------------------------
class Health(BaseModel):
    status: Literal["ok"]


class WorkerState(BaseModel):
    pid: int | None = Field(description="The first embedded worker's process id.")
    pids: list[int | None] = Field(description="Every embedded worker's process id.")
    reporting: bool = Field(description="Whether every worker reported since it started.")
    heartbeat_age: float = Field(description="Seconds since the most silent worker reported.")
    restarts: int = Field(description="How often workers were restarted, all together.")


class Readiness(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"status": "ready", "revision": "0009"}]}
    )

    status: Literal["ready"]
    revision: str = Field(description="The database schema's revision (the newest).")
    worker: WorkerState | None = Field(
        None, description="The embedded calibration worker, when this process runs one."
    )


class NotReady(ErrorBody):
    status: Literal["unavailable"]
    worker: WorkerState | None = None


# -- twins ------------------------------------------------------------------------------------
CHANNELS = {
    "items": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$"},
    "uniqueItems": True,
}
# what the README's examples use: a heat exchanger's thermal RC twin
EXAMPLE_SPEC = {
    "inputs": ["Q", "T_amb"],
    "outputs": ["T"],
    "model": {"kind": "thermal_rc", "params": {"R": 0.07}, "bounds": {"R": [0.005, 0.5]}},
    "learner": {"method": "pgpe", "half_life": 64, "seed": 1},
}


class TwinCreate(BaseModel):
    """A twin's name and spec: channels, model and learner. The spec is checked by
    `twin.spec.TwinSpec.from_dict`, whose messages name the field (`model.params.R`); a spec
    whose estimated cost exceeds the service's limits is refused naming the option to lower."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "hx-1", **EXAMPLE_SPEC}]}
    )

    name: Name
    inputs: list[str] = Field(
        default_factory=list,
        description="Channels that drive the system (may be empty); unique names.",
        json_schema_extra=CHANNELS,
    )
    outputs: list[str] = Field(
        description="Channels the system measures: at least one; unique names, none also an input.",
        json_schema_extra={**CHANNELS, "minItems": 1},
    )
    model: Annotated[dict[str, Any], WithJsonSchema(placeholder(MODEL))]
    learner: Annotated[
        dict[str, Any] | None, WithJsonSchema({"anyOf": [placeholder(LEARNER), {"type": "null"}]})
    ] = None

    def spec_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude={"name"}, exclude_none=True)


class CalibrationLag(ReadModel):
    observations: int = Field(description="Accepted observations no version has learned yet.")
    seconds: float = Field(
        description="Age of the oldest observation not yet learned: now minus when it was "
        "received; 0 when nothing is pending."
    )


class OutputError(BaseModel):
    twin: float | None = Field(description="The twin's rolling RMSE.")
    first_guess: float | None = Field(description="What the first guess's RMSE would be.")


class DriftSummary(BaseModel):
    events: int = Field(description="Drift events recorded for the twin.")
    last_at: float | None = Field(description="When (server clock) the newest was recorded.")


class TwinRead(ReadModel):
    id: int
    name: str
    # built from stored specs only: not validated again (a page of 10,000 twins walked them all)
    spec: Annotated[dict[str, Any], SkipValidation, WithJsonSchema(placeholder(SPEC))]
    created_at: float
    version: int = Field(description="Number of the latest version (0: the one at creation).")
    watermark: int = Field(description="Newest seq the latest version has learned.")
    last_seq: int = Field(description="Newest accepted seq (0: no observation yet).")
    last_ts: float | None
    calibration_lag: CalibrationLag
    status: Literal["ok", "failing"] = Field(
        description="`failing` while the calibrator cannot learn this twin's observations: it "
        "stays at its last good version and is retried with backoff."
    )
    error: str | None = Field(description="Why the latest calibration attempt failed.")
    failures: int = Field(description="Failed calibration attempts in a row.")
    retry_at: float | None = Field(description="Epoch seconds of the next retry, if waiting.")
    rmse: dict[str, OutputError] = Field(
        default_factory=dict,
        description="Per output: the twin's rolling RMSE and its first guess's, as of the "
        "latest version.",
    )
    drift: DriftSummary | None = None


# -- observations -----------------------------------------------------------------------------
class ObservationIn(BaseModel):
    ts: float | str = Field(description="Epoch seconds, or RFC 3339 (a naive time is UTC).")
    inputs: dict[str, float | None] = Field(
        default_factory=dict,
        description="A null or left-out input is missing: the twin holds its previous value.",
    )
    outputs: dict[str, float | None] = Field(
        description="A null or left-out output is missing; at least one needs a value."
    )


class GatewayObservationIn(ObservationIn):
    twin_id: int | None = Field(None, description="The twin's id (or give `twin`).")
    twin: str | None = Field(None, description="The twin's name (or give `twin_id`).")


class IngestResult(ReadModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"accepted": 2, "duplicates": 0, "first_seq": 1, "last_seq": 2}]
        }
    )

    accepted: int
    duplicates: int = Field(description="Rows whose ts the twin already had, or repeated ts.")
    late: int = Field(
        0, description="Accepted rows older than the twin's newest observation (stored)."
    )
    first_seq: int | None
    last_seq: int | None


class GatewayIngestResult(ReadModel):
    accepted: int = Field(description="Rows stored, over all twins.")
    duplicates: int = Field(description="Rows not stored as duplicates, over all twins.")
    twins: dict[int, IngestResult] = Field(
        description="Per twin id that rows were posted to: its own accepted, duplicates and seqs."
    )


class HistoryRow(BaseModel):
    seq: int
    ts: float
    inputs: dict[str, float | None] = Field(description="null: missing (the twin held it).")
    outputs: dict[str, float | None] = Field(description="null: missing (not learned from).")
    prediction: dict[str, float | None] | None
    residual: dict[str, float | None] | None
    flags: list[str] = Field(
        description='"inputs_held": a missing input was held; "late": older than the twin\'s '
        "newest observation when it arrived."
    )


class History(BaseModel):
    observations: list[HistoryRow]
    next_after_seq: int | None = Field(
        description="Pass as `after_seq` for the next page; null on the last page."
    )
    first_seq: int | None = Field(
        None,
        description="The twin's oldest stored seq: retention removed the ones before it "
        "(null: no observation stored).",
    )


# -- reads ------------------------------------------------------------------------------------
class PredictRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"inputs": [{"Q": 200, "T_amb": 20}, {"Q": 0, "T_amb": 20}], "dt": 60}]
        },
    )

    inputs: list[dict[str, FiniteFloat]] = Field(
        min_length=1, description="One row of future inputs per step (`{}` rows if none)."
    )
    dt: PositiveFloat | list[PositiveFloat] = Field(
        description="Seconds between steps: one number, or one per row."
    )


class PredictResult(ReadModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "version": 134,
                    "context_ts": 1795601200.0,
                    "outputs": [{"T": 24.5}, {"T": 23.9}],
                    "std": [{"T": 0.05}, {"T": 0.07}],
                }
            ]
        }
    )

    version: int
    context_ts: float | None = Field(description="ts of the observation the roll starts from.")
    outputs: list[dict[str, float | None]]
    std: list[dict[str, float | None]]


class ParametersRead(ReadModel):
    version: int
    watermark: int
    parameters: dict[str, float | None]
    learner: dict[str, Any]
    bounds: dict[str, list[float]]


class VersionRead(ReadModel):
    number: int
    watermark: int
    watermark_ts: float | None = Field(
        description="ts of the newest observation this version learned (null for none)."
    )
    created_at: float
    parameters: dict[str, float | None]
    loss: float | None
    rmse: dict[str, float | None] = Field(description="The twin's rolling RMSE per output.")


class DriftEventRead(ReadModel):
    seq: int
    ts: float
    output: str
    detector: str
    statistic: float | None
    start_seq: int | None = Field(
        description="The detector's estimate of the first observation of the new regime."
    )
    start_ts: float | None = Field(description="ts of the observation `start_seq`.")


class LateCounts(ReadModel):
    observations: int = Field(
        description="Accepted observations older than the twin's newest when they arrived."
    )
    skipped: int = Field(
        description="Of those, learned observations that came after the twin had learned past "
        "their time: stored and shown, with a null prediction, but not learned."
    )


class DriftRead(ReadModel):
    version: int
    watermark: int
    calibration_lag: CalibrationLag
    late: LateCounts
    outputs: dict[str, Any] = Field(
        description="Per output: the errors of the twin and of its frozen first guess."
    )
    parameters: dict[str, Any] = Field(
        description="Per parameter: first guess, first converged estimate, current value, "
        "change since the converged estimate (null before it) and over recent versions."
    )
    alarms: int
    events: list[DriftEventRead]


# -- API keys ---------------------------------------------------------------------------------
Scope = Literal["read", "ingest", "admin"]


class KeyCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"name": "gateway-1", "scopes": ["ingest"], "twins": [1]}]},
    )

    name: str = Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")
    scopes: list[Scope] = Field(
        min_length=1,
        description="`read`: GETs and predict; `ingest`: posting observations; "
        "`admin`: creating and deleting twins, managing keys, and everything else.",
    )
    twins: list[Annotated[int, Field(ge=1, le=2**31 - 1)]] | None = Field(
        None, description="Limit the key to these twin ids (null: every twin)."
    )
    rate: PositiveFloat | None = Field(
        None, description="Requests per second for this key (null: the service's setting)."
    )


class KeyRead(ReadModel):
    id: int
    name: str
    prefix: str = Field(description="The key's first characters, to recognize it.")
    scopes: list[str]
    twins: list[int] | None
    rate: float | None
    created_at: float


class KeyCreated(KeyRead):
    key: str = Field(description="The key itself: shown this once, stored only as a hash.")


class SeriesStats(BaseModel):
    min: list[float | None]
    max: list[float | None]
    mean: list[float | None]


class SeriesRead(BaseModel):
    """One output over a time range in equal-width buckets (min, max and mean per bucket)."""

    output: str
    start: float | None
    end: float | None
    bucket_seconds: float = Field(description="Width of a bucket (0 when the range is empty).")
    ts: list[float] = Field(description="Mean observation time of each non-empty bucket.")
    count: list[int] = Field(description="Observations in each bucket.")
    observed: SeriesStats
    predicted: SeriesStats = Field(description="The prequential predictions (null: not yet).")
    residual: SeriesStats
    first_guess: SeriesStats = Field(description="What the first guess predicted.")
