"""Kalman learner: a bank of extended Kalman filters over the model's parameters (Jazwinski 1970,
"Stochastic processes and filtering theory", ch. 8), the parameters taken to random-walk, each
filter at its own rate (multiple-model estimation, Magill 1965, "Optimal adaptive estimation of
sampled stochastic processes", IEEE TAC 10(4)), their centers averaged by their probabilities:
on a linear model the filters interact (IMM, `twin.learners.mixing`), else their recent
likelihoods (dynamic model averaging, Raftery, Karny & Ettler 2010, Technometrics 52(1)).

State: per filter its center z = theta / parameter_scales (kept as an offset from the model's
parameters: the average or the selected center) and covariance P. Each update linearizes the model
once at the model's center over the new targets (Jacobians in forward mode, as
`Objective.jacobian`), then folds the targets in one by one, output by output, into every filter:
the time update adds the filter's random-walk variance, the measurement update is the Kalman gain's.

The bank is for models linear in their parameters (`linear_in_parameters`: arx), where one
linearization serves every filter exactly, and for models that take a population of parameter
sets in one call (`broadcasts_parameters`: the physical kinds), each filter then linearized at
its own center (central differences, one batched call), as the estimated-noise reference of
bench/filters.py does. On other models (mlp) the filters drift apart beyond one linearization's
reach, and they keep one filter at REML's rate (a drift alarm adds the prior to its P).

Noise levels, estimated online with nothing fitted to a plant: with drift "auto" the bank's rates
are LINEAR_RATES (arx) or RATES, a log grid over decades relative to what one target tells of each
parameter (its running mean squared Jacobian over the noise variance), as bench/filters.py's
estimated-noise reference. Each filter scores its one-step innovations by their log-likelihood
under its own scale on the predicted variance (the running mean of its squared standardized
innovations). On the linear bank these update the filters' probabilities of an interacting
multiple model (Blom & Bar-Shalom 1988; `twin.learners.mixing`: before each target every filter
is re-centered on the mixture it came from, the rate switching with probability SWITCH per
target); on the bank linearized per filter the log-likelihood is forgotten by LIKELIHOOD_DECAY
per target. The model's center is the filters' centers weighted by those probabilities (exp of
the log probability or forgotten log-likelihood, normalized): on the linear bank the same
average of their predictions. A soft weighting follows a slow or seasonal drift between two
rates of the grid where selecting one switches back and forth (linear tuning seeds: median /
worst 1.56 / 11.9 -> 1.36 / 5.26), and on the bank linearized per filter does not jump between
filters of nearly equal likelihood whose time constants differ thirtyfold (physical tuning
seeds: 2.02 / 139 -> 2.04 / 63.3). The noise
variance r of each output is REML's over the window (`DriftRate`, as `drift: "auto"` does for the
other learners; Durbin & Koopman 2012, "Time series analysis by state space methods", ch. 7); before
the window informs it, the innovations' mean square (winsorized at 3 predicted standard deviations):
an overestimate while the parameters are uncertain, so the first targets are not over-fitted. When
the twin's channel scaler moves, the model re-expresses its center; the bank takes the other offsets
and the covariances through the same (affine) map.

Outliers: an innovation beyond `huber` of the filter's predicted standard deviations is
down-weighted as Huber's loss would (its noise variance scaled by |nu| / huber; Cipra & Romera
1997, "Kalman filter with outliers and missing observations", Test 6(2)), and values far outside
a channel's range are never learned (`twin.learners.guard`). An output a sensor did not report
adds no measurement row: only the time update runs for it (the missing-observation case of the
same paper), and it is left out of the noise estimates. No filter's random walk adds more than
the prior's variance per target, nor its variance of a coordinate exceeds `window` times the
prior's (a parameter no target informs has an information of 0, and the relative rates gave it
a variance of 1e301 per target), and no noise variance is taken below NOISE_FLOOR of its
channel's magnitude: both made the fast filters' covariances overflow on a channel that reads
exactly 0 for a while (`_time_update`, `_noise_floor`). Bounds are kept by projecting the
centers onto them. A drift alarm makes the REML estimate look only at the new regime; the bank
follows the change itself (its fast filters gain the likelihood).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.func import jacfwd

from twin.learners.base import DRIFT_EVERY, Learner, UpdateReport
from twin.learners.kalman_each import linearize_each
from twin.learners.mixing import mix, transitions
from twin.learners.objective import Objective, screened, target_mask
from twin.learners.options import COMMON_OPTIONS, Option, positive
from twin.learners.scaler import affine_map, follow, normalization, standardizes
from twin.models.base import DTYPE, TwinModel, flat_parameters, load_flat, unflatten
from twin.observations import Observations, supervised
from twin.spec import SpecError

# The covariance is P x P and every target costs O(P^2) (16K multiply-adds at 128): a filter over
# more parameters than this belongs to the gradient learner (a default mlp has over a thousand;
# a one-layer mlp of 16 hidden units, 97, fits).
MAX_PARAMS = 128
PRIOR = 1.0  # prior variance of each scaled coordinate: they are O(1) by construction
WINSOR = 3.0  # innovations clipped at this many predicted std in the noise estimate
# E[min(x^2, c^2)] for a standard normal x and c = WINSOR: divides the winsorized mean square
WINSOR_BIAS = (
    math.erf(WINSOR / math.sqrt(2))
    - 2 * WINSOR * math.exp(-(WINSOR**2) / 2) / math.sqrt(2 * math.pi)
    + WINSOR**2 * math.erfc(WINSOR / math.sqrt(2))
)

# drift "auto": the bank's random-walk rates, per observation relative to what one target tells
# of a parameter (its mean squared Jacobian over the noise variance): a log grid over decades, as
# bench/filters.py's estimated-noise reference, so no rate is fitted to a plant
RATES = tuple(10.0**e for e in range(-12, 2))
# The linear bank's (arx): a filter of relative rate q remembers about 1/sqrt(q) targets (its
# steady-state gain). Averaged alone, the filters above 0.1 (under 3 targets) fitted each target
# exactly along the directions it informs and let their centers wander along those slow inputs
# leave unexcited (tuning seed 69: 5.26x the informed filter with rates up to 10, 2.30x to 0.1);
# interacting, an unlikely fast filter is re-centered on the likely ones each target, and the
# nearly noiseless steps that want it keep it (docs/benchmarks.md).
LINEAR_RATES = RATES
INFO_MEMORY = 200  # targets in the running mean of each parameter's information, at most
NOISE_MEMORY = 200  # targets in the running mean of each filter's scale, at most
# each filter's recent log-likelihood forgets with this factor per target (not the linear bank's:
# its filters' probabilities are those of the interacting multiple model)
LIKELIHOOD_DECAY = 0.99
# The noise variance is never taken below (NOISE_FLOOR x the channel's magnitude)^2, the
# magnitude the root mean square of the window's values (1 in the channel's units where they are
# all 0, as the channel scaler's). A channel that reads exactly 0 for a while (a light sensor at
# night) or that the model fits exactly gives an estimate of 0 or 1e-20; a measurement taken as
# that exact pins its direction of P to rounding, P loses positive definiteness and the filter
# diverges (occupancy of bench/tcpd.py: overflow within 30 targets). One part in a million is
# finer than any sensor resolves (a 16-bit converter: 1.5e-5 of its range).
NOISE_FLOOR = 1e-6

UNUSED = ("smoothness", "boost", "boost_updates")  # common options a filter has no use for
OPTIONS: dict[str, Option] = {
    **{k: v for k, v in COMMON_OPTIONS.items() if k not in UNUSED},
    # default "auto": the rate is estimated by REML over the window (see module docstring)
    "drift": Option("float", "auto", 0.0, 1.0, words=("auto",)),
    "prior": positive(PRIOR, 1e6),  # prior variance of each scaled coordinate
    # A filter folds targets in one by one at O(P^2) each, so it can learn every observation
    # before predicting the next: with 4, a chunk is predicted from parameters up to 4 targets
    # old (tuning seeds 0, 3, 9, 57: 1.36-2.26x the informed filter with 1, 2.16-3.80x with 4).
    # So does a bank linearized per filter (the physical kinds; twin.learners.kalman_each).
    "update_size": Option("int", 1, 1, 100_000),
}


class KalmanLearner(Learner):
    """Extended Kalman filters over the parameters with online noise estimates (module doc)."""

    method = "kalman"
    OPTIONS = OPTIONS

    def __init__(self, model: TwinModel, options: dict, seed: int):
        super().__init__(model, options, seed)
        # The bank linearizes every filter at the model's center: exact for a model linear in
        # its parameters (arx); on others the filters' centers drift apart out of the
        # linearization's reach (a Hammerstein plant's mlp: 20,900x the informed filter, against
        # 7.38x for one filter), so those keep one filter at REML's rate, unless each filter can
        # be linearized at its own center in one batched call (the physical kinds).
        linear = bool(getattr(model, "linear_in_parameters", False))
        self.banked = options.get("drift", "auto") == "auto" and (
            linear or model.broadcasts_parameters
        )
        # A model that takes a population of parameter sets in one call (the physical kinds) is
        # linearized at every filter's own center (`linearize_each`), as the reference does.
        self.each = self.banked and not linear
        n, k = self.model.parameter_scales().numel(), len(self.rates)
        self.offsets = np.zeros((k, n))  # (K, P) each filter's center less the model's
        self.covariances = np.tile(np.eye(n) * self.options["prior"], (k, 1, 1))  # (K, P, P) of z
        self.loglik = np.zeros(k)  # (K,) each filter's recent predictive log-likelihood
        # (K,) each filter's own scale on its innovations' predicted variance h P h' + r: the
        # running mean of its squared standardized innovations (the likelihood's own estimate)
        self.scales = np.ones(k)
        self.info = np.zeros(n)  # (P,) running mean of sum_o h_o^2 / r_o per target
        n_out = model.n_outputs
        self.innovation_sq = np.zeros(n_out)  # running mean of winsorized squared innovations
        self.n_seen = 0  # targets folded into the noise estimate and the information
        self.noise_floor = np.zeros(n_out)  # (n_out,) NOISE_FLOOR's variance, set per update
        # the model's channel scaler when the bank was last written (`_follow_scaler`)
        self.normalization: tuple[np.ndarray, ...] | None = None

    @classmethod
    def resolve_options(cls, options: dict, n_params: int | None = None) -> dict:
        o = super().resolve_options(options, n_params)
        if n_params is not None and n_params > MAX_PARAMS:
            raise SpecError(
                "learner.method",
                f"kalman takes models of at most {MAX_PARAMS} parameters; this one has "
                f"{n_params} (use gradient or pgpe)",
            )
        return o

    @property
    def rates(self) -> tuple[float, ...]:
        """The bank's random-walk rates: LINEAR_RATES (relative) for the linear bank, RATES for
        one linearized at each center, else the one rate in use (per observation in scaled
        coordinates: REML's with drift "auto")."""
        if self.banked:
            return RATES if self.each else LINEAR_RATES
        if self.options["drift"] == "auto":
            return (self.drift_rate.q or 0.0,)
        return (float(self.options["drift"]),)

    @property
    def selected(self) -> int:
        """The filter of the highest recent likelihood (its rate is the one reported)."""
        return int(np.argmax(np.where(np.isfinite(self.loglik), self.loglik, -np.inf)))

    @property
    def weights(self) -> np.ndarray:
        """(K,) each filter's posterior weight: exp of its log probability (the linear bank's, of
        the interacting multiple model) or forgotten log-likelihood, normalized over the bank."""
        finite = np.where(np.isfinite(self.loglik), self.loglik, -np.inf)
        w = np.exp(finite - finite.max())
        return w / w.sum()

    @property
    def covariance(self) -> np.ndarray:
        """(P, P) the selected filter's covariance of z."""
        return self.covariances[self.selected]

    @property
    def noise(self) -> np.ndarray:
        """(n_out,) measurement noise variance in the outputs' units: REML's, once the window
        has informed it, else the innovations' mean square (an overestimate while the
        parameters are uncertain, so the first targets are not over-fitted)."""
        estimate = self.innovation_sq / WINSOR_BIAS
        reml = self.drift_rate.noise
        if reml is not None:  # an output REML could not estimate keeps the innovations'
            estimate = np.where(np.isfinite(reml.numpy()), reml.numpy(), estimate)
        return np.maximum(estimate, self.noise_floor)

    def steps_with_lr(self) -> bool:
        return False

    def on_drift(self, start_seq: int | None = None) -> None:
        """An abrupt change: the REML estimate looks only at the new regime. The bank follows
        the change by itself (its fast filters gain the likelihood); a lone filter gets the
        prior's covariance added to P, so the next targets re-learn what the change moved."""
        if not self.banked:
            n = self.covariances.shape[-1]
            self.covariances = self.covariances + self.options["prior"] * np.eye(n)
        if start_seq is not None:
            self.regime_start = int(start_seq)

    def drift(self) -> float:
        """The selected filter's rate (relative with drift "auto")."""
        return self.rates[self.selected]

    def update(self, obs: Observations) -> UpdateReport:
        self.observe(obs)
        if self.regime_start is not None and int(self.window.seq[0]) >= self.regime_start:
            self.regime_start = None
        L, k = self.model.context, len(obs)
        tail = min(len(self.window), k + L)
        if tail <= L:
            return UpdateReport(math.nan, math.nan, 0.0, None, math.nan, k, 0)
        if self.options["drift"] == "auto" and self.n_updates % self._rate_every == 0:
            self._estimate_rate()
        w = self.window
        self.noise_floor = _noise_floor(w.outputs.numpy(), w.observed.numpy())
        complete = w.complete()
        observed = None if complete else w.observed[-tail:]
        outputs, excluded = screened(w.outputs[-tail:], L, observed)
        y_ctx, u_ctx, u_now, dt, y = supervised(w.ts[-tail:], w.inputs[-tail:], outputs, L)
        keep = np.ones(y.shape[0], dtype=bool) if excluded is None else ~excluded.numpy()
        measured = np.ones(y.shape, dtype=bool)  # (T, n_out) which targets have a measurement
        if not complete:
            mask = target_mask(observed[L:], y, (y_ctx, u_ctx, u_now, dt))
            y_ctx, u_ctx, u_now, dt = (torch.nan_to_num(a) for a in (y_ctx, u_ctx, u_now, dt))
            y, measured = torch.where(mask, y, 0.0), mask.numpy()
        scale = self.model.parameter_scales().detach().to(DTYPE)
        low, high = (b.to(DTYPE).numpy() / scale.numpy() for b in self.model.raw_bounds())
        z0 = flat_parameters(self.model).to(DTYPE) / scale

        def predict(z):
            return self.model.forward_with(
                unflatten(self.model, z * scale), y_ctx, u_ctx, u_now, dt
            )

        z_start = z0.numpy()
        if self.each:  # (K, T, n_out) and (K, T, n_out, P), at each filter's center
            linearized = np.clip(z_start + self.offsets, low, high)
            yhat0, jac = linearize_each(predict, linearized)
        else:
            with torch.no_grad():
                yhat0 = predict(z0).numpy()
            jac = jacfwd(predict)(z0).detach().numpy()  # (T, n_out, P)
        y = y.numpy()
        if not (np.isfinite(yhat0).all() and np.isfinite(jac).all()):  # refused: center stays
            return UpdateReport(math.nan, math.nan, 0.0, None, math.nan, k, y.shape[0])
        first = keep & measured.all(axis=1)  # rows whole enough to start the noise estimate
        if self.n_seen == 0 and first.any():  # the first targets set its starting point
            j0, f0 = (jac[self.selected], yhat0[self.selected]) if self.each else (jac, yhat0)
            hph = np.einsum("top,pq,toq->to", j0[first], self.covariance, j0[first])
            self._match_noise((y - f0)[first], hph)
        if self.banked:
            self._follow_scaler(scale.numpy())
        centers = np.clip(z_start + self.offsets, low, high)  # (K, P)
        origin = centers.copy() if self.each else z_start  # where yhat0 and jac were taken
        centers, loss_before, loss_after = self._fold(
            origin, centers, yhat0, jac, y, keep, measured
        )
        centers = np.clip(centers, low, high)
        self._keep_finite(centers, z_start)
        z = np.clip(self._center(centers), low, high)  # an average rounds past a bound
        self.offsets = centers - z
        load_flat(self.model, torch.from_numpy(z) * scale)
        self.normalization = normalization(self.model)
        self.n_updates += 1
        step = float(np.linalg.norm(z - z_start))
        n_targets = int((keep & measured.any(axis=1)).sum())
        return UpdateReport(loss_before, loss_after, step, None, math.nan, k, n_targets)

    def _follow_scaler(self, scale: np.ndarray) -> None:
        """Re-express the bank where the channel scaler moved since it was written: the twin
        re-expressed the model's parameters (the bank's center), an affine map theta ->
        M theta + b (exact for the kinds that standardize: `TwinModel._reexpress`); the other
        filters' offsets go through M, the covariances to M C M', the information to its
        diagonal's image."""
        old, model = self.normalization, self.model
        if old is None or not standardizes(model):
            return
        new = normalization(model)
        if all(np.array_equal(a, b) for a, b in zip(old, new, strict=True)):
            return
        m = affine_map(model, old, new, scale)
        if m is None:
            return
        self.offsets, self.covariances, self.info = follow(
            m, self.offsets, self.covariances, self.info
        )

    def _center(self, centers: np.ndarray) -> np.ndarray:
        """The model's center: the bank's centers averaged by their weights (on the linear bank
        their predictions averaged likewise, the model being linear in them); a lone filter's."""
        if not self.banked:
            return centers[self.selected]
        return self.weights @ centers

    def _keep_finite(self, centers: np.ndarray, z_start: np.ndarray) -> None:
        """A filter gone non-finite restarts from the best finite one's state, its likelihood
        the lowest of the bank's; where none is finite, the bank restarts from the prior."""
        ok = np.isfinite(centers).all(axis=1) & np.isfinite(self.covariances).all(axis=(1, 2))
        ok &= np.isfinite(self.loglik)
        if ok.all():
            return
        n = centers.shape[1]
        if not ok.any():
            centers[:] = z_start  # a step to a non-finite center is refused
            self.covariances[:] = np.eye(n) * self.options["prior"]
            self.loglik[:] = 0.0
            self.scales[:] = 1.0
            return
        best = int(np.argmax(np.where(ok, self.loglik, -np.inf)))
        centers[~ok] = centers[best]
        self.covariances[~ok] = self.covariances[best]
        self.scales[~ok] = self.scales[best]
        self.loglik[~ok] = self.loglik[ok].min()

    def _fold(self, z0, centers, yhat0, jac, y, keep, measured):
        """Fold the targets (T, n_out) in one at a time into every filter of the bank, those
        `measured` (T, n_out) only; return the centers (K, P) and the selected filter's mean
        squared standardized innovation before and residual after (the update's losses). The
        predictions yhat0 (T, n_out) and Jacobian jac (T, n_out, P) are taken at z0 (P,), or
        per filter (K, T, n_out), (K, T, n_out, P) at z0 (K, P)."""
        Z, P = centers.copy(), self.covariances
        auto = self.banked
        rates = np.asarray(self.rates)
        delta = self.options["huber"]
        before, after = [], []
        imm = auto and not self.each  # the linear bank interacts (`twin.learners.mixing`)
        switching = transitions(len(Z)) if imm else None
        for t in np.flatnonzero(keep):
            if imm:  # re-center each filter on the mixture it came from; predicted log probs
                Z, P, self.loglik = mix(Z, P, self.loglik, switching)
            noise = self.noise
            seen = measured[t]
            if auto:  # each parameter's information per target, in units of the noise
                beta = max(1.0 / (self.n_seen + 1), 1.0 / INFO_MEMORY)
                jt = jac[t] if jac.ndim == 3 else jac[self.selected, t]  # (n_out, P)
                h2 = (jt[seen] ** 2 / np.maximum(noise[seen], 1e-300)[:, None]).sum(axis=0)
                self.info = h2 if not self.info.any() else self.info + beta * (h2 - self.info)
                Q = rates[:, None] / np.maximum(self.info, 1e-300)  # (K, P)
            else:
                Q = np.full(Z.shape, rates[0])
            P = _time_update(P, Q, self.options["prior"], self.options["window"])
            best = self.selected
            e_t, hph_t = np.zeros(y.shape[1]), np.zeros(y.shape[1])
            fit, fit_sq = np.zeros(len(Z)), np.zeros(len(Z))
            for o in np.flatnonzero(seen):  # a missing output: no measurement row
                r = noise[o]
                h = jac[..., t, o, :]  # (P,) or (K, P) raw output units per scaled coordinate
                e = y[t, o] - yhat0[..., t, o] - _dot(Z - z0, h)  # (K,)
                Ph = P @ h if h.ndim == 1 else (P @ h[..., None])[..., 0]  # (K, P)
                hph = np.maximum(_dot(Ph, h), 0.0)  # (K,) rounding can leave P short of PSD
                s = hph + r
                with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                    own = self.scales if auto else 1.0  # each filter's own scale (a bank)
                    sc = np.maximum(s * own, 1e-300)
                    nu = np.abs(e) / np.sqrt(sc)
                    weight = np.where(nu <= delta, 1.0, delta / np.maximum(nu, 1e-300))
                    rho = np.where(nu <= delta, 0.5 * nu * nu, delta * nu - 0.5 * delta * delta)
                    fit -= 0.5 * np.log(sc) + rho
                    fit_sq += np.minimum(nu * nu, WINSOR**2) * self.scales / WINSOR_BIAS
                    gain = Ph / (hph + r / weight)[:, None]
                Z = Z + gain * e[:, None]
                P = P - gain[:, :, None] * Ph[:, None, :]
                P = 0.5 * (P + np.transpose(P, (0, 2, 1)))
                e_t[o], hph_t[o] = e[best], hph[best]
                before.append(e[best] ** 2 / s[best] if s[best] > 0 else math.nan)
                res = (y[t, o] - yhat0[..., t, o] - _dot(Z - z0, h))[..., best]
                after.append(res**2 / r if r > 0 else math.nan)
            # the linear bank's: its log probabilities (the chain's prediction plus the
            # target's log-likelihood); the others' forget their log-likelihood
            self.loglik = (self.loglik if imm else LIKELIHOOD_DECAY * self.loglik) + fit
            if seen.any():
                beta = max(1.0 / (self.n_seen + 1), 1.0 / NOISE_MEMORY)
                self.scales += beta * (fit_sq / seen.sum() - self.scales)
            self._match_noise(e_t[None], hph_t[None], seen[None])
        self.covariances = P
        return Z, _mean(before), _mean(after)

    def _match_noise(self, e: np.ndarray, hph: np.ndarray, measured: np.ndarray | None = None):
        """Fold innovations e (T, n_out), whose parameter part of the variance is h P h'
        (T, n_out), into their winsorized running mean square, over the window's length; only
        where `measured` (T, n_out; default all) holds."""
        if measured is None:
            measured = np.ones(e.shape, dtype=bool)
        for row, hrow, seen in zip(e, hph, measured, strict=True):
            if not seen.any():
                continue
            self.n_seen += 1
            fresh = self.innovation_sq == 0  # outputs no innovation has informed yet
            rate = np.where(fresh, 1.0, 1.0 / min(self.n_seen, self.options["window"]))
            predicted = hrow + np.where(fresh, row * row, self.noise)
            sq = np.minimum(row * row, WINSOR**2 * predicted)
            self.innovation_sq += np.where(seen, rate * (sq - self.innovation_sq), 0.0)

    @property
    def _rate_every(self) -> int:
        """Updates between windows that inform the REML estimate: DRIFT_EVERY updates of the
        common update_size (4), whatever this twin's."""
        return max(1, DRIFT_EVERY * 4 // self.options["update_size"])

    def _estimate_rate(self) -> None:
        """Fold the window into the REML estimate of the random walk's rate and the noise
        (`DriftRate`)."""
        objective = Objective(
            self.model,
            self.window,
            self.options["half_life"],
            {**self.options, "smoothness": 0.0},
            self.regime_start,
        )
        if objective.n_targets:
            self.drift_rate.observe(
                objective.jacobian(),
                objective.residuals,
                objective.weights,
                objective.s,
                observed=objective.mask,
            )

    def summary(self) -> dict[str, float]:
        out = {"n_updates": float(self.n_updates), "window": float(len(self.window))}
        out["drift_rate"] = self.drift()
        out["noise_std"] = float(np.sqrt(self.noise).mean())
        return out

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "covariance": torch.from_numpy(self.covariances.copy()),
            "offsets": torch.from_numpy(self.offsets.copy()),
            "loglik": torch.from_numpy(self.loglik.copy()),
            "info": torch.from_numpy(self.info.copy()),
            "scales": torch.from_numpy(self.scales.copy()),
            "normalization": None
            if self.normalization is None
            else [torch.from_numpy(a.copy()) for a in self.normalization],
            "innovation_sq": torch.from_numpy(self.innovation_sq.copy()),
            "n_seen": self.n_seen,
        }

    def load_state_dict(self, state: dict) -> None:
        """Also reads the state of the single filter before the bank: its covariance (P, P)
        starts every filter of the bank, at its center; and a bank of another size (before the
        rate grid stopped at 0.1): its most likely filter, whose center was the model's, starts
        every filter likewise."""
        super().load_state_dict(state)
        covariance = state["covariance"].numpy()
        k = len(self.rates)
        n = covariance.shape[-1]
        if covariance.ndim == 3 and covariance.shape[0] != k:  # a lone filter, another grid
            loglik = state["loglik"].numpy() if "loglik" in state else np.zeros(0)
            if loglik.shape != covariance.shape[:1]:
                loglik = np.zeros(len(covariance))
            best = int(np.argmax(np.where(np.isfinite(loglik), loglik, -np.inf)))
            covariance = covariance[best]
            state = {
                key: value
                for key, value in state.items()
                if key not in ("offsets", "loglik", "scales")
            }
        if covariance.ndim == 2:  # one filter's
            covariance = np.tile(covariance, (k, 1, 1))
        self.covariances = covariance.copy()
        self.offsets = _array(state, "offsets", np.zeros((k, n)))
        self.loglik = _array(state, "loglik", np.zeros(k))
        self.info = _array(state, "info", np.zeros(n))
        self.scales = _array(state, "scales", np.ones(k))
        norm = state.get("normalization")
        self.normalization = None if norm is None else tuple(a.numpy().copy() for a in norm)
        self.innovation_sq = state["innovation_sq"].numpy().copy()
        self.n_seen = int(state["n_seen"])


def _time_update(P: np.ndarray, Q: np.ndarray, prior: float, window: int) -> np.ndarray:
    """(K, P, P) covariances plus their random walk's variance Q (K, P) per target, at most
    `prior` per target (what is known of a coordinate before any data bounds what a filter may
    forget of it in one step), and no variance above `window` such steps (the most a filter can
    forget over the window the noise is estimated on). A parameter no target informs (the lag
    of a channel that reads 0) has an information of 0, so the fast filters' relative rate gave
    it a variance of 1e301 per target, and the next measurement update overflowed. The cap on
    the variance scales the rows and columns of the coordinates beyond it (D P D, which keeps P
    positive semi-definite)."""
    idx = np.arange(P.shape[-1])
    P = P.copy()
    P[:, idx, idx] += np.minimum(Q, prior)
    cap = prior * window
    variance = P[:, idx, idx]
    if (variance > cap).any():
        shrink = np.sqrt(cap / np.maximum(variance, cap))  # (K, P), 1 within the cap
        P *= shrink[:, :, None] * shrink[:, None, :]
    return P


def _noise_floor(outputs: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """(N, n_out) window values and which were measured -> (n_out,) the least noise variance:
    (NOISE_FLOOR x the root mean square of each channel's measured finite values)^2, the
    magnitude 1 where they are all 0 or none is."""
    usable = observed & np.isfinite(outputs)
    values = np.where(usable, outputs, 0.0)
    with np.errstate(over="ignore"):
        rms = np.sqrt((values * values).sum(axis=0) / np.maximum(usable.sum(axis=0), 1))
    magnitude = np.where((rms > 0) & np.isfinite(rms), rms, 1.0)
    return (NOISE_FLOOR * magnitude) ** 2


def _array(state: dict, key: str, default: np.ndarray) -> np.ndarray:
    """The state's array, or the default where it has none of that shape (a lone filter's
    state loaded into a bank)."""
    if key not in state or tuple(state[key].shape) != default.shape:
        return default
    return state[key].numpy().copy()


def _dot(a: np.ndarray, h: np.ndarray) -> np.ndarray:
    """(K, P) rows dotted with h (P,), or row by row with h (K, P)."""
    return a @ h if h.ndim == 1 else (a * h).sum(axis=-1)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan
