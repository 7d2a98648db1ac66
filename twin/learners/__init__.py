"""Learners: what recalibrates a twin's parameters online from its recent observations.

`pgpe` (policy gradients with parameter-based exploration, black-box), `gradient`
(backpropagation with Adam or Gauss-Newton steps), `kalman` (an extended Kalman filter over
the parameters) and `dekf` (decoupled extended Kalman filters over a network's weights) share
one contract (`Learner`) and one robust loss.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from twin.learners.base import Learner, UpdateReport
from twin.learners.decoupled import DecoupledKalmanLearner
from twin.learners.gradient import GradientLearner
from twin.learners.kalman import KalmanLearner
from twin.learners.pgpe import PGPELearner
from twin.models.base import TwinModel
from twin.spec import SpecError, TwinSpec

LEARNERS: dict[str, type[Learner]] = {
    "pgpe": PGPELearner,
    "gradient": GradientLearner,
    "kalman": KalmanLearner,
    "dekf": DecoupledKalmanLearner,
}
KNOWN = ", ".join(LEARNERS)


def learner_method(spec: TwinSpec) -> str:
    """The spec's learner method, or its model kind's default for the model's size."""
    if spec.learner.method is not None:
        return spec.learner.method
    from twin.models import model_class

    try:
        kind = model_class(spec.model.kind)
    except KeyError:
        raise SpecError("model.kind", f"unknown kind {spec.model.kind!r}") from None
    sized = kind.default_learner_beyond() is not None  # else the size is not worth counting
    return kind.default_learner(count_parameters(spec) if sized else None)


def legacy_method(kind: str) -> str:
    """What a spec without a method meant when twins were stored that way (before migration
    0014): the kinds' defaults of the time, which a checkpoint of then still needs."""
    return "gradient" if kind == "mlp" else "pgpe"


def with_method(spec: TwinSpec, method: str | None = None) -> TwinSpec:
    """The spec naming its learner's method: `method` where given, else its own, else its
    model kind's default. A twin is built and stored this way, so that a later change of a
    kind's default never changes the learner of a twin that exists."""
    named = method or learner_method(spec)
    if named == spec.learner.method:
        return spec
    return replace(spec, learner=replace(spec.learner, method=named))


def validate_learner(spec: TwinSpec) -> None:
    """Raise SpecError("learner.<option>", ...) if the learner options do not fit the method."""
    method = learner_method(spec)
    if method not in LEARNERS:
        raise SpecError("learner.method", f"unknown method {method!r}; known: {KNOWN}")
    n_params = count_parameters(spec) if method == "kalman" else None  # its size limit
    LEARNERS[method].resolve_options(spec.learner.options, n_params)


def count_parameters(spec: TwinSpec) -> int:
    """How many parameters the spec's model has, found without allocating them where the kind
    can be built on torch's meta device (else it is built)."""
    from twin.models import model_class

    kind = model_class(spec.model.kind)
    try:
        with torch.device("meta"):
            model = kind.from_spec(spec)
    except (NotImplementedError, RuntimeError):  # a kind that computes on its initial values
        model = kind.from_spec(spec)
    return sum(p.numel() for p in model.parameters())


def make_learner(spec: TwinSpec, model: TwinModel) -> Learner:
    """The learner a spec asks for, driving `model` (whose parameters are its center)."""
    size = sum(p.numel() for p in model.parameters())
    method = spec.learner.method or type(model).default_learner(size)
    if method not in LEARNERS:
        raise SpecError("learner.method", f"unknown method {method!r}; known: {KNOWN}")
    return LEARNERS[method](model, spec.learner.options, spec.learner.seed)


__all__ = [
    "LEARNERS",
    "DecoupledKalmanLearner",
    "GradientLearner",
    "KalmanLearner",
    "Learner",
    "PGPELearner",
    "UpdateReport",
    "legacy_method",
    "make_learner",
    "validate_learner",
    "with_method",
]
