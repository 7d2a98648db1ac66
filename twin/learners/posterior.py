"""`pgpe` with its search distribution as a posterior (`optimizer: "newton"`): variational
online Newton (the Bayesian learning rule, Khan & Rue 2021, "The Bayesian learning rule",
arXiv:2107.04562) on the loss of the newest targets, the gradient and the curvature estimated
from the same antithetic samples, under a bank of random-walk rates averaged by likelihood.

The search distribution is N(m, C) over the scaled parameters z = theta / parameter_scales.
Each update scores the center and `N` antithetic pairs m +- L zeta (L L' = C, zeta standard
normal) by the loss of the targets that arrived since the last update: half their squared
residuals over the noise unit s (the first fold's robust residual scale), summed, a Gaussian
log-likelihood (least squares, not Huber's loss: a kink within the samples' reach blends its
two pieces; outlying values are screened out as for every learner). No model gradients are
taken: the antithetic differences (l+ - l-) / 2 = (L'g)' zeta and second differences
l+ + l- - 2 l0 = zeta' (L'HL) zeta hold exactly for a quadratic loss, so least squares over
the pairs gives its gradient g and curvature H (Gaussian smoothing's along the sampled
directions otherwise; Nesterov & Spokoiny 2017), H kept positive semi-definite. The samples
are drawn from the mixture's covariance below, narrowed so that none moves a target's
standardized residual by more than PROBE of `huber` on the typical coordinate.

Between updates the parameters are taken to random-walk; the walk's variance is not fixed but
averaged over a bank of rates (multiple-model estimation, Magill 1965), as the `kalman` learner
does: filter k keeps its own center m_k, covariance S_k and noise variance lam_k s^2 (lam_k
the running mean of its standardized innovations' square: maximum likelihood, so the gain does
not follow the window's scale); its time update adds n Q_k (n new targets, Q_k = q_k lam_k / f
per coordinate, f the running mean information of one target, so q_k is relative to what one
target tells), and with H_k = H / lam_k its Newton step under the curvature is
    S_k <- (S_k^-1 + H_k)^-1,   m_k <- m_k - S_k (g + H (m_k - m)) / lam_k,
the Kalman filter's measurement update when the model is linear in its parameters and the noise
Gaussian. Each filter scores the new targets by their predictive log-likelihood, which the same
three numbers give (loss, g, H at m, moved to m_k along the quadratic; M residuals):
    -1/2 [log det(I + S_k H_k) + M log lam_k + 2 l_k - g_k' (S_k^-1 + H_k)^-1 g_k],
forgotten by DECAY per target; the model's center is the filters' centers averaged by their
weights (dynamic model averaging, Raftery, Karny & Ettler 2010). The first fold waits for
MIN_FRESH targets and takes in all the window holds, from the prior N(center, PRIOR I).

Every twin keeps its own generator and bank; the model calls of a group are made together
(`StackedObjective`) and the small P x P algebra twin by twin, so a twin's numbers do not depend
on its group.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import Tensor

from twin.learners.base import Pending
from twin.learners.objective import Objective
from twin.learners.scaler import affine_map, follow, normalization, standardizes
from twin.learners.together import StackedObjective
from twin.learners.window import MIN_FRESH
from twin.models.base import DTYPE, TwinModel

# Relative random-walk variances of the bank, per target, in units of what one target tells of
# a coordinate (its information f): from nearly stationary to a walk that a few targets follow.
RATES = tuple(10.0**e for e in range(-12, 0))
PRIOR = 1.0  # prior variance of each scaled coordinate: they are O(1) by construction
DECAY = 1.0 - 1.0 / 200  # each filter's recent log-likelihood forgets by this per target
INFO_MEMORY = 200  # targets in the running mean of the information, at most
NOISE_MEMORY = 200  # residuals in the running mean of each filter's noise factor, at most
LAM_FLOOR = 1e-12  # no filter's noise variance below this fraction of the first fold's
# The curvature's P (P + 1) / 2 unknowns are fitted by least squares over about as many pairs:
# O(P^4) per update, 152 pairs at 16 parameters; beyond that "newton" is refused (and not the
# default): Adam's steps cost O(P) per sample.
MAX_PARAMS = 16
RESCALE = 0.01  # the bank follows the channel scaler once it has moved by this share of a std
PROBE = 0.1  # samples move a target's standardized residual by at most this much of huber
MAX_VARIANCE = 1e6  # no filter's variance of a coordinate grows beyond PRIOR times this


def pairs(n_params: int) -> int:
    """Antithetic pairs per update: the curvature's P (P + 1) / 2 unknowns and the gradient's P
    in one least-squares fit, with as many again to spare (at least 8)."""
    return max(n_params * (n_params + 1) // 2 + n_params, 8)


class Posterior:
    """A twin's bank of filters over its scaled parameters (module doc), relative to the
    model's center: offsets (R, P), covariances (R, P, P), log-likelihoods (R,)."""

    def __init__(self, n_params: int):
        r = len(RATES)
        self.offsets = np.zeros((r, n_params))
        self.covariances = np.tile(np.eye(n_params) * PRIOR, (r, 1, 1))
        self.loglik = np.zeros(r)
        self.info = np.zeros(n_params)  # running mean of diag(H) per target
        self.n_seen = 0
        # Each filter's noise variance is lam_k * scale^2: `scale` (n_out,) the residuals' robust
        # scale at the first fold, lam_k the running mean of its standardized innovations' square
        # (maximum likelihood; Mehra 1972), so the gain never follows the window's scale.
        self.scale: np.ndarray | None = None
        self.lam = np.ones(r)
        self.n_residuals = 0
        self.last_seq: int | None = None  # the newest target folded in
        self.normalization: tuple[np.ndarray, ...] | None = None  # the scaler when written

    @property
    def weights(self) -> np.ndarray:
        finite = np.where(np.isfinite(self.loglik), self.loglik, -np.inf)
        w = np.exp(finite - finite.max())
        return w / w.sum()

    def walk(self, n: int) -> np.ndarray:
        """(R, P) each filter's random-walk variance over n targets (at most the prior's)."""
        f = np.maximum(self.info, 1e-300)
        rates = np.asarray(RATES) * self.lam  # relative to each filter's noise variance
        q = rates[:, None] / f[None, :] if self.n_seen else np.zeros((len(RATES), 1))
        return np.minimum(n * q, PRIOR) * np.ones_like(self.offsets)

    def predictive(self, n: int) -> np.ndarray:
        """(R, P, P) each filter's covariance after the time update over n targets."""
        s = self.covariances.copy()
        idx = np.arange(s.shape[-1])
        s[:, idx, idx] = np.minimum(s[:, idx, idx] + self.walk(n), PRIOR * MAX_VARIANCE)
        return s

    def sampling(self, n: int) -> np.ndarray:
        """(P, P) the mixture's predictive covariance about the center."""
        w = self.weights
        spread = self.offsets[:, :, None] * self.offsets[:, None, :]
        return np.einsum("r,rpq->pq", w, self.predictive(n) + spread)

    def probe(self, c: np.ndarray, huber: float) -> float:
        """The factor on the sampling covariance c that keeps a sample's change of a target's
        standardized residual within PROBE of Huber's threshold on the typical coordinate
        (sqrt(f_i c_ii) <= PROBE * huber): the loss's derivatives are then those of its
        quadratic or linear piece at the center, not a blend across the kink."""
        spread = float(np.max(self.info * np.diagonal(c)))
        limit = (PROBE * huber) ** 2
        return min(1.0, limit / spread) if spread > 0 else 1.0

    def fold(self, loss0: float, g: np.ndarray, H: np.ndarray, n: int, m: int) -> np.ndarray:
        """Fold n new targets of loss `loss0`, gradient g and curvature H at the center into
        every filter (m residuals in all), in units of `scale`; return the new center's offset
        from the old (P,)."""
        diag = np.clip(np.diagonal(H), 0.0, None) / n
        memory = min(self.n_seen + n, INFO_MEMORY)
        self.info = self.info + min(n / memory, 1.0) * (diag - self.info)
        s_pred = self.predictive(n)  # before n_seen moves: the first targets add no walk
        self.n_seen += n
        d, lam = self.offsets, self.lam[:, None]
        g_k = (g[None, :] + d @ H) / lam  # (R, P), H symmetric
        l_k = (loss0 + d @ g + 0.5 * np.einsum("rp,pq,rq->r", d, H, d)) / self.lam
        h_k = H[None] / lam[:, :, None]
        eye = np.eye(H.shape[0])
        m_mat = eye[None] + h_k @ s_pred  # I + H S, (R, P, P)
        s_new = s_pred @ np.linalg.inv(m_mat)  # (S^-1 + H)^-1
        s_new = 0.5 * (s_new + s_new.transpose(0, 2, 1))
        step = np.einsum("rpq,rq->rp", s_new, g_k)
        _, logdet = np.linalg.slogdet(m_mat)
        quad = 2 * l_k - np.einsum("rp,rp->r", g_k, step)  # e' (J S J' + lam)^-1 e
        loglik = -0.5 * (logdet + m * np.log(self.lam) + quad)
        self.loglik = DECAY**n * self.loglik + np.where(np.isfinite(loglik), loglik, -np.inf)
        seen = min(self.n_residuals + m, NOISE_MEMORY)
        self.n_residuals += m
        matched = np.where(np.isfinite(quad), self.lam * quad / max(m, 1), self.lam)
        self.lam = np.maximum(self.lam + min(m / seen, 1.0) * (matched - self.lam), LAM_FLOOR)
        centers = d - step
        self.covariances = s_new
        shift = self.weights @ centers
        self.offsets = centers - shift
        return shift

    def state_dict(self) -> dict:
        return {
            "offsets": torch.from_numpy(self.offsets.copy()),
            "covariances": torch.from_numpy(self.covariances.copy()),
            "loglik": torch.from_numpy(self.loglik.copy()),
            "info": torch.from_numpy(self.info.copy()),
            "n_seen": self.n_seen,
            "scale": None if self.scale is None else torch.from_numpy(self.scale.copy()),
            "lam": torch.from_numpy(self.lam.copy()),
            "n_residuals": self.n_residuals,
            "last_seq": self.last_seq,
            "normalization": None
            if self.normalization is None
            else [torch.from_numpy(a.copy()) for a in self.normalization],
        }

    def load_state_dict(self, state: dict) -> None:
        self.offsets = state["offsets"].numpy().copy()
        self.covariances = state["covariances"].numpy().copy()
        self.loglik = state["loglik"].numpy().copy()
        self.info = state["info"].numpy().copy()
        self.n_seen = int(state["n_seen"])
        self.scale = None if state["scale"] is None else state["scale"].numpy().copy()
        self.lam = state["lam"].numpy().copy()
        self.n_residuals = int(state["n_residuals"])
        self.last_seq = None if state["last_seq"] is None else int(state["last_seq"])
        norm = state["normalization"]
        self.normalization = None if norm is None else tuple(a.numpy().copy() for a in norm)


