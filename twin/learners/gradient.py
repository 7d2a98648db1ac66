"""Gradient learner: backpropagation of the window loss through the model, with Adam in scaled
coordinates, gradient-norm clipping and projection onto the bounds (projected gradient descent).
"""

from __future__ import annotations

import torch
from torch import Tensor

from twin.learners.base import Learner, Objective
from twin.learners.optim import Adam
from twin.learners.options import COMMON_OPTIONS, Option, positive
from twin.models.base import TwinModel

ITERATIONS = 4
LR = 0.005  # with 4-observation updates: a smaller step per update, less jitter at rest
CLIP = 10.0

OPTIONS: dict[str, Option] = {
    **COMMON_OPTIONS,
    "iterations": Option("int", ITERATIONS, 1, 10_000),
    "lr": positive(LR, 10.0),
    "clip": positive(CLIP),
}


class GradientLearner(Learner):
    """Adam (Kingma & Ba 2015) on z = theta / parameter_scales, projected onto the bounds."""

    method = "gradient"
    OPTIONS = OPTIONS

    def __init__(self, model: TwinModel, options: dict, seed: int):
        super().__init__(model, options, seed)
        self.optimizer = Adam(self.model.parameter_scales().numel())

    def _learn(self, objective: Objective, lr: float, boost: float) -> tuple[Tensor, float]:
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

    def state_dict(self) -> dict:
        return {**super().state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.optimizer.load_state_dict(state["optimizer"])
