"""Residual whitening for parameters that random-walk: the Kalman filter's drift model inside a
window loss."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import huber_loss

from twin.models.base import DTYPE


class RandomWalk:
    """If theta does a random walk with N(0, q I) steps per observation in scaled coordinates z,
    the residual of a target `age` observations old, measured against today's parameters, has
    picked up J_t (z_then - z_now). The standardized residuals e_o (n,) of output o then have
    covariance

        Sigma_o = diag(w_newest / w_t) + q (J_o J_o^T) * min(age_t, age_t'),

    J_o (n, P) the Jacobian of output o's standardized predictions at the update's starting
    center, w the recency weights (plain least squares' unit variance when they are flat).
    Least squares on L_o^-1 e_o (Sigma_o = L_o L_o^T) is, for a model linear in theta, the
    Kalman filter's estimate from the window's targets (with a flat prior before them). Unlike
    exponential forgetting its memory depends on the direction: what the data pin down well is
    re-learned quickly, what they pin down poorly is kept longer. Targets with zero recency
    weight (before a detected change) are left out.
    """

    def __init__(self, jac: Tensor, weights: Tensor, q: float):
        self.keep = weights > 0  # a contiguous tail: the current regime
        w = weights[self.keep]
        n = w.shape[0]
        age = torch.arange(n - 1, -1, -1, dtype=DTYPE)
        shared = torch.minimum(age[:, None], age[None, :])  # (n, n) walk steps both targets share
        j = jac[self.keep].permute(1, 0, 2)  # (n_out, n, P)
        cov = q * (j @ j.transpose(1, 2)) * shared + torch.diag(w.max() / w)
        self.chol = torch.linalg.cholesky(cov)  # (n_out, n, n)

    def whiten(self, x: Tensor) -> Tensor:
        """(n_out, n, k) -> L^-1 x, output by output."""
        return torch.linalg.solve_triangular(self.chol, x, upper=False)

    def loss(self, residuals: Tensor, delta: float) -> Tensor:
        """(..., T, n_out) standardized residuals -> (...) mean Huber loss of the whitened ones."""
        e = residuals[..., self.keep, :]  # (..., n, n_out)
        lead = e.shape[:-2]
        white = self.whiten(e.reshape(-1, *e.shape[-2:]).permute(2, 1, 0))  # (n_out, n, B)
        h = huber_loss(white, torch.zeros_like(white), reduction="none", delta=delta)
        return h.mean(dim=(0, 1)).reshape(lead)

    def curvature(self, jac: Tensor) -> Tensor:
        """(P, P) Gauss-Newton matrix of `loss` for a (T, n_out, P) Jacobian."""
        white = self.whiten(jac[self.keep].permute(1, 0, 2))  # (n_out, n, P)
        n_out, n, _ = white.shape
        return torch.einsum("onp,onq->pq", white, white) / (n * n_out)