def fresh_targets(learner, objective: Objective) -> int:
    """How many of the objective's targets (the newest) arrived since the last update; all of
    them where none was folded in yet."""
    seq = learner.window.seq[learner.model.context :]
    last = learner.posterior.last_seq
    n = objective.n_targets and seq.shape[0]
    if last is None or n == 0:  # the first fold waits for MIN_FRESH targets
        return n if n >= MIN_FRESH else 0
    return int((seq > last).sum())


def newest(objective: Objective, n: int, scale: np.ndarray | None) -> Objective:
    """The objective of its newest n targets alone, each weighted 1 (0 where screened out),
    standardized by `scale` (n_out,) where given, no walk and no smoothness: a shallow copy that
    `StackedObjective` scores like any other."""
    part = copy.copy(objective)
    part.args = tuple(a[-n:] for a in objective.args)
    part.y = objective.y[-n:]
    if scale is not None:
        part.s = torch.from_numpy(scale)
        part.inv_s = 1 / part.s
    part.y_scaled = part.y / part.s
    part.y_rows = part.y_scaled.T.contiguous()
    part.mask = None if objective.mask is None else objective.mask[-n:]
    part.w_mean = (objective.weights[-n:] > 0).to(DTYPE)
    part.walk, part.smoothness = None, 0.0
    part.delta = math.inf  # squared: the Gaussian likelihood (outlying values are screened out)
    return part


