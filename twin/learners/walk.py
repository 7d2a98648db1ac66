"""Residual whitening for parameters that random-walk (the Kalman filter's drift model inside a
window loss), and the estimate of how fast they walk."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.nn.functional import huber_loss

from twin.learners.guard import cholesky
from twin.models.base import DTYPE

# log10 of the drift rates the estimate chooses from (q per observation, scaled coordinates,
# relative to the residuals' variance): half-decade steps from 1e-8 to 0.1
LOG_RATES = torch.arange(-8.0, -0.99, 0.5, dtype=DTYPE)
MIN_TARGETS = 48  # targets a window needs (and 4 per parameter) before it informs the estimate
MEMORY = 0.1  # weight of the newest window's deviance in the running one
GROUP_ENTRIES = 1 << 21  # factor entries (64 MB) `walk_factors` computes in one pass


def _walk_cholesky(jac: Tensor, weights: Tensor, q: float | Tensor) -> Tensor:
    """(n_out, n, n) Cholesky factors of Sigma_o for a (n, n_out, P) Jacobian of kept targets
    with recency weights (n,) (see RandomWalk)."""
    n = weights.shape[0]
    age = torch.arange(n - 1, -1, -1, dtype=DTYPE)
    shared = torch.minimum(age[:, None], age[None, :])  # (n, n) walk steps both targets share
    j = jac.permute(1, 0, 2)  # (n_out, n, P)
    cov = q * (j @ j.transpose(1, 2)) * shared + torch.diag(weights.max() / weights)
    return cholesky(cov)


BLOCK = 64  # rows of `walk_factor`'s diagonal blocks


def walk_factor(jac: Tensor, d: Tensor, q: Tensor) -> Tensor:
    """Lower Cholesky factors L (..., n_out, m, m) of diag(Sigma_o, I), m = `padded(n)`, where
    Sigma_o = diag(d) + q (J_o J_o^T) * min(age_i, age_j) is the covariance `_walk_cholesky`
    factors densely (rows oldest first, ages n - 1 .. 0): jac (..., n_out, n, P), d (..., n),
    q (...,). Its leading (n, n) block is Sigma_o's factor, the rest the identity.

    Below its diagonal Sigma is semiseparable of rank P (for i > j, Sigma_ij = u_i . J_j with
    u_i = q a_i J_i; see `walk_whiten`), and so is L: its block (I, J) below the diagonal blocks
    is U_I X_J^T. A pass over blocks of BLOCK rows finds them, carrying S = sum over earlier
    blocks of X^T X (P x P): L_II = chol(Sigma_II - U_I S U_I^T), X_I = L_II^-1 (J_I - U_I S).
    That is O(n BLOCK P + n BLOCK^2) where the dense factor costs O(n^3), and L is written out
    in O(n^2 P). Leading axes (twins) are independent: products are elementwise with sums along
    a twin's own last axis, the factors, solves and the final product per matrix on aligned
    memory, so a twin's factor is the same, bit for bit, whatever others share the call. A
    diagonal block that rounding leaves not quite positive definite gets jitter
    (`twin.learners.guard.cholesky`), as the dense factor would."""
    n, p = jac.shape[-2:]
    age = torch.arange(n - 1, -1, -1, dtype=DTYPE)
    u = (q[..., None, None] * age)[..., None] * jac  # (..., n_out, n, P)
    # Rows of zeros (and unit variance) appended up to a multiple of 8: the factor of
    # diag(Sigma, I). Every matrix then starts 64-byte aligned, whichever twin of a batch it is,
    # and the BLAS and LAPACK kernels (whose rounding depends on alignment) see one layout.
    n = padded(n)
    u, jac = pad_rows(u, n), pad_rows(jac, n)
    d = torch.cat([d, torch.ones(d.shape[:-1] + (n - d.shape[-1],), dtype=DTYPE)], dim=-1)
    lead = jac.shape[:-2]
    x = torch.empty(lead + (n, p), dtype=DTYPE)
    s = torch.zeros(lead + (p, p), dtype=DTYPE)
    blocks = []
    for start in range(0, n, BLOCK):
        rows = slice(start, min(start + BLOCK, n))
        ub, jb = u[..., rows, :], jac[..., rows, :]
        lower = _outer(ub, jb)  # (..., b, b): Sigma_ij - d_i delta_ij for i >= j
        sigma = lower.tril() + lower.tril(-1).mT
        sigma.diagonal(dim1=-2, dim2=-1).add_(d[..., None, rows])
        us = _outer(ub, s)  # U S (S is symmetric)
        block = cholesky(sigma - _outer(us, ub))
        xb = torch.linalg.solve_triangular(block, jb - us, upper=False)
        x[..., rows, :] = xb
        s = s + _outer(xb.mT, xb.mT)
        blocks.append((rows, block))
    # U_I X_J^T, kept below the diagonal blocks: a matrix product per twin, on the same shapes
    # and (padded) alignment alone or in a batch, so its kernel rounds alike
    chol = torch.empty(lead + (n, n), dtype=DTYPE)
    for one, ui, xi in zip(chol.view(-1, *lead[-1:], n, n), u.view(-1, *lead[-1:], n, p),
                           x.view(-1, *lead[-1:], n, p), strict=True):  # fmt: skip
        torch.matmul(ui, xi.mT, out=one)
    index = torch.arange(n) // BLOCK
    chol.masked_fill_(index[:, None] <= index[None, :], 0.0)
    for rows, block in blocks:
        chol[..., rows, rows] = block
    return chol


def padded(n: int) -> int:
    """n rounded up to a multiple of 8 (see `walk_factor`)."""
    return -(-n // 8) * 8


def pad_rows(x: Tensor, n: int) -> Tensor:
    """(..., m, k) -> (..., n, k) with zero rows appended (differentiable)."""
    return torch.nn.functional.pad(x, (0, 0, 0, n - x.shape[-2]))


def _outer(a: Tensor, b: Tensor) -> Tensor:
    """(..., m, k), (..., n, k) -> (..., m, n) a b^T, by elementwise products summed over k
    (not a matmul: torch picks a matmul's kernel by the batch's shape): k outer products added
    in turn where k is small, else products summed along the last axis."""
    if a.shape[-1] > 8:  # contiguous rows: the sum then takes one path whatever the batch
        a, b = a.contiguous(), b.contiguous()
        return (a[..., :, None, :] * b[..., None, :, :]).sum(dim=-1)
    out = a[..., :, None, 0] * b[..., None, :, 0]
    for i in range(1, a.shape[-1]):
        out += a[..., :, None, i] * b[..., None, :, i]
    return out


def walk_whiten(
    jac: np.ndarray, d: np.ndarray, rates: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """L^-1 y and log det Sigma for every rate q and output o, where L L^T = Sigma_o(q) =
    diag(d) + q (J_o J_o^T) * min(age_i, age_j), the covariance `_walk_cholesky` factors (rows
    oldest first, ages n - 1 .. 0): jac (n_out, n, P), d (n,), rates (R,), y (n_out, n, k) ->
    (R, n_out, n, k), (R, n_out).

    Below its diagonal Sigma is semiseparable of rank P (for i > j, a_i <= a_j and Sigma_ij =
    (q a_i J_i) . J_j), so Sigma = L' diag(D) L'^T with L' unit lower triangular and
    semiseparable too, found row by row with a P x P running sum, and L^-1 y by the same pass
    (L = L' diag(D)^1/2): O(n P^2) for each rate instead of the Cholesky factor's O(n^3)
    (Foreman-Mackey et al. 2017, "Fast and scalable Gaussian process modeling", AJ 154:220).
    """
    n_out, n, p = jac.shape
    age = np.arange(n - 1, -1, -1, dtype=np.float64)
    u = rates[:, None, None, None] * age[:, None] * jac  # (R, n_out, n, P)
    diag = d + rates[:, None, None] * age * (jac * jac).sum(axis=-1)  # (R, n_out, n)
    lead = u.shape[:2]
    s = np.zeros(lead + (p, p))  # sum over earlier rows of D_j w_j w_j^T
    f = np.zeros(lead + (p, y.shape[-1]))  # sum over earlier rows of w_j z_j
    D = np.empty(lead + (n,))
    z = np.empty(lead + y.shape[1:])
    w_prev = np.zeros(lead + (p,))
    for i in range(n):
        if i:
            s += D[..., i - 1, None, None] * w_prev[..., :, None] * w_prev[..., None, :]
            f += w_prev[..., :, None] * z[..., i - 1, None, :]
        ui = u[..., i, :]
        su = (s @ ui[..., None])[..., 0]  # (R, n_out, P)
        D[..., i] = diag[..., i] - (ui * su).sum(axis=-1)
        w_prev = (jac[:, i] - su) / D[..., i, None]
        z[..., i, :] = y[:, i] - (ui[..., None] * f).sum(axis=-2)
    with np.errstate(all="ignore"):  # a D that is not positive gives NaN: the caller checks
        return z / np.sqrt(D)[..., None], np.log(D).sum(axis=-1)


def walk_factors(jacs: list[Tensor], weights: list[Tensor], rates: list[float]) -> list[Tensor]:
    """`RandomWalk`'s factors for many windows: (T, n_out, P) Jacobians, (T,) recency weights
    and rates q -> (n_out, m, m) factors of their kept targets (n = the weights' nonzero tail,
    padded to m rows: `walk_factor`).
    Windows with the same shapes (and number kept) share `walk_factor` passes, a bounded number
    of factor entries at a time; each is the same as it would be alone."""
    out: list[Tensor | None] = [None] * len(jacs)
    groups: dict[tuple, list[int]] = {}
    kept = [w > 0 for w in weights]
    for i, (jac, keep) in enumerate(zip(jacs, kept, strict=True)):
        groups.setdefault((tuple(jac.shape), int(keep.sum())), []).append(i)
    for (shape, n), members in groups.items():
        size = max(GROUP_ENTRIES // (shape[1] * padded(n) ** 2), 1)  # twins per pass
        for at in range(0, len(members), size):
            part = members[at : at + size]
            jac = torch.stack([jacs[i][kept[i]].permute(1, 0, 2) for i in part])
            w = [weights[i][kept[i]] for i in part]
            d = torch.stack([x.max() / x for x in w])
            q = torch.tensor([float(rates[i]) for i in part], dtype=DTYPE)
            chol = walk_factor(jac, d, q)
            for k, i in enumerate(part):
                out[i] = chol[k]
    return out  # type: ignore[return-value]


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

    def __init__(self, jac: Tensor, weights: Tensor, q: float, chol: Tensor | None = None):
        """The factors come from `walk_factor` (O(n P^2) per row), or are given (`chol`, as
        `walk_factors` finds them for many twins at once)."""
        self.keep = weights > 0  # a contiguous tail: the current regime
        self.n = int(self.keep.sum())
        if chol is None:
            [chol] = walk_factors([jac], [weights], [q])
        self.chol = chol  # (n_out, m, m): `walk_factor`'s, padded to m rows

    def whiten(self, x: Tensor) -> Tensor:
        """(n_out, n, k) -> L^-1 x, output by output."""
        white = torch.linalg.solve_triangular(
            self.chol, pad_rows(x, self.chol.shape[-1]), upper=False
        )
        return white[..., : self.n, :]

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


class DriftRate:
    """Estimates the random walk's rate q from the windows, by restricted maximum likelihood
    (REML; Patterson & Thompson 1971), as one tunes a Kalman filter's process noise.

    For a window's residuals e at the current center (standardized, Jacobian J), e = J b + v
    with v ~ N(0, s2 Sigma(q)): the restricted deviance, with the scale s2 profiled out,
        (n - P) log(s2_hat) + log det Sigma(q) + log det(J^T Sigma(q)^-1 J),
    is evaluated on the LOG_RATES grid and summed over outputs. Its running average over windows
    (weight MEMORY for the newest) is minimized, with a parabola through the best grid point and
    its neighbours. Before the first informative window there is no estimate (q is None).
    """

    def __init__(self):
        self.deviance: Tensor | None = None  # (len(LOG_RATES),) running restricted deviance
        # (len(LOG_RATES), n_out) running log of the profiled noise variance, in the outputs'
        # units where the windows' residual scales were given
        self.log_noise: Tensor | None = None

    @property
    def q(self) -> float | None:
        if self.deviance is None:
            return None
        d = self.deviance
        i = int(torch.argmin(d))
        log_q = float(LOG_RATES[i])
        if 0 < i < d.shape[0] - 1:
            curve = float(d[i - 1] - 2 * d[i] + d[i + 1])
            if curve > 0:
                log_q += 0.25 * float(d[i - 1] - d[i + 1]) / curve  # half-decade grid steps
        return 10.0**log_q

    @property
    def noise(self) -> Tensor | None:
        """(n_out,) the noise variance at the estimated rate (REML's profiled scale), in the
        outputs' units; None before an informative window with residual scales."""
        if self.deviance is None or self.log_noise is None:
            return None
        return self.log_noise[int(torch.argmin(self.deviance))].exp()

    def observe(
        self,
        jac: Tensor,
        residuals: Tensor,
        weights: Tensor,
        scale: Tensor | None = None,
        observed: Tensor | None = None,
    ) -> None:
        """Fold in one window: (T, n_out, P) Jacobian, (T, n_out) standardized residuals at the
        center, (T,) recency weights (zero before a detected change and for targets that see an
        outlier), (n_out,) the scale the residuals were standardized by (for the noise estimate;
        optional), and optionally (T, n_out) which targets were measured (the others have zero
        residuals and Jacobian rows: they whiten to zero and only their degrees of freedom need
        leaving out)."""
        keep = weights > 0
        n, p = int(keep.sum()), jac.shape[-1]
        if n < max(MIN_TARGETS, 4 * p):
            return
        jac, e, w = jac[keep], residuals[keep], weights[keep]
        if not bool(torch.isfinite(jac).all() and torch.isfinite(e).all()):
            return  # a window the model cannot linearize informs nothing
        measured = n if observed is None else observed[keep].sum(dim=0)  # per output
        used = jac.abs().amax(dim=0) > 0  # (n_out, P) parameters each output depends on
        ridge = 1e-9 * torch.eye(p, dtype=DTYPE)
        j = jac.permute(1, 0, 2)  # (n_out, n, P)
        rhs = torch.cat([j, e.T[..., None]], dim=-1)  # (n_out, n, P + 1)
        white, logdet = walk_whiten(
            j.numpy(), (w.max() / w).numpy(), (10.0**LOG_RATES).numpy(), rhs.numpy()
        )
        white, logdet = torch.from_numpy(white), torch.from_numpy(logdet)
        if not bool(torch.isfinite(white).all() and torch.isfinite(logdet).all()):
            return
        white_j, white_e = white[..., :p], white[..., p:]  # (R, n_out, n, P), (R, n_out, n, 1)
        gram = white_j.transpose(-1, -2) @ white_j + ridge  # (R, n_out, P, P)
        fit, info = torch.linalg.solve_ex(gram, white_j.transpose(-1, -2) @ white_e)
        if bool((info != 0).any()):  # collinear regressors (two outputs moving as one)
            return  # beyond what the ridge can break: this window informs nothing
        rss = (white_e - white_j @ fit).square().sum(dim=(-2, -1))  # (R, n_out)
        dof = measured - used.sum(dim=1)  # (n_out,)
        _, gram_logdet = torch.linalg.slogdet(gram)  # (R, n_out)
        deviance = dof * (rss / dof).log() + logdet + gram_logdet
        if observed is not None:  # an output measured too rarely says nothing
            deviance = torch.where(dof > 0, deviance, 0.0)
        deviance, noise = deviance.sum(dim=1), (rss / dof).log()  # (R,), (R, n_out)
        self.deviance = deviance if self.deviance is None else self.deviance.lerp(deviance, MEMORY)
        if scale is not None:
            log_noise = noise + 2 * scale.log()  # (len(LOG_RATES), n_out)
            same = self.log_noise is not None and self.log_noise.shape == log_noise.shape
            informed = dof > 0  # (n_out,) outputs this window measured often enough
            if same:
                mixed = self.log_noise.lerp(log_noise, MEMORY)
                self.log_noise = torch.where(informed, mixed, self.log_noise)
            elif bool(informed.all()):
                self.log_noise = log_noise

    def state_dict(self) -> dict:
        return {
            "deviance": None if self.deviance is None else self.deviance.clone(),
            "log_noise": None if self.log_noise is None else self.log_noise.clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        d, noise = state["deviance"], state.get("log_noise")
        self.deviance = None if d is None else d.clone().to(DTYPE)
        self.log_noise = None if noise is None else noise.clone().to(DTYPE)
