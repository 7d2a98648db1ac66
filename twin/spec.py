"""Twin specification: channels, model kind and options, learner method and options.

`TwinSpec.from_dict` is the one place where a user's description of a twin is checked; every
problem raises `SpecError` naming the field (`model.params.R`) and what is wrong with it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

CHANNEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
MAX_SEED = 2**63 - 1  # a seed is stored and handed to torch as a signed 64-bit integer


class SpecError(ValueError):
    """A twin specification is invalid; `field` is a dotted path to the offending entry."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class ModelSpec:
    """kind: a registered model kind; params: initial parameters by name (physical units);
    options: kind-specific structure (arx: na, nb, nk; mlp: na, nb, hidden, layers);
    bounds: {param: (low, high)} that calibration never leaves."""

    kind: str
    params: dict[str, float] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class LearnerSpec:
    """method: `pgpe` or `gradient` (None: the model kind's default); options: see
    `twin.learners` (window, half_life, lr, iterations, ...); seed makes runs repeatable."""

    method: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


@dataclass(frozen=True)
class TwinSpec:
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    model: ModelSpec
    learner: LearnerSpec = field(default_factory=LearnerSpec)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form `from_dict` reads back (options flattened into `model`/`learner`)."""
        m, lrn = self.model, self.learner
        model = {"kind": m.kind, "params": dict(m.params), **m.options}
        model["bounds"] = {k: list(v) for k, v in m.bounds.items()}
        learner = {"method": lrn.method, "seed": lrn.seed, **lrn.options}
        return {
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "model": model,
            "learner": learner,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TwinSpec:
        """Build and validate a spec from its JSON form (as in `POST /twins`).

        model: {kind, params?, bounds?, **options}; learner: {method?, seed?, **options}.
        """
        if not isinstance(data, dict):
            raise SpecError("spec", "must be an object")
        inputs = _channels(data.get("inputs", []), "inputs", allow_empty=True)
        outputs = _channels(data.get("outputs"), "outputs", allow_empty=False)
        clash = set(inputs) & set(outputs)
        if clash:
            raise SpecError("outputs", f"channel {sorted(clash)[0]!r} is also an input")
        model = _model_spec(data.get("model"))
        learner = _learner_spec(data.get("learner") or {})
        spec = cls(inputs, outputs, model, learner)
        spec.validate()
        return spec

    def validate(self) -> None:
        """Check the model kind against the channels and the learner options; raise SpecError."""
        from twin.learners import validate_learner
        from twin.models import model_class

        model_class(self.model.kind).validate_spec(self)
        validate_learner(self)


def _channels(value: Any, name: str, allow_empty: bool) -> tuple[str, ...]:
    if value is None:
        raise SpecError(name, "is required")
    if not isinstance(value, list | tuple):
        raise SpecError(name, "must be a list of channel names")
    if not value and not allow_empty:
        raise SpecError(name, "needs at least one channel")
    for i, ch in enumerate(value):
        if not isinstance(ch, str) or not CHANNEL_NAME.fullmatch(ch):
            raise SpecError(f"{name}[{i}]", f"{ch!r} is not a valid channel name")
    if len(set(value)) != len(value):
        raise SpecError(name, "channel names must be unique")
    return tuple(value)


def _model_spec(value: Any) -> ModelSpec:
    if not isinstance(value, dict):
        raise SpecError("model", "is required: an object with a `kind`")
    rest = dict(value)
    kind = rest.pop("kind", None)
    if not isinstance(kind, str):
        raise SpecError("model.kind", "is required")
    from twin.models import model_kinds

    if kind not in model_kinds():
        raise SpecError("model.kind", f"unknown kind {kind!r}; known: {', '.join(model_kinds())}")
    params = rest.pop("params", None) or {}
    if not isinstance(params, dict):
        raise SpecError("model.params", "must be an object of name: number")
    for k, v in params.items():
        if not _finite(v):
            raise SpecError(f"model.params.{k}", f"must be a finite number, got {v!r}")
    bounds_in = rest.pop("bounds", None) or {}
    if not isinstance(bounds_in, dict):
        raise SpecError("model.bounds", "must be an object of name: [low, high]")
    bounds: dict[str, tuple[float, float]] = {}
    for k, v in bounds_in.items():
        ok = isinstance(v, list | tuple) and len(v) == 2 and all(_finite(x) for x in v)
        if not ok or not v[0] < v[1]:
            raise SpecError(f"model.bounds.{k}", "must be [low, high] with low < high")
        bounds[k] = (float(v[0]), float(v[1]))
    return ModelSpec(kind, {k: float(v) for k, v in params.items()}, rest, bounds)


def _learner_spec(value: Any) -> LearnerSpec:
    if not isinstance(value, dict):
        raise SpecError("learner", "must be an object")
    rest = dict(value)
    method = rest.pop("method", None)
    from twin.learners import LEARNERS

    if method is not None and method not in LEARNERS:
        known = ", ".join(LEARNERS)
        raise SpecError("learner.method", f"unknown method {method!r}; known: {known}")
    seed = rest.pop("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise SpecError("learner.seed", f"must be an integer from 0 to {MAX_SEED}")
    return LearnerSpec(method, rest, seed)


def _finite(v: Any) -> bool:
    """A JSON number that is finite as a float (an integer past float's range is not)."""
    if not isinstance(v, int | float) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False
