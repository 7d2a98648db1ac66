"""What the API answers, as plain dataclasses.

Each class names the fields of the REST contract; `from_dict` keeps any field a newer server
adds in `extra`, so an old client never breaks on a new answer. `to_pandas()`/`to_numpy()`
exist where a table is natural and import pandas or numpy only when called: neither is a
dependency of the client.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Self


class _Result:
    """`from_dict` for the dataclasses below: known fields by name, the rest in `extra`."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}  # type: ignore[arg-type]
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**known, extra=extra)  # type: ignore[call-arg]


@dataclass(frozen=True)
class CalibrationLag(_Result):
    observations: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Twin(_Result):
    """One twin with its status (`GET /twins/{id}`)."""

    id: int
    name: str
    spec: dict[str, Any]
    created_at: float
    version: int
    watermark: int
    last_seq: int
    last_ts: float | None
    calibration_lag: CalibrationLag
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Twin:
        data = {**data, "calibration_lag": CalibrationLag.from_dict(data["calibration_lag"])}
        return super().from_dict(data)

    @property
    def inputs(self) -> list[str]:
        return list(self.spec.get("inputs", []))

    @property
    def outputs(self) -> list[str]:
        return list(self.spec["outputs"])


@dataclass(frozen=True)
class IngestResult(_Result):
    """What a post of observations did: rows stored, duplicates counted, seqs given.

    For an upload the client split into batches, the sums over all of them (`batches` says
    how many requests it took)."""

    accepted: int
    duplicates: int
    first_seq: int | None
    last_seq: int | None
    batches: int = 1
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __add__(self, other: IngestResult) -> IngestResult:
        return IngestResult(
            accepted=self.accepted + other.accepted,
            duplicates=self.duplicates + other.duplicates,
            first_seq=self.first_seq if self.first_seq is not None else other.first_seq,
            last_seq=other.last_seq if other.last_seq is not None else self.last_seq,
            batches=self.batches + other.batches,
        )


@dataclass(frozen=True)
class HistoryRow(_Result):
    seq: int
    ts: float
    inputs: dict[str, float | None]
    outputs: dict[str, float | None]
    prediction: dict[str, float | None] | None
    residual: dict[str, float | None] | None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class History(_Result):
    """Observations with their prequential prediction and residual, in `seq` order."""

    observations: list[HistoryRow]
    next_after_seq: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        rows = [HistoryRow.from_dict(r) for r in data["observations"]]
        return super().from_dict({**data, "observations": rows})

    def columns(self) -> dict[str, list]:
        """Column name -> values: `seq`, `ts`, each channel, and `predicted.<output>` and
        `residual.<output>` (None where not learned yet)."""
        cols: dict[str, list] = {"seq": [], "ts": []}
        for row in self.observations:
            cols["seq"].append(row.seq)
            cols["ts"].append(row.ts)
            values = {**row.inputs, **row.outputs}
            for name in row.outputs:
                values[f"predicted.{name}"] = (row.prediction or {}).get(name)
                values[f"residual.{name}"] = (row.residual or {}).get(name)
            for name, value in values.items():
                cols.setdefault(name, []).append(value)
        return cols

    def to_numpy(self) -> dict[str, Any]:
        """`columns()` as float arrays (NaN for None); needs numpy."""
        np = _optional("numpy")
        return {
            k: np.array([np.nan if v is None else v for v in vs], dtype=float)
            for k, vs in self.columns().items()
        }

    def to_pandas(self):
        """A DataFrame indexed by UTC time with the `columns()`; needs pandas."""
        pd = _optional("pandas")
        frame = pd.DataFrame(self.columns())
        frame.index = pd.to_datetime(frame.pop("ts"), unit="s", utc=True)
        return frame


@dataclass(frozen=True)
class Prediction(_Result):
    """A what-if roll: one row of outputs (and their spread `std`) per row of future inputs."""

    version: int
    context_ts: float | None
    outputs: list[dict[str, float | None]]
    std: list[dict[str, float | None]]
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_numpy(self) -> dict[str, Any]:
        """Output name -> array of predictions, and `std.<output>` -> their spread."""
        np = _optional("numpy")
        out: dict[str, Any] = {}
        for prefix, rows in (("", self.outputs), ("std.", self.std)):
            for name in rows[0] if rows else ():
                values = [np.nan if r.get(name) is None else r[name] for r in rows]
                out[prefix + name] = np.array(values, dtype=float)
        return out

    def to_pandas(self):
        pd = _optional("pandas")
        return pd.DataFrame(self.to_numpy())


@dataclass(frozen=True)
class Parameters(_Result):
    """The latest version's parameters (physical units), learner summary and bounds."""

    version: int
    watermark: int
    parameters: dict[str, float | None]
    learner: dict[str, Any]
    bounds: dict[str, list[float]]
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Version(_Result):
    number: int
    watermark: int
    created_at: float
    parameters: dict[str, float | None]
    loss: float | None
    rmse: dict[str, float | None]
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class DriftEvent(_Result):
    seq: int
    ts: float
    output: str
    detector: str
    statistic: float | None
    start_seq: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Drift(_Result):
    """Drift metrics of the latest version: the twin's and the first guess's errors per output
    (`outputs`), parameter change (`parameters`), calibration lag and recent drift events."""

    version: int
    watermark: int
    calibration_lag: CalibrationLag
    outputs: dict[str, Any]
    parameters: dict[str, Any]
    alarms: int
    events: list[DriftEvent]
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Drift:
        data = {
            **data,
            "calibration_lag": CalibrationLag.from_dict(data["calibration_lag"]),
            "events": [DriftEvent.from_dict(e) for e in data["events"]],
        }
        return super().from_dict(data)


@dataclass(frozen=True)
class Readiness(_Result):
    """`GET /readyz`: ready, or why not (`detail`)."""

    status: str
    revision: str | None = None
    detail: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ready(self) -> bool:
        return self.status == "ready"


def _optional(module: str):
    try:
        return __import__(module)
    except ImportError as e:
        raise ImportError(
            f"this needs {module}, which is not installed: pip install {module}"
        ) from e
