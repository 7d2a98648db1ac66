"""Decoupled Kalman learner (`dekf`): a bank of decoupled extended Kalman filters over a network's
weights (Puskorius & Feldkamp 1991, "Decoupled extended Kalman filter training of feedforward
layered networks", IJCNN), the weights taken to random-walk, each filter at its own rate, the
likeliest filter's center the model's (multiple-model estimation, Magill 1965).

Decoupled: each filter's covariance is block-diagonal, one block per group of weights the model
names (`parameter_groups`: an mlp's neurons, each with the weights into it and its bias), so a
target costs O(sum of the blocks' squares) per filter instead of O(P^2): 37,000 multiply-adds on
the default mlp of 1,313 weights against 1.7 million for the full filter. The innovation is
shared, as in the full filter: its variance sums h P h' over the blocks.

Self-tuning, nothing fitted to a plant: the bank's random-walk rates are a log grid over decades
(RATES, per target in the model's scaled coordinates, which are O(1) by construction), so the
drift rate is estimated by the filters' recent predictive likelihoods (forgotten by
LIKELIHOOD_DECAY per target), a step or a fast drift handled by the fast filters gaining the
likelihood. The noise variance is REML's over the window (`DriftRate`, every DRIFT_EVERY
updates, as the kalman learner's), at the model's center over all coordinates where the window
holds 4 targets per parameter, else over the output layer's (the model is linear in them: an
mlp's hidden width plus one per output); until the window informs it, each filter's own
covariance matching (Mehra 1972, "Approaches to adaptive filtering", IEEE TAC 17(5)): the running
mean of e^2 - h P h' over the last NOISE_MEMORY targets, not below the squared residual after
the update, its first value the first innovation's square. Every estimate is floored as the
kalman learner's (`_noise_floor`). Each filter is linearized at its
own center (reverse mode, every filter in one vmapped call), so filters that drifted apart stay
within their linearization's reach.

Each target is folded in as in the kalman learner: time update (the filter's rate added to its
blocks' diagonals, no variance above the prior's: no coordinate is less known than before any
data), Huber-weighted measurement update (Cipra & Romera 1997), outputs a sensor did not report
skipped. When the twin's channel scaler moves, the model re-expresses its center by an affine
map that acts within each group (an mlp's first layer mixes a neuron's bias with its weights,
the last scales each output's row); the other filters' offsets and the covariance blocks go
through the same map, found by probing the model with one unit vector per position in a group.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.func import jacfwd, jacrev, vmap

from twin.learners.base import DRIFT_EVERY, Learner, UpdateReport
from twin.learners.kalman import _noise_floor
from twin.learners.objective import screened, target_mask
from twin.learners.options import COMMON_OPTIONS, WALK_WINDOW, Option, positive
from twin.learners.scaler import normalization, reexpress_images, standardizes
from twin.learners.window import regime_weights, robust_scale
from twin.models.base import DTYPE, TwinModel, flat_parameters, load_flat, unflatten
from twin.observations import Observations, supervised

PRIOR = 1.0  # prior variance of each scaled coordinate, and the most any may reach
# The bank's random-walk rates per target in scaled coordinates: decades from nearly stationary
# to a walk that moves a weight by its own size in 100 targets
RATES = tuple(10.0**e for e in range(-8, -1))
LIKELIHOOD_DECAY = 0.99  # each filter's recent log-likelihood forgets with this factor per target
NOISE_MEMORY = 200  # targets in each filter's running noise estimate, at most
WINSOR = 3.0  # innovations clipped at this many predicted std in the noise matching

UNUSED = ("smoothness", "boost", "boost_updates")  # common options a filter has no use for
OPTIONS: dict[str, Option] = {
    **{k: v for k, v in COMMON_OPTIONS.items() if k not in UNUSED},
    # "auto": a bank over RATES, the likeliest filter's center the model's; a number: one
    # filter at that rate (per target, scaled coordinates)
    "drift": Option("float", "auto", 0.0, 1.0, words=("auto",)),
    # the window holds the context and the values the outlier guard and the noise floor see
    "window": Option("int", WALK_WINDOW, 8, 100_000),
    "prior": positive(PRIOR, 1e6),
    # every target is folded in before the next is predicted, as the kalman learner does
    "update_size": Option("int", 1, 1, 100_000),
}


def parameter_groups(model: TwinModel) -> list[np.ndarray]:
    """The model's groups of flat parameter indices (`parameter_groups` of the kind), else one
    group of them all (the full filter)."""
    groups = getattr(model, "parameter_groups", None)
    if groups is not None:
        return [np.asarray(g, dtype=np.int64) for g in groups()]
    return [np.arange(flat_parameters(model).numel())]


class Blocks:
    """Groups of equal size stacked: index arrays (G, n) per size, in order of size."""

    def __init__(self, groups: list[np.ndarray]):
        sizes = sorted({len(g) for g in groups})
        self.index = [np.stack([g for g in groups if len(g) == n]) for n in sizes]

    def eye(self, k: int, prior: float) -> list[np.ndarray]:
        """Per size (K, G, n, n): prior times the identity."""
        return [np.tile(np.eye(ix.shape[1]) * prior, (k, ix.shape[0], 1, 1)) for ix in self.index]


class DecoupledKalmanLearner(Learner):
    """A bank of decoupled extended Kalman filters over the parameters (module doc)."""

    method = "dekf"
    OPTIONS = OPTIONS

    def __init__(self, model: TwinModel, options: dict, seed: int):
        super().__init__(model, options, seed)
        groups = parameter_groups(model)
        self.blocks = Blocks(groups)
        # the coordinates the noise is estimated over: all where the window holds REML's 4
        # targets per parameter, else the output layer's (the model is linear in them)
        n_params = sum(len(g) for g in groups)
        few = 4 * n_params <= self.options["window"] or len(groups) <= model.n_outputs
        self.noise_index = np.sort(np.concatenate(groups if few else groups[-model.n_outputs :]))
        n, k, n_out = flat_parameters(model).numel(), len(self.rates), model.n_outputs
        self.offsets = np.zeros((k, n))  # (K, P) each filter's center less the model's
        self.covariances = self.blocks.eye(k, self.options["prior"])  # per size (K, G, n, n)
        self.loglik = np.zeros(k)  # (K,) each filter's recent predictive log-likelihood
        self.noise_sq = np.zeros((k, n_out))  # (K, n_out) each filter's noise variance estimate
        self.n_seen = 0  # targets folded in
        self.noise_floor = np.zeros(n_out)
        self.normalization: tuple[np.ndarray, ...] | None = None  # the scaler when written

    @property
    def rates(self) -> tuple[float, ...]:
        if self.options["drift"] == "auto":
            return RATES
        return (float(self.options["drift"]),)

    @property
    def selected(self) -> int:
        """The filter of the highest recent likelihood: its center is the model's."""
        return int(np.argmax(np.where(np.isfinite(self.loglik), self.loglik, -np.inf)))

    @property
    def noise(self) -> np.ndarray:
        """(n_out,) the noise variance in the outputs' units: REML's over the output layer
        where the window has informed it, else the selected filter's own estimate."""
        return self._noise()[self.selected]

    def _noise(self) -> np.ndarray:
        """(K, n_out) each filter's noise variance (REML's, where known, is every filter's)."""
        estimate = self.noise_sq
        reml = self.drift_rate.noise
        if reml is not None:
            estimate = np.where(np.isfinite(reml.numpy()), reml.numpy(), estimate)
        return np.maximum(estimate, self.noise_floor)

    def steps_with_lr(self) -> bool:
        return False

    def drift(self) -> float:
        """The selected filter's rate."""
        return self.rates[self.selected]

    def on_drift(self, start_seq: int | None = None) -> None:
        """An abrupt change: the bank follows it by itself (its fast filters gain the
        likelihood); a lone filter gets the prior's variance back, to re-learn what moved."""
        if len(self.rates) == 1:
            prior = self.options["prior"]
            for c in self.covariances:
                _time_update(c, np.array([prior]), prior)
        if start_seq is not None:
            self.regime_start = int(start_seq)

    def update(self, obs: Observations) -> UpdateReport:
        self.observe(obs)
        if self.regime_start is not None and int(self.window.seq[0]) >= self.regime_start:
            self.regime_start = None
        L, k = self.model.context, len(obs)
        tail = min(len(self.window), k + L)
        if tail <= L:
            return UpdateReport(math.nan, math.nan, 0.0, None, math.nan, k, 0)
        if self.n_updates % self._noise_every == 0:
            self._estimate_noise()
        w = self.window
        self.noise_floor = _noise_floor(w.outputs.numpy(), w.observed.numpy())
        observed = None if w.complete() else w.observed[-tail:]
        outputs, excluded = screened(w.outputs[-tail:], L, observed)
        y_ctx, u_ctx, u_now, dt, y = supervised(w.ts[-tail:], w.inputs[-tail:], outputs, L)
        keep = np.ones(y.shape[0], dtype=bool) if excluded is None else ~excluded.numpy()
        measured = np.ones(y.shape, dtype=bool)
        if observed is not None:
            mask = target_mask(observed[L:], y, (y_ctx, u_ctx, u_now, dt))
            y_ctx, u_ctx, u_now, dt = (torch.nan_to_num(a) for a in (y_ctx, u_ctx, u_now, dt))
            y, measured = torch.where(mask, y, 0.0), mask.numpy()
        scale = self.model.parameter_scales().detach().to(DTYPE)
        low, high = (b.to(DTYPE).numpy() / scale.numpy() for b in self.model.raw_bounds())
        z_start = (flat_parameters(self.model).to(DTYPE) / scale).numpy()
        self._follow_scaler(scale.numpy())

        def predict(z):
            return self.model.forward_with(
                unflatten(self.model, z * scale), y_ctx, u_ctx, u_now, dt
            )

        centers = np.clip(z_start + self.offsets, low, high)  # (K, P)
        zs = torch.from_numpy(centers)
        with torch.no_grad():
            yhat0 = vmap(predict)(zs).numpy()  # (K, T, n_out)
        jac = vmap(jacrev(predict))(zs).detach().numpy()  # (K, T, n_out, P)
        y = y.numpy()
        if not (np.isfinite(yhat0).all() and np.isfinite(jac).all()):  # refused: center stays
            return UpdateReport(math.nan, math.nan, 0.0, None, math.nan, k, y.shape[0])
        new, before, after = self._fold(centers, yhat0, jac, y, keep, measured)
        new = np.clip(new, low, high)
        self._keep_finite(new, centers)
        z = new[self.selected]
        self.offsets = new - z
        load_flat(self.model, torch.from_numpy(z) * scale)
        self.normalization = normalization(self.model)
        self.n_updates += 1
        n_targets = int((keep & measured.any(axis=1)).sum())
        return UpdateReport(before, after, float(np.linalg.norm(z - z_start)), None, math.nan, k,
                            n_targets)  # fmt: skip

    def _fold(self, z0, yhat0, jac, y, keep, measured):
        """Fold the targets (T, n_out) in one at a time into every filter, those `measured`
        only; predictions yhat0 (K, T, n_out) and Jacobians jac (K, T, n_out, P) taken at the
        filters' centers z0 (K, P). Return the new centers and the selected filter's mean
        squared standardized innovation before and residual after."""
        Z, blocks = z0.copy(), [c.copy() for c in self.covariances]
        rates, prior, delta = np.asarray(self.rates), self.options["prior"], self.options["huber"]
        K = len(rates)
        before, after = [], []
        for t in np.flatnonzero(keep):
            seen = measured[t]
            if not seen.any():
                continue
            for c in blocks:  # time update: the random walk, no variance above the prior's
                _time_update(c, rates, prior)
            best = self.selected
            fit = np.zeros(K)
            beta = max(1.0 / (self.n_seen + 1), 1.0 / NOISE_MEMORY)
            noise = self._noise()
            for o in np.flatnonzero(seen):
                h = jac[:, t, o, :]  # (K, P)
                e = y[t, o] - yhat0[:, t, o] - ((Z - z0) * h).sum(axis=1)  # (K,)
                fresh = self.noise_sq[:, o] == 0  # the first innovation sets the noise
                self.noise_sq[fresh, o] = e[fresh] ** 2
                noise[fresh, o] = np.maximum(e[fresh] ** 2, self.noise_floor[o])
                r = noise[:, o]  # (K,)
                hs = [h[:, ix] for ix in self.blocks.index]  # per size (K, G, n)
                phs = [(c @ hb[..., None])[..., 0] for c, hb in zip(blocks, hs, strict=True)]
                hph = sum((ph * hb).sum(axis=(1, 2)) for ph, hb in zip(phs, hs, strict=True))
                hph = np.maximum(hph, 0.0)
                s = hph + r
                with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                    nu = np.abs(e) / np.sqrt(np.maximum(s, 1e-300))
                    weight = np.where(nu <= delta, 1.0, delta / np.maximum(nu, 1e-300))
                    rho = np.where(nu <= delta, 0.5 * nu * nu, delta * nu - 0.5 * delta * delta)
                    fit -= 0.5 * np.log(np.maximum(s, 1e-300)) + rho
                    denom = hph + r / weight  # (K,)
                for c, ph, ix in zip(blocks, phs, self.blocks.index, strict=True):
                    gain = ph / denom[:, None, None]  # (K, G, n)
                    Z[:, ix] += gain * e[:, None, None]
                    c -= gain[..., :, None] * ph[..., None, :]
                    c += np.swapaxes(c, -1, -2)
                    c *= 0.5
                res = y[t, o] - yhat0[:, t, o] - ((Z - z0) * h).sum(axis=1)  # (K,)
                # covariance matching (Mehra 1972): E[e^2] - h P h' = r, not below the
                # residual's square after the update (it is r^2 / s in expectation)
                matched = np.maximum(np.minimum(e * e, WINSOR**2 * s) - hph, res * res)
                self.noise_sq[:, o] += beta * (matched - self.noise_sq[:, o])
                before.append(e[best] ** 2 / s[best] if s[best] > 0 else math.nan)
                after.append(res[best] ** 2 / r[best] if r[best] > 0 else math.nan)
            self.loglik = LIKELIHOOD_DECAY * self.loglik + fit
            self.n_seen += 1
        self.covariances = blocks
        return Z, _mean(before), _mean(after)

    @property
    def _noise_every(self) -> int:
        """Updates between windows that inform the REML estimate: DRIFT_EVERY updates of the
        common update_size (4), whatever this twin's."""
        return max(1, DRIFT_EVERY * 4 // self.options["update_size"])

    def _estimate_noise(self) -> None:
        """Fold the window into the REML estimate of the noise (`DriftRate`, as the kalman
        learner's), over the output layer's coordinates (`noise_index`) at the model's center:
        the model is linear in them, and there are few (an mlp's hidden width plus one per
        output), so the window's Jacobian costs a few forward-mode tangents."""
        w, L = self.window, self.model.context
        observed = None if w.complete() else w.observed
        outputs, excluded = screened(w.outputs, L, observed)
        y_ctx, u_ctx, u_now, dt, y = supervised(w.ts, w.inputs, outputs, L)
        weights = regime_weights(w.seq[L:], math.inf, self.regime_start)
        if excluded is not None:
            weights = weights * ~excluded
        mask = None
        if observed is not None:
            mask = target_mask(observed[L:], y, (y_ctx, u_ctx, u_now, dt))
            y_ctx, u_ctx, u_now, dt = (torch.nan_to_num(a) for a in (y_ctx, u_ctx, u_now, dt))
            y = torch.where(mask, y, 0.0)
        if not bool((weights > 0).any()):
            return
        scale = self.model.parameter_scales().detach().to(DTYPE)
        z = flat_parameters(self.model).to(DTYPE) / scale
        index = torch.from_numpy(self.noise_index)

        def predict(sub):
            full = z.index_put((index,), sub)
            return self.model.forward_with(
                unflatten(self.model, full * scale), y_ctx, u_ctx, u_now, dt
            )

        with torch.no_grad():
            yhat = predict(z[index])
        s = robust_scale(y - yhat, weights, y, mask)
        jac = jacfwd(lambda sub: predict(sub) / s)(z[index]).detach()  # (T, n_out, P')
        residuals = (y - yhat) / s
        if mask is not None:
            jac, residuals = jac * mask[..., None], residuals * mask
        self.drift_rate.observe(jac, residuals, weights, s, observed=mask)

    def _keep_finite(self, centers: np.ndarray, z_start: np.ndarray) -> None:
        """A filter gone non-finite restarts from the best finite one's state; where none is
        finite, the bank restarts from the prior at the update's starting centers."""
        ok = np.isfinite(centers).all(axis=1) & np.isfinite(self.loglik)
        ok &= np.isfinite(self.noise_sq).all(axis=1)
        for c in self.covariances:
            ok &= np.isfinite(c).all(axis=(1, 2, 3))
        if ok.all():
            return
        if not ok.any():
            centers[:] = z_start
            self.covariances = self.blocks.eye(len(self.rates), self.options["prior"])
            self.loglik[:] = 0.0
            self.noise_sq[:] = 0.0
            return
        best = int(np.argmax(np.where(ok, self.loglik, -np.inf)))
        centers[~ok] = centers[best]
        for c in self.covariances:
            c[~ok] = c[best]
        self.noise_sq[~ok] = self.noise_sq[best]
        self.loglik[~ok] = self.loglik[ok].min()

    def _follow_scaler(self, scale: np.ndarray) -> None:
        """Re-express the offsets and covariance blocks where the channel scaler moved since
        they were written: the twin re-expressed the model's center by an affine map theta ->
        M theta + b acting within each group; its blocks are found by probing the model with
        one unit vector per position in a group (all groups at once)."""
        old, model = self.normalization, self.model
        if old is None or not standardizes(model):
            return
        new = normalization(model)
        if all(np.array_equal(a, b) for a, b in zip(old, new, strict=True)):
            return
        theta = flat_parameters(model).to(DTYPE)
        width = max(ix.shape[1] for ix in self.blocks.index)
        probes = np.zeros((width + 1, theta.numel()))
        for ix in self.blocks.index:
            for j in range(ix.shape[1]):
                probes[j + 1, ix[:, j]] = 1.0
        images = reexpress_images(model, probes, old, new)
        images = (images[1:] - images[0]) / scale[None, :]  # (width, P) column j, scaled z
        for i, ix in enumerate(self.blocks.index):
            n = ix.shape[1]
            # M_g[a, b] = d theta'_{ix[g, a]} / d theta_{ix[g, b]}, in scaled coordinates
            m = np.stack([images[b][ix] * scale[ix[:, b]][:, None] for b in range(n)], axis=-1)
            if not np.isfinite(m).all():
                return
            if np.array_equal(m, np.broadcast_to(np.eye(n), m.shape)):
                continue  # groups the scaler does not reach (an mlp's hidden layers)
            self.offsets[:, ix] = (m @ self.offsets[:, ix][..., None])[..., 0]
            self.covariances[i] = m @ self.covariances[i] @ np.swapaxes(m, -1, -2)

    def summary(self) -> dict[str, float]:
        return {
            "n_updates": float(self.n_updates),
            "window": float(len(self.window)),
            "drift_rate": self.drift(),
            "noise_std": float(np.sqrt(self.noise).mean()),
        }

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "offsets": torch.from_numpy(self.offsets.copy()),
            "covariances": [torch.from_numpy(c.copy()) for c in self.covariances],
            "loglik": torch.from_numpy(self.loglik.copy()),
            "noise_sq": torch.from_numpy(self.noise_sq.copy()),
            "n_seen": self.n_seen,
            "normalization": None
            if self.normalization is None
            else [torch.from_numpy(a.copy()) for a in self.normalization],
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.offsets = state["offsets"].numpy().copy()
        self.covariances = [c.numpy().copy() for c in state["covariances"]]
        self.loglik = state["loglik"].numpy().copy()
        self.noise_sq = state["noise_sq"].numpy().copy()
        self.n_seen = int(state["n_seen"])
        norm = state.get("normalization")
        self.normalization = None if norm is None else tuple(a.numpy().copy() for a in norm)


def _time_update(blocks: np.ndarray, rates: np.ndarray, prior: float) -> None:
    """In place: (K, G, n, n) blocks plus each filter's rate on the diagonal; a coordinate whose
    variance passes the prior's has its row and column scaled back to it (D C D keeps the block
    positive semi-definite)."""
    idx = np.arange(blocks.shape[-1])
    blocks[..., idx, idx] += rates[:, None, None]
    variance = blocks[..., idx, idx]
    if (variance > prior).any():
        shrink = np.sqrt(prior / np.maximum(variance, prior))  # (K, G, n)
        blocks *= shrink[..., :, None] * shrink[..., None, :]


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan
