"""The references of bench/generalize.py, run on a drawn plant (`bench.family.Case`).

- `informed`: the Kalman filter over the plant's own parameters, given the true noise levels:
  the random walk's per-parameter variance (the mean squared step of the true path) and the
  process noise variance. On the linear plants it is the Kalman filter of a regression; on the
  physical and Hammerstein plants an extended Kalman filter (the Jacobian of the one-step
  prediction by central differences). With a random-walk plant it is the optimal tracker. A
  step, ramp or season is no random walk, and the mean squared step of such a path is too small
  a variance to follow it: there the filter takes the true path's variances times the factor
  of INFORMED_FACTORS that does best on the plant (an oracle's choice).
- `estimated`: the same filter knowing neither level. A bank of filters with random-walk
  variances on a grid (relative to the noise, per parameter over its mean squared Jacobian),
  each estimating the noise variance by maximum likelihood, predicts with the filter of the
  highest recent likelihood.
- `rls_best`: RLS on the linear regressors at the forgetting factor that did best on this very
  plant (an oracle's choice from a grid); `river_best`: river's linear regression likewise.

Every prediction is prequential: made before the observation is learned.
"""

from __future__ import annotations

import numpy as np

from bench.references import RLS, RiverLinear, run_online

INFORMED_FACTORS = (1.0, 10.0, 100.0, 1e3, 1e4)
P0 = 1e-2  # the filters start at the true initial parameters with this variance each
Q_GRID = tuple(10.0**e for e in range(-12, 2))  # relative random-walk variances of the bank
LIKELIHOOD_DECAY = 0.99  # the bank's recent log-likelihood forgets with this factor per step
NOISE_MEMORY = 200  # observations in the noise variances' running means, at most
RLS_LAMS = (0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 1.0)
RIVER_LRS = (0.003, 0.01, 0.03, 0.1)
STEP = 1e-6  # central-difference step in the filters' coordinates
SETTLE = 20  # observations the adaptive filters only predict, measuring the noise's size


def true_q(case) -> np.ndarray:
    """(d,) per-parameter variance of the true path's steps: the walk the plant really did."""
    return np.nanmean(np.diff(case.truth, axis=0) ** 2, axis=0)


def informed(case, excess) -> tuple[np.ndarray, float]:
    """(N, n_out) predictions of the Kalman filter given the true q and noise variance, and the
    factor on q (1 on a random walk, else the one of INFORMED_FACTORS with the least excess)."""
    factors = (1.0,) if case.shape == "walk" else INFORMED_FACTORS
    runs = [_bank(case, f * true_q(case)[None], case.noise_var, adaptive=False) for f in factors]
    scores = [excess(p) for p in runs]
    i = int(np.argmin(np.nan_to_num(scores, nan=np.inf)))
    return runs[i], factors[i]


def estimated(case) -> np.ndarray:
    """(N, n_out) predictions of the filter bank that estimates its noise levels online."""
    rel = np.array(Q_GRID)[:, None] * np.ones(case.truth.shape[1])  # (K, d)
    return _bank(case, rel, None, adaptive=True)


def _bank(case, q: np.ndarray, r: np.ndarray | None, adaptive: bool) -> np.ndarray:
    """(N, n_out) predictions of a FilterBank run over the case."""
    bank = FilterBank(case, q, r, adaptive)
    preds = np.full(case.observations.outputs.shape, np.nan)
    with np.errstate(all="ignore"):  # a filter of the bank that diverges drops out (NaN)
        for k in range(1, preds.shape[0]):
            if not np.isnan(case.oracle[k]).any():
                preds[k] = bank.step(k)
    return preds


