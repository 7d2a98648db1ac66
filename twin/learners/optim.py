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


class _Stacked:
    """K optimizers of one kind stepped together on (K, P) gradients; rows whose `active` is
    False are left as they were. Per-row scalars (step counts, learning rates, bias
    corrections) are computed in Python as each optimizer computes its own, so a row's numbers
    are those it would get alone. `write_back` hands each optimizer its row."""

    def __init__(self, optimizers: list):
        self.optimizers = optimizers
        self.t = [opt.t for opt in optimizers]

    def _column(self, values: list[float]) -> Tensor:
        return torch.tensor(values, dtype=DTYPE)[:, None]  # (K, 1)

    def _advance(self, active: Tensor) -> tuple[list[int], Tensor]:
        flags = active.tolist()
        self.t = [t + 1 if a else t for t, a in zip(self.t, flags, strict=True)]
        return self.t, active[:, None]


class AdamStack(_Stacked):
    def __init__(self, optimizers: list[Adam]):
        super().__init__(optimizers)
        self.betas, self.eps = optimizers[0].betas, optimizers[0].eps
        self.m = torch.stack([opt.m for opt in optimizers])
        self.v = torch.stack([opt.v for opt in optimizers])

    def step(self, grad: Tensor, lrs: list[float], max_speeds: list[float], active: Tensor):
        """(K, P) -> (K, P) changes to subtract (zero where not active)."""
        b1, b2 = self.betas
        t, keep = self._advance(active)
        m = self.m.lerp(grad, 1 - b1)
        v = (self.v * b2).addcmul_(grad, grad, value=1 - b2)
        # where a row is not active its t may be 0: its (infinite) numbers are not kept
        correction2 = self._column([1 - b2**s if s else 1.0 for s in t])
        rate = self._column([lr / (1 - b1**s) if s else 0.0 for lr, s in zip(lrs, t, strict=True)])
        denom = (v / correction2).sqrt_().add_(self.eps)
        self.m = torch.where(keep, m, self.m)
        self.v = torch.where(keep, v, self.v)
        return torch.where(keep, rate * m / denom, 0.0)

    def write_back(self) -> None:
        for k, opt in enumerate(self.optimizers):
            opt.m, opt.v, opt.t = self.m[k].clone(), self.v[k].clone(), self.t[k]


class ClipUpStack(_Stacked):
    def __init__(self, optimizers: list[ClipUp]):
        super().__init__(optimizers)
        self.momentum = optimizers[0].momentum
        self.velocity = torch.stack([opt.velocity for opt in optimizers])

    def step(self, grad: Tensor, lrs: list[float], max_speeds: list[float], active: Tensor):
        """(K, P) -> (K, P) changes to subtract; each row's norm at most its max speed."""
        _, keep = self._advance(active)
        norm = torch.linalg.vector_norm(grad, dim=-1, keepdim=True)
        direction = torch.where(norm > 0, grad / norm, 0.0)
        velocity = self.momentum * self.velocity + self._column(lrs) * direction
        speed = torch.linalg.vector_norm(velocity, dim=-1, keepdim=True)
        limit = self._column(max_speeds)
        velocity = torch.where(speed > limit, velocity * (limit / speed), velocity)
        self.velocity = torch.where(keep, velocity, self.velocity)
        return torch.where(keep, velocity, 0.0)

    def write_back(self) -> None:
        for k, opt in enumerate(self.optimizers):
            opt.velocity, opt.t = self.velocity[k].clone(), self.t[k]


def stack_optimizers(optimizers: list[Adam] | list[ClipUp]) -> AdamStack | ClipUpStack:
    """The optimizers of K twins (all of one kind) as one that steps (K, P) gradients."""
    return AdamStack(optimizers) if isinstance(optimizers[0], Adam) else ClipUpStack(optimizers)
