"""What every learner shares: the window of recent observations, the drift boost, and the
contract the twin drives (`update`, `observe`, `on_drift`, state); the loss of an update is
`twin.learners.objective.Objective`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from twin.learners.guard import outlying
from twin.learners.objective import Objective, screened, target_mask  # noqa: F401 (re-exported)
from twin.learners.options import COMMON_OPTIONS, Option, check_options, derive_defaults
from twin.learners.stack import Request, objectives_together
from twin.learners.walk import DriftRate
from twin.learners.window import (  # noqa: F401 (MIN_FRESH, recency_weights: re-exported)
    MIN_FRESH,
    Window,
    recency_weights,
    regime_weights,
    robust_scale,
    weighted_median,
)
from twin.models.base import DTYPE, TwinModel, flat_parameters, load_flat
from twin.observations import Observations

DRIFT_EVERY = 16  # updates between windows that inform the drift "auto" estimate


@dataclass
class UpdateReport:
    """What one update did. `step` is the norm of the center's change in scaled coordinates;
    losses are NaN when the window has no target yet."""

    loss_before: float
    loss_after: float
    step: float
    sigma: float | None
    lr: float
    n_observations: int
    window: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: non-finite numbers become None."""
        return {
            k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in asdict(self).items()
        }


@dataclass
class Pending:
    """An update prepared up to its learning step (`Learner.prepare`)."""

    learner: Learner
    objective: Objective
    lr: float
    boost: float
    n_observations: int