def newton_together(pending: list[Pending]) -> list[tuple[Tensor, float]]:
    """One variational-online-Newton update of K twins (module doc): one batched model call
    scores every twin's antithetic samples on its newest targets."""
    learners = [p.learner for p in pending]
    counts = [fresh_targets(lr, p.objective) for lr, p in zip(learners, pending, strict=True)]
    for learner in learners:
        follow_scaler(learner.posterior, learner.model)
    parts = [
        newest(p.objective, max(n, 1), lr.posterior.scale)
        for lr, p, n in zip(learners, pending, counts, strict=True)
    ]
    stacked = StackedObjective(parts)
    scale = stacked.scale  # (K, P)
    z = stacked.theta_prev / scale
    P = z.shape[1]
    n_pairs = pairs(P)
    roots, zetas = [], []
    for learner, n in zip(learners, counts, strict=True):
        c = learner.posterior.sampling(max(n, 1))
        c = c * learner.posterior.probe(c, learner.options["huber"])
        roots.append(_root(c, learner.options["sigma_min"], learner.options["sigma_max"]))
        zetas.append(torch.randn(n_pairs, P, generator=learner.generator, dtype=DTYPE))
    root = torch.from_numpy(np.stack([r[0] for r in roots]))  # (K, P, P): L, C ~ L L'
    zeta = torch.stack(zetas)  # (K, N, P)
    step = (zeta[:, :, None, :] * root[:, None, :, :]).sum(dim=-1)  # (K, N, P): L zeta
    samples = torch.cat([z[:, None], z[:, None] + step, z[:, None] - step], dim=1)
    losses = stacked.losses(stacked.clamp(samples * scale[:, None])).numpy()  # (K, 1 + 2N)
    out = []
    for k, (learner, p, n) in enumerate(zip(learners, pending, counts, strict=True)):
        theta = p.objective.theta_prev
        l0, lp, lm = losses[k, 0], losses[k, 1 : 1 + n_pairs], losses[k, 1 + n_pairs :]
        post = learner.posterior
        if n == 0 or not np.isfinite(losses[k]).all():  # nothing new, or refused: center stays
            out.append((theta.clone(), float(l0)))
            continue
        g, H = _derivatives(zeta[k].numpy(), lp, lm, l0, *roots[k])
        if post.scale is None:  # the first fold: the window's residual scale is the unit
            post.scale = p.objective.s.numpy().copy()
        measured = n * parts[k].y.shape[1] if parts[k].mask is None else int(parts[k].mask.sum())
        shift = post.fold(float(l0), g, H, n, measured)
        post.last_seq = int(learner.window.seq[-1])
        z_new = torch.from_numpy(z[k].numpy() + shift)
        theta_new = p.objective.clamp(z_new * scale[k])
        post.offsets = post.offsets + (z_new - theta_new / scale[k]).numpy()  # clamped: kept
        if post.normalization is None:  # the scaler the bank is expressed in
            post.normalization = normalization(learner.model)
        learner.sigma = torch.from_numpy(np.sqrt(np.diagonal(post.sampling(1)).copy()))
        out.append((theta_new, math.nan))
    # the window's loss before and after, every twin's in one call
    window = StackedObjective([p.objective for p in pending])
    before_after = torch.stack([window.theta_prev, torch.stack([t for t, _ in out])], dim=1)
    scored = window.losses(before_after).tolist()
    for p, (before, _) in zip(pending, scored, strict=True):
        p.objective.center_loss = before
    return [(theta, after) for (theta, _), (_, after) in zip(out, scored, strict=True)]


