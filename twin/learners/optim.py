"""First-order optimizers on one flat parameter vector, with state that round-trips exactly.

Both work in the learners' scaled coordinates and return the change to subtract from the
vector (they minimize). `lr` may be a float or a (P,) tensor of per-coordinate learning rates.
"""

from __future__ import annotations

import torch
from torch import Tensor

from twin.models.base import DTYPE

ADAM_BETAS = (0.9, 0.99)  # a shorter second-moment memory than 0.999 suits a drifting target
ADAM_EPS = 1e-8
CLIPUP_MOMENTUM = 0.9


class Adam:
    """Adam (Kingma & Ba 2015, "Adam: a method for stochastic optimization", ICLR)."""

    def __init__(self, n: int, betas: tuple[float, float] = ADAM_BETAS, eps: float = ADAM_EPS):
        self.betas = betas
        self.eps = eps
        self.m = torch.zeros(n, dtype=DTYPE)
        self.v = torch.zeros(n, dtype=DTYPE)
        self.t = 0

    def step(self, grad: Tensor, lr: float | Tensor) -> Tensor:
        """(P,) loss gradient -> (P,) change to subtract."""
        b1, b2 = self.betas
        self.t += 1
        self.m.lerp_(grad, 1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.v / (1 - b2**self.t)).sqrt_().add_(self.eps)
        return (lr / (1 - b1**self.t)) * self.m / denom

    def drop_momentum(self) -> None:
        """Forget the mean gradient (after an abrupt change it points the old regime's way);
        the scale of the gradients and the bias corrections are kept, so the next steps start
        small and grow as the new gradient builds up."""
        self.m.zero_()

    def state_dict(self) -> dict:
        return {"m": self.m.clone(), "v": self.v.clone(), "t": self.t}

    def load_state_dict(self, state: dict) -> None:
        self.m = state["m"].clone().to(DTYPE)
        self.v = state["v"].clone().to(DTYPE)
        self.t = int(state["t"])


class ClipUp:
    """ClipUp (Toklu et al. 2020, "ClipUp: a simple and powerful optimizer for distribution-based
    policy evolution", PPSN): heavy-ball momentum on the normalized gradient, speed clipped."""

    def __init__(self, n: int, momentum: float = CLIPUP_MOMENTUM):
        self.momentum = momentum
        self.velocity = torch.zeros(n, dtype=DTYPE)
        self.t = 0

    def step(self, grad: Tensor, lr: float | Tensor, max_speed: float) -> Tensor:
        """(P,) loss gradient -> (P,) change to subtract; its norm never exceeds `max_speed`."""
        self.t += 1
        norm = torch.linalg.vector_norm(grad)
        direction = grad / norm if norm > 0 else torch.zeros_like(grad)
        velocity = self.momentum * self.velocity + lr * direction
        speed = torch.linalg.vector_norm(velocity)
        if speed > max_speed:
            velocity = velocity * (max_speed / speed)
        self.velocity = velocity
        return velocity

    def drop_momentum(self) -> None:
        """Forget the velocity (after an abrupt change it points the old regime's way)."""
        self.velocity = torch.zeros_like(self.velocity)

    def state_dict(self) -> dict:
        return {"velocity": self.velocity.clone(), "t": self.t}

    def load_state_dict(self, state: dict) -> None:
        self.velocity = state["velocity"].clone().to(DTYPE)
        self.t = int(state["t"])
