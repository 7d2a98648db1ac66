"""Gradient learner: backpropagation of the window loss through the model, with Adam in scaled
coordinates, gradient-norm clipping and projection onto the bounds (projected gradient descent),
or damped Gauss-Newton steps.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch
from torch import Tensor

from twin.learners.base import Learner, Pending
from twin.learners.newton import DAMPING, HALVINGS, gauss_newton_together
from twin.learners.objective import Objective
from twin.learners.optim import Adam
from twin.learners.options import COMMON_OPTIONS, Option, positive
from twin.models.base import TwinModel

ITERATIONS = 4
LR = 0.005  # with 4-observation updates: a smaller step per update, less jitter at rest
CLIP = 10.0
# Models with at most this many parameters (the physical kinds, small arx) default to the
# random-walk drift model at an estimated rate with Gauss-Newton steps; larger ones (mlp) to
# exponential forgetting with Adam: their Gauss-Newton system and likelihood grow as P^2.
WALK_MAX_PARAMS = 32

OPTIONS: dict[str, Option] = {
    **COMMON_OPTIONS,
    "iterations": Option("int", ITERATIONS, 1, 10_000),
    "lr": positive(LR, 10.0),
    "clip": positive(CLIP),
    # default: "auto" for models of at most WALK_MAX_PARAMS parameters, else 0
    "drift": Option("float", None, 0.0, 1.0, words=("auto",)),
    # "gauss_newton": the step solves the loss's Gauss-Newton system (lr and clip unused); it
    # reaches the window's minimum in a few iterations where Adam trails it. Default: it with a
    # drift model, else "adam".
    "optimizer": Option("choice", None, choices=("adam", "gauss_newton")),
}


class GradientLearner(Learner):
    """Adam (Kingma & Ba 2015) on z = theta / parameter_scales, projected onto the bounds."""

    method = "gradient"
    OPTIONS = OPTIONS

    def __init__(self, model: TwinModel, options: dict, seed: int):
        super().__init__(model, options, seed)
        self.optimizer = Adam(self.model.parameter_scales().numel())

    @classmethod
    def derive_method_defaults(cls, options: dict, n_params: int | None) -> dict:
        if options["drift"] is None:
            small = n_params is not None and n_params <= WALK_MAX_PARAMS
            options["drift"] = "auto" if small else 0.0
        if options["optimizer"] is None:
            options["optimizer"] = "gauss_newton" if options["drift"] != 0 else "adam"
        return options

    def steps_with_lr(self) -> bool:
        return self.options["optimizer"] != "gauss_newton"  # its steps solve for the minimum

    def on_drift(self, start_seq: int | None = None) -> None:
        """Boost lr (see Learner) and drop Adam's momentum: it belongs to the regime before."""
        super().on_drift(start_seq)
        self.optimizer.drop_momentum()

    def walks(self, objective: Objective) -> bool:
        """Whether this update takes Gauss-Newton steps on the random-walk loss (then it may
        be learned with others', `twin.learners.newton`)."""
        return self.options["optimizer"] == "gauss_newton" and objective.walk is not None

    def batch_key(self, objective: Objective) -> Hashable | None:
        """Gauss-Newton updates on the random-walk loss with the same number of parameters,
        options and walk factor shape step together; others alone."""
        if not self.walks(objective):
            return None
        n = self.model.parameter_scales().numel()
        walk = objective.walk
        return (n, tuple(sorted(self.options.items())), tuple(walk.chol.shape), walk.n)

    @classmethod
    def learn_together(cls, pending: list[Pending]) -> list[tuple[Tensor, float]]:
        if not all(p.learner.walks(p.objective) for p in pending):  # type: ignore[attr-defined]
            return super().learn_together(pending)
        iterations = pending[0].learner.options["iterations"]
        return gauss_newton_together([p.objective for p in pending], iterations)

    def _learn(self, objective: Objective, lr: float, boost: float) -> tuple[Tensor, float]:
        if self.walks(objective):
            return self.learn_together([Pending(self, objective, lr, boost, 0)])[0]
        if self.options["optimizer"] == "gauss_newton":
            return self._gauss_newton(objective)
        scale = objective.scale
        theta = objective.theta_prev
        for _ in range(self.options["iterations"]):
            z = (theta / scale).requires_grad_(True)
            loss = objective.loss(z * scale)
            if not torch.isfinite(loss):
                break
            (grad,) = torch.autograd.grad(loss, z)  # (P,) in scaled coordinates
            norm = torch.linalg.vector_norm(grad)
            if not torch.isfinite(norm):
                break
            if norm > self.options["clip"]:
                grad = grad * (self.options["clip"] / norm)
            theta = objective.clamp((z.detach() - self.optimizer.step(grad, lr)) * scale)
        with torch.no_grad():
            loss_after = float(objective.loss(theta))
        return theta, loss_after

    def _gauss_newton(self, objective: Objective) -> tuple[Tensor, float]:
        """Damped Gauss-Newton (Levenberg-Marquardt) steps on z = theta / scale with the
        curvature at the starting center, each halved until the loss does not rise. A point's
        loss is evaluated once, with its graph: the accepted one's gradient drives the next step."""
        scale = objective.scale
        h = objective.curvature()
        damping = DAMPING * h.diagonal().mean().clamp(min=1e-12)
        h = h + damping * torch.eye(h.shape[0], dtype=h.dtype)
        theta = objective.theta_prev
        z = (theta / scale).requires_grad_(True)
        value = objective.loss(z * scale)
        loss = float(value.detach())
        for _ in range(self.options["iterations"]):
            (grad,) = torch.autograd.grad(value, z)
            step, info = torch.linalg.solve_ex(h, grad)
            if int(info) != 0 or not bool(torch.isfinite(step).all()):
                break
            for _ in range(HALVINGS + 1):
                candidate = objective.clamp((z.detach() - step) * scale)
                z_new = (candidate / scale).requires_grad_(True)
                value_new = objective.loss(z_new * scale)
                if float(value_new.detach()) <= loss:
                    break
                step = step / 2
            else:
                break
            theta, z, value, loss = candidate, z_new, value_new, float(value_new.detach())
        return theta, loss

    def state_dict(self) -> dict:
        return {**super().state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.optimizer.load_state_dict(state["optimizer"])