def _root(c: np.ndarray, low: float, high: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A square root L = V sqrt(lam) of C (eigenvalues kept within [low^2, high^2]), and V and
    1 / sqrt(lam) to undo it."""
    lam, v = np.linalg.eigh(0.5 * (c + c.T))
    root_lam = np.sqrt(np.clip(lam, low * low, high * high))
    return v * root_lam[None, :], v, 1.0 / root_lam


def _derivatives(zeta, lp, lm, l0, root, v, inv_root) -> tuple[np.ndarray, np.ndarray]:
    """The loss's gradient g (P,) and curvature H (P, P) at the center in z, fitted by least
    squares to the pairs' antithetic and second differences along L zeta; H kept PSD."""
    P = zeta.shape[1]
    gw = np.linalg.lstsq(zeta, 0.5 * (lp - lm), rcond=None)[0]  # L'g
    iu = np.triu_indices(P)
    weight = np.where(iu[0] == iu[1], 1.0, 2.0)
    features = zeta[:, iu[0]] * zeta[:, iu[1]] * weight  # zeta' A zeta, A's upper triangle
    upper = np.linalg.lstsq(features, lp + lm - 2 * l0, rcond=None)[0]
    hw = np.zeros((P, P))
    hw[iu] = upper
    hw = hw + np.triu(hw, 1).T  # L'HL
    lam, u = np.linalg.eigh(hw)
    hw = (u * np.clip(lam, 0.0, None)) @ u.T
    # L = V D (D = sqrt(lam)): g = V D^-1 (L'g), H = V D^-1 (L'HL) D^-1 V'
    g = v @ (inv_root * gw)
    back = v * inv_root[None, :]
    return g, back @ hw @ back.T


def _moved(old: tuple[np.ndarray, ...], new: tuple[np.ndarray, ...]) -> bool:
    """Whether a channel's mean or standard deviation moved by more than RESCALE of its
    standard deviation (y_mean, y_std, u_mean, u_std)."""
    y_std, u_std = np.abs(old[1]) + 1e-300, np.abs(old[3]) + 1e-300
    scales = (y_std, y_std, u_std, u_std)
    return any(
        bool((np.abs(b - a) > RESCALE * s).any()) for a, b, s in zip(old, new, scales, strict=True)
    )


def follow_scaler(post: Posterior, model: TwinModel) -> None:
    """Where the twin's channel scaler moved since the bank was expressed in it, the model
    re-expressed its parameters by an affine map theta -> M theta + b (`TwinModel._reexpress`);
    take the filters' offsets and covariances through it (in the scaled coordinates). The scaler
    moves a little with every observation and the map takes P + 1 re-expressions, so the bank
    follows once the scaler has moved by RESCALE of a standard deviation, the map then from the
    scaler it was expressed in (the re-expressions compose: exact for the kinds that
    standardize); until then its offsets are off by at most that share."""
    old = post.normalization
    if old is None or not standardizes(model):
        return
    new = normalization(model)
    if not _moved(old, new):
        return
    scale = model.parameter_scales().detach().to(DTYPE).numpy()
    m = affine_map(model, old, new, scale)
    if m is None:
        return
    post.offsets, post.covariances, post.info = follow(m, post.offsets, post.covariances, post.info)
    post.normalization = new