class Learner:
    """Recalibrates a model's parameters online from a window of its recent observations.

    The model's parameters are the learner's center: `update` writes the new center into them.
    Subclasses set `method` and `OPTIONS` and implement `_learn`.
    """

    method: ClassVar[str]
    OPTIONS: ClassVar[dict[str, Option]] = COMMON_OPTIONS

    def __init__(self, model: TwinModel, options: dict, seed: int):
        self.model = model
        self.options = self.resolve_options(options, flat_parameters(model).numel())
        self.seed = int(seed)
        self.window = Window(
            self.options["window"] + model.context, model.n_inputs, model.n_outputs
        )
        self.n_updates = 0
        self.boost_left = 0
        self.regime_start: int | None = None  # seq where the last detected change began
        self.drift_rate = DriftRate()  # the estimate behind drift "auto"

    @classmethod
    def resolve_options(cls, options: dict, n_params: int | None = None) -> dict[str, Any]:
        """All options with defaults filled in, some derived from the model's number of
        parameters where known; raise SpecError("learner.<name>", ...)."""
        o = check_options(cls.method, cls.OPTIONS, options)
        return derive_defaults(cls.derive_method_defaults(o, n_params))

    @classmethod
    def derive_method_defaults(cls, options: dict, n_params: int | None) -> dict[str, Any]:
        """Fill in the method's own defaults that depend on the model (none here)."""
        return options

    # -- the contract -------------------------------------------------------------------------
    def observe(self, obs: Observations) -> None:
        """Add observations to the window without learning from them."""
        assert obs.inputs.shape[1] == self.model.n_inputs, "inputs do not match the model"
        assert obs.outputs.shape[1] == self.model.n_outputs, "outputs do not match the model"
        self.window.append(obs)

    def outlying(self, outputs: np.ndarray) -> np.ndarray:
        """(N, n_out) -> (N, n_out) bool: which of these new output values lie far outside their
        channel's robust range over the window and them (`twin.learners.guard`); the learner
        does not learn from them."""
        new = np.asarray(outputs, dtype=np.float64)
        return outlying(new, np.concatenate([self.window.outputs.numpy(), new]))

    def update(self, obs: Observations) -> UpdateReport:
        """Add observations to the window, learn from it, write the new center into the model.
        (`twin.learners.together.update_together` makes the updates of many twins at once.)"""
        pending = self.prepare(obs)
        if isinstance(pending, UpdateReport):
            return pending
        [(theta, loss_after)] = type(self).learn_together([pending])
        return self.finish(pending, theta, loss_after)

    def prepare(self, obs: Observations) -> Pending | UpdateReport:
        """The update up to its learning step: add the observations to the window and build the
        objective; the report at once where there is nothing to learn from. (`request` and
        `pending`, with `objectives_together` between them, as `update_together` does.)"""
        [objective] = objectives_together([self.request(obs)])
        return self.pending(objective, len(obs))

    def request(self, obs: Observations) -> Request:
        """Add the observations to the window; what the update's objective is built from."""
        self.observe(obs)
        if self.regime_start is not None and int(self.window.seq[0]) >= self.regime_start:
            self.regime_start = None  # the whole window is from the current regime
        return Request(
            self.model,
            self.window,
            self.options["half_life"],
            self.options,
            self.regime_start,
            self.drift(),
        )

    def pending(self, objective: Objective, n_observations: int) -> Pending | UpdateReport:
        """The update prepared from its objective (built from `request`); the report at once
        where there is nothing to learn from."""
        boost = self.boost_factor(self.boost_left)
        lr = self.options["lr"] * boost
        if objective.n_targets == 0:
            reported_lr = lr if self.steps_with_lr() else math.nan
            return UpdateReport(
                math.nan, math.nan, 0.0, self._sigma_summary(), reported_lr, n_observations, 0
            )
        if self.options["drift"] == "auto" and self.n_updates % DRIFT_EVERY == 0:
            self.drift_rate.observe(
                objective.jacobian(),
                objective.residuals,
                objective.weights,
                objective.s,
                observed=objective.mask,
            )
        return Pending(self, objective, lr, boost, n_observations)

    @classmethod
    def learn_together(cls, pending: list[Pending]) -> list[tuple[Tensor, float]]:
        """The learning steps of prepared updates of this method (one group of `batch_key`):
        each new center (P,) and its loss. One by one here; a method that can step many twins
        in wide tensor operations overrides it. Nothing is changed if it raises."""
        return [p.learner._learn(p.objective, p.lr, p.boost) for p in pending]

    def batch_key(self, objective: Objective) -> Hashable | None:
        """Prepared updates with equal keys may be learned together (`learn_together`); None:
        alone."""
        return None

    def finish(self, pending: Pending, theta: Tensor, loss_after: float) -> UpdateReport:
        """Write the learned center into the model and report the update."""
        objective = pending.objective
        if not bool(torch.isfinite(theta).all()):  # refused: the center stays
            theta, loss_after = objective.theta_prev, objective.center_loss
        load_flat(self.model, theta)
        self.n_updates += 1
        self.boost_left = max(self.boost_left - 1, 0)
        step = torch.linalg.vector_norm(theta / objective.scale - objective.z_prev)
        return UpdateReport(
            objective.center_loss,
            loss_after,
            float(step),
            self._sigma_summary(),
            pending.lr if self.steps_with_lr() else math.nan,
            pending.n_observations,
            objective.n_targets,
        )

    def drift(self) -> float:
        """The random walk's rate q this update assumes (0 while "auto" has no estimate yet)."""
        if self.options["drift"] == "auto":
            return self.drift_rate.q or 0.0
        return self.options["drift"]

    def on_drift(self, start_seq: int | None = None) -> None:
        """An abrupt change was detected, beginning at observation `start_seq` if known: boost
        the learning rate for the next updates, and fit only observations from `start_seq` on."""
        self.boost_left = self.options["boost_updates"]
        if start_seq is not None:
            self.regime_start = int(start_seq)

    def boost_factor(self, left: int) -> float:
        """boost ** (left / boost_updates): `boost` right after a drift, back to 1 geometrically."""
        if left <= 0:
            return 1.0
        return self.options["boost"] ** (left / self.options["boost_updates"])

    def steps_with_lr(self) -> bool:
        """Whether `lr` sizes this learner's steps (reported only then)."""
        return True

    def summary(self) -> dict[str, float]:
        out = {
            "boost_left": float(self.boost_left),
            "n_updates": float(self.n_updates),
            "window": float(len(self.window)),
        }
        if self.steps_with_lr():
            out = {"lr": self.options["lr"] * self.boost_factor(self.boost_left), **out}
        if self.options["drift"] != 0:
            out["drift_rate"] = self.drift()  # the random walk's rate in use (estimated: "auto")
        sigma = self._sigma_summary()
        return out if sigma is None else {"sigma": sigma, **out}

    def context_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The twin's latest observed state: outputs (L', n_out), inputs (L', n_in), ts (L') of
        the newest L' = min(model.context, held) observations (fewer while the window fills)."""
        return self.window.last(self.model.context)

    def state_dict(self) -> dict:
        return {
            "method": self.method,
            "center": flat_parameters(self.model).clone(),
            "window": self.window.state_dict(),
            "n_updates": self.n_updates,
            "boost_left": self.boost_left,
            "regime_start": self.regime_start,
            "drift_rate": self.drift_rate.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["method"] != self.method:
            raise ValueError(f"state of a {state['method']!r} learner, not {self.method!r}")
        load_flat(self.model, state["center"].to(DTYPE))
        self.window.load_state_dict(state["window"])
        self.n_updates = int(state["n_updates"])
        self.boost_left = int(state["boost_left"])
        start = state.get("regime_start")
        self.regime_start = None if start is None else int(start)
        self.drift_rate.load_state_dict(state.get("drift_rate", {"deviance": None}))

    # -- for subclasses -----------------------------------------------------------------------
    def _learn(self, objective: Objective, lr: float, boost: float) -> tuple[Tensor, float]:
        """Move the center from `objective.theta_prev`; return it (P,) and its loss."""
        raise NotImplementedError

    def _sigma_summary(self) -> float | None:
        return None
