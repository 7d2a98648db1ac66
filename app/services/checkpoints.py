"""Loading a twin's newest checkpointed version into memory, and the reads that need the loaded
twin: what-if prediction and the learner summary. Loaded twins are kept in a small LRU keyed by
(twin id, version number); twin ids are never reused, so a key never goes stale."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, defer

from app.errors import Conflict, Invalid
from app.schemas import ParametersRead, PredictRequest, PredictResult
from app.services.history import latest_version
from app.tables import Twin, Version

if TYPE_CHECKING:
    from twin.replica import Twin as Replica


class TwinCache:
    """A thread-safe LRU of loaded twins."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[tuple[int, int], Replica] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int]) -> Replica | None:
        with self._lock:
            replica = self._items.get(key)
            if replica is not None:
                self._items.move_to_end(key)
            return replica

    def put(self, key: tuple[int, int], replica: Replica) -> None:
        with self._lock:
            self._items[key] = replica
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def evict(self, twin_id: int) -> None:
        with self._lock:
            for key in [k for k in self._items if k[0] == twin_id]:
                del self._items[key]

    def __len__(self) -> int:
        return len(self._items)


def load_replica(session: Session, cache: TwinCache, twin_id: int) -> tuple[Version, Replica]:
    """The newest version of a twin that has a checkpoint, and the twin loaded from it."""
    from twin.replica import Twin as Replica

    version = session.scalars(
        select(Version)
        .options(defer(Version.checkpoint))
        .where(Version.twin_id == twin_id, Version.checkpoint.is_not(None))
        .order_by(Version.number.desc())
        .limit(1)
    ).first()
    if version is None:
        raise Conflict(f"twin {twin_id} has no checkpointed version")
    key = (twin_id, version.number)
    replica = cache.get(key)
    if replica is None:
        blob = session.scalar(select(Version.checkpoint).where(Version.id == version.id))
        replica = Replica.from_bytes(blob)
        cache.put(key, replica)
    return version, replica


def predict(
    session: Session, cache: TwinCache, twin: Twin, body: PredictRequest, max_horizon: int
) -> PredictResult:
    """Roll the twin's latest version forward from its latest observed state (what-if)."""
    inputs, outputs = twin.spec["inputs"], twin.spec["outputs"]
    horizon = len(body.inputs)
    if horizon > max_horizon:
        raise Invalid(
            f"horizon of {horizon} steps; the limit is {max_horizon}",
            [{"field": "inputs", "message": f"at most {max_horizon} rows"}],
        )
    if isinstance(body.dt, list) and len(body.dt) != horizon:
        raise Invalid(
            "dt must be one number or one per input row",
            [{"field": "dt", "message": f"has {len(body.dt)} entries for {horizon} rows"}],
        )
    errors = []
    for i, row in enumerate(body.inputs):
        for name in inputs:
            if name not in row:
                errors.append({"field": f"inputs[{i}].{name}", "message": "missing channel"})
        for name in sorted(set(row).difference(inputs)):
            errors.append({"field": f"inputs[{i}].{name}", "message": "unknown channel"})
    if errors:
        raise Invalid("future inputs do not match the twin's input channels", errors)
    if twin.last_seq == 0:
        raise Conflict(f"twin {twin.id} has no observations yet: no state to roll forward from")
    version, replica = load_replica(session, cache, twin.id)
    if replica.context_ts is None:
        raise Conflict(
            f"twin {twin.id} has not learned from any observation yet; retry after calibration"
        )
    u = np.array([[row[n] for n in inputs] for row in body.inputs], dtype=np.float64)
    u = u.reshape(horizon, len(inputs))  # (H, n_in), also when there are no inputs
    dt = np.broadcast_to(np.asarray(body.dt, dtype=np.float64), (horizon,)).copy()  # (H,)
    try:
        mean, std = replica.predict(u, dt)
    except ValueError as e:  # not enough observed context for the model's lags yet
        raise Conflict(str(e)) from e
    return PredictResult(
        version=version.number,
        context_ts=replica.context_ts,
        outputs=_named_rows(mean, outputs),
        std=_named_rows(std, outputs),
    )


def parameters(session: Session, cache: TwinCache, twin: Twin) -> ParametersRead:
    """The latest version's parameters with the learner state summary of its checkpoint."""
    version = latest_version(session, twin.id)
    _, replica = load_replica(session, cache, twin.id)
    bounds = twin.spec.get("model", {}).get("bounds", {})
    return ParametersRead(
        version=version.number,
        watermark=version.watermark,
        parameters=version.parameters,
        learner=replica.learner_summary(),
        bounds={k: list(v) for k, v in bounds.items()},
    )


def _named_rows(values: np.ndarray, names: list[str]) -> list[dict[str, float | None]]:
    """(H, n_out) -> [{name: value}] with NaN and inf as null."""
    return [
        {n: (float(v) if np.isfinite(v) else None) for n, v in zip(names, row, strict=True)}
        for row in values.tolist()
    ]