class FilterBank:
    """K extended Kalman filters over the case's parameters, run side by side from the true
    initial parameters.

    Informed (`adaptive` False): q (K, d) absolute random-walk variances, r (n_out,) the noise.
    Adaptive: the noise variance factors out of a linear filter (P, Q and R all scale with it, the
    gain does not), so each filter runs in units of it: R = diag(w) with w the outputs' relative
    noise (mean 1), Q = q / (the parameter's mean squared Jacobian over w), and the scale r is
    estimated as the running mean of e' S^-1 e / n_out, the likelihood's own estimate.
    """

    def __init__(self, case, q: np.ndarray, r: np.ndarray | None, adaptive: bool):
        self.case, self.q, self.adaptive = case, q, adaptive
        K, d = q.shape
        n_out = case.observations.outputs.shape[1]
        self.theta = np.tile(case.truth[0], (K, 1))  # (K, d)
        self.P = np.tile(np.eye(d) * P0, (K, 1, 1))  # (K, d, d)
        self.offsets = np.vstack([np.zeros(d), STEP * np.eye(d), -STEP * np.eye(d)])  # (2d+1, d)
        self.w = np.ones((K, n_out)) if r is None else np.tile(r, (K, 1))  # (K, n_out)
        self.scale = np.ones(K)  # adaptive: the noise scale r
        self.e2_mean = np.ones((K, n_out))
        self.info = np.ones((K, d))
        self.loglik = np.zeros(K)
        self.seen = 0

    def step(self, k: int) -> np.ndarray:
        """The bank's prediction of observation k (n_out,), then learn it."""
        K, d = self.q.shape
        y = self.case.observations.outputs[k]
        batch = (self.theta[:, None, :] + self.offsets[None]).reshape(-1, d)
        f = self.case.measure(k, batch).reshape(K, 2 * d + 1, -1)
        pred = f[:, 0]  # (K, n_out)
        H = np.transpose(f[:, 1 : d + 1] - f[:, d + 1 :], (0, 2, 1)) / (2 * STEP)  # (K, n_out, d)
        alive = np.where(np.isfinite(self.loglik), self.loglik, -np.inf)
        out = pred[int(np.argmax(alive))]
        e = y - pred  # (K, n_out)
        n_out = e.shape[1]
        self.seen += 1
        beta = max(1.0 / self.seen, 1.0 / NOISE_MEMORY)  # 1 at first: a plain running mean
        Q = self.q
        if self.adaptive:
            if self.seen <= SETTLE:  # predict from the true start to learn the noise's size
                self.e2_mean += beta * (e**2 - self.e2_mean)
                self.w = self.e2_mean / self.e2_mean.mean(axis=1, keepdims=True)
                self.scale = self.e2_mean.mean(axis=1)
                if self.seen == SETTLE:
                    self.P = self.P / self.scale[:, None, None]
                return out
            self.info += beta * ((H**2 / self.w[:, :, None]).sum(axis=1) - self.info)
            Q = Q / np.maximum(self.info, 1e-300)
        P = self.P + Q[:, :, None] * np.eye(d)  # time update: the parameters random-walk a step
        HP = H @ P  # (K, n_out, d)
        S = HP @ np.transpose(H, (0, 2, 1)) + self.w[:, :, None] * np.eye(n_out)
        S_inv = _inverse(S)
        fit = np.einsum("ki,kij,kj->k", e, S_inv, e)
        if self.adaptive:
            self.scale += beta * (fit / n_out - self.scale)
            if n_out > 1:  # the outputs' relative noise: their errors less the parameters' part
                spread = self.scale[:, None] * np.einsum(
                    "kjj->kj", S - self.w[:, :, None] * np.eye(n_out)
                )
                self.e2_mean += beta * (np.maximum(e**2 - spread, 0.01 * e**2) - self.e2_mean)
                self.w = self.e2_mean / self.e2_mean.mean(axis=1, keepdims=True)
        logdet = np.linalg.slogdet(S)[1] + n_out * np.log(self.scale)
        self.loglik = LIKELIHOOD_DECAY * self.loglik - 0.5 * (logdet + fit / self.scale)
        gain = np.transpose(HP, (0, 2, 1)) @ S_inv  # (K, d, n_out)
        self.theta = self.theta + np.einsum("kij,kj->ki", gain, e)
        P = P - gain @ HP
        self.P = 0.5 * (P + np.transpose(P, (0, 2, 1)))
        return out


def _inverse(S: np.ndarray) -> np.ndarray:
    """Inverses of a stack of matrices; NaN for a singular one (its filter drops out)."""
    try:
        return np.linalg.inv(S)
    except np.linalg.LinAlgError:
        out = np.full_like(S, np.nan)
        for i, s in enumerate(S):
            try:
                out[i] = np.linalg.inv(s)
            except np.linalg.LinAlgError:
                continue
        return out


def _linear_run(case, make) -> np.ndarray:
    """(N, n_out) prequential predictions of one tracker per output on the case's regressors."""
    phi = case.regressors
    rows = ~np.isnan(phi).any(axis=1)
    preds = np.full(case.observations.outputs.shape, np.nan)
    preds[rows], _ = run_online(make, phi[rows], case.observations.outputs[rows])
    return preds


def best_of(case, make_for, grid, excess) -> tuple[np.ndarray, object]:
    """Predictions and value of the grid setting with the lowest excess error on this plant."""
    runs = [_linear_run(case, make_for(v)) for v in grid]
    scores = [excess(p) for p in runs]
    i = int(np.nanargmin(np.nan_to_num(scores, nan=np.inf)))
    return runs[i], grid[i]


def rls_best(case, excess) -> tuple[np.ndarray, float]:
    return best_of(case, lambda lam: lambda j: RLS(lam), RLS_LAMS, excess)


def river_best(case, excess) -> tuple[np.ndarray, float]:
    return best_of(case, lambda lr: lambda j: RiverLinear(lr), RIVER_LRS, excess)
