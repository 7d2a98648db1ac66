"""Damped Gauss-Newton steps on the random-walk window loss for many twins at once (the
`gradient` learner's default on models of up to 32 parameters, `GradientLearner`).

Each twin keeps its own center, curvature, steps and halvings; what they share are the wide
operations: the whitening of all twins' residuals and Jacobians by their walk factors (one
batched triangular solve), the Huber loss and its sums, the curvature, and one backward pass.
A twin's numbers are the same whether it is learned alone or in a group of any size, bit for
bit: the batched operations are elementwise, sums along a twin's own last axis, and
triangular solves that run matrix by matrix; the model's predictions and their gradients, and
the P x P solve, are each twin's own calls.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import huber_loss

from twin.learners.objective import Objective
from twin.learners.walk import _outer, pad_rows
from twin.models.base import DTYPE

# Levenberg-Marquardt damping, relative to the curvature's mean diagonal. Directions the window
# pins down poorly (a few collinear targets after a detected change) then move over several
# updates instead of jumping to a fit of the noise: 1e-3 let the linear step plant's twin
# overshoot 30-fold after an alarm (seed 2), 0.1 does not and tracks the random walk as closely.
DAMPING = 0.1
HALVINGS = 4  # a Gauss-Newton step that raises the loss is halved up to this many times


class WalkLosses:
    """The random-walk losses of K objectives whose walk factors have one shape."""

    def __init__(self, objectives: list[Objective]):
        self.objectives = objectives
        first = objectives[0]
        self.chol = torch.stack([o.walk.chol for o in objectives])  # (K, n_out, n, n)
        self.scale = torch.stack([o.scale for o in objectives])  # (K, P)
        self.low = torch.stack([o.low for o in objectives])
        self.high = torch.stack([o.high for o in objectives])
        self.z_prev = torch.stack([o.z_prev for o in objectives])
        self.delta, self.smoothness = first.delta, first.smoothness
        self.count = self.chol.shape[1] * first.walk.n  # residuals per twin

    def _padded(self, x: Tensor) -> Tensor:
        """(..., n, k) with the factors' zero rows appended (`twin.learners.walk.walk_factor`:
        every matrix 64-byte aligned, so the solves round alike alone and in a batch)."""
        return pad_rows(x, self.chol.shape[-1])

    def clamp(self, theta: Tensor) -> Tensor:
        return torch.clamp(theta, self.low, self.high)

    def curvature(self) -> Tensor:
        """(K, P, P) Gauss-Newton matrices of the losses in z at the starting centers, damped."""
        jac = torch.stack(
            [o.jacobian()[o.walk.keep].permute(1, 0, 2) for o in self.objectives]
        )  # (K, n_out, n, P)
        white = torch.linalg.solve_triangular(self.chol, self._padded(jac), upper=False)
        K, P = white.shape[0], white.shape[-1]
        rows = white.permute(0, 3, 1, 2).reshape(K, P, -1)  # each parameter's whitened column
        h = _outer(rows, rows) / self.count
        eye = torch.eye(P, dtype=DTYPE)
        if self.smoothness:
            h = h + (2.0 * self.smoothness / P) * eye
        damping = DAMPING * (h.diagonal(dim1=-2, dim2=-1).sum(dim=-1) / P).clamp(min=1e-12)
        return h + damping[:, None, None] * eye

    def evaluate(self, which: list[int], z: Tensor) -> tuple[Tensor, Tensor]:
        """Twins `which` at scaled centers z (m, P): their losses (m,) and gradients (m, P)."""
        leaves = [row.detach().requires_grad_(True) for row in z]
        residuals = []
        for k, leaf in zip(which, leaves, strict=True):
            o = self.objectives[k]
            yhat = o.predict(leaf * o.scale)  # (T, n_out), the twin's own model call
            residuals.append(o._masked(o.y_scaled - yhat / o.s)[o.walk.keep].T)
        e = self._padded(torch.stack(residuals)[..., None])  # (m, n_out, n, 1), padded
        chol = self.chol if len(which) == len(self.objectives) else self.chol[which]
        white = torch.linalg.solve_triangular(chol, e, upper=False)  # padded rows stay zero
        h = huber_loss(white, torch.zeros_like(white), reduction="none", delta=self.delta)
        fit = h.reshape(len(which), -1).sum(dim=-1) / self.count
        if self.smoothness:
            jump = torch.stack(leaves) - self.z_prev[which]
            fit = fit + self.smoothness * (jump * jump).sum(dim=-1) / jump.shape[-1]
        grads = torch.autograd.grad(fit.sum(), leaves)
        return fit.detach(), torch.stack(grads)


def gauss_newton_together(objectives: list[Objective], iterations: int) -> list[tuple]:
    """Damped Gauss-Newton (Levenberg-Marquardt) steps on z = theta / scale for each objective,
    with the curvature at its starting center, each step halved until its loss does not rise
    (a twin whose step cannot be solved, or still raises the loss after HALVINGS halvings,
    stops there while the others go on): each new center (P,) and its loss."""
    losses = WalkLosses(objectives)
    K = len(objectives)
    h = losses.curvature()
    theta = torch.stack([o.theta_prev for o in objectives])  # (K, P)
    z = theta / losses.scale
    loss, grad = losses.evaluate(list(range(K)), z)
    for o, value in zip(objectives, loss.tolist(), strict=True):
        o.center_loss = value  # the loss before, scored together
    active = [True] * K
    for _ in range(iterations):
        step = torch.zeros_like(z)
        for k in range(K):
            if active[k]:  # each twin's own solve
                step[k], info = torch.linalg.solve_ex(h[k], grad[k])
                active[k] = int(info) == 0 and bool(torch.isfinite(step[k]).all())
        trying = [k for k in range(K) if active[k]]
        if not trying:
            break
        for _ in range(HALVINGS + 1):
            candidate = losses.clamp((z[trying] - step[trying]) * losses.scale[trying])
            z_new = candidate / losses.scale[trying]
            value, slope = losses.evaluate(trying, z_new)
            better = (value <= loss[trying]).tolist()
            for row, k in enumerate(trying):
                if better[row]:
                    theta[k], z[k], loss[k], grad[k] = (
                        candidate[row],
                        z_new[row],
                        value[row],
                        slope[row],
                    )
            trying = [k for k, ok in zip(trying, better, strict=True) if not ok]
            if not trying:
                break
            step[trying] = step[trying] / 2
        for k in trying:  # still rising after every halving: stops
            active[k] = False
    return [(theta[k].clone(), float(loss[k])) for k in range(K)]
