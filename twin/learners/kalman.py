"""Kalman learner: an extended Kalman filter over the model's parameters (Jazwinski 1970,
"Stochastic processes and filtering theory", ch. 8), the parameters taken to random-walk.

State: the center z = theta / parameter_scales (the model's parameters, in the learners' scaled
coordinates) and its covariance P. Each update linearizes the model once at the center, over the
new targets (Jacobians in forward mode, as `Objective.jacobian`), then folds the targets in one
by one, output by output: the time update adds the random walk's q I per observation, the
measurement update is the Kalman gain's. The noise levels are estimated online, jointly, by
restricted maximum likelihood over the window (`DriftRate`, as `drift: "auto"` does for the other
learners; REML is how Kalman filters' noise levels are usually tuned, e.g. Durbin & Koopman 2012,
"Time series analysis by state space methods", ch. 7): the random walk's rate q, relative to the
noise variance, and each output's noise variance r at that rate (the profiled scale). Before the
window informs them, q is 0 and r is the innovations' mean square (winsorized at 3 predicted
standard deviations): an overestimate while the parameters are uncertain, so the first targets
are not over-fitted.

Outliers: an innovation beyond `huber` predicted standard deviations is down-weighted as Huber's
loss would (its noise variance scaled by |nu| / huber; Cipra & Romera 1997, "Kalman filter with
outliers and missing observations", Test 6(2)), and values far outside a channel's range are
never learned (`twin.learners.guard`). An output a sensor did not report adds no measurement
row: only the time update runs for it (the missing-observation case of the same paper), and it
is left out of the noise estimates. Bounds are kept by projecting the center onto them. A
drift alarm adds the prior's covariance to P, so the filter re-learns what the change moved.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.func import jacfwd

from twin.learners.base import DRIFT_EVERY, Learner, UpdateReport
from twin.learners.objective import Objective, screened, target_mask
from twin.learners.options import COMMON_OPTIONS, Option, positive
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

UNUSED = ("smoothness", "boost", "boost_updates")  # common options a filter has no use for
OPTIONS: dict[str, Option] = {
    **{k: v for k, v in COMMON_OPTIONS.items() if k not in UNUSED},
    # default "auto": the rate is estimated by REML over the window (see module docstring)
    "drift": Option("float", "auto", 0.0, 1.0, words=("auto",)),
    "prior": positive(PRIOR, 1e6),  # prior variance of each scaled coordinate
}


class KalmanLearner(Learner):
    """Extended Kalman filter over the parameters with online noise estimates (module doc)."""

    method = "kalman"
    OPTIONS = OPTIONS

    def __init__(self, model: TwinModel, options: dict, seed: int):
        super().__init__(model, options, seed)
        n = self.model.parameter_scales().numel()
        self.covariance = np.eye(n) * self.options["prior"]  # (P, P) of z
        n_out = model.n_outputs
        self.innovation_sq = np.zeros(n_out)  # running mean of winsorized squared innovations
        self.n_seen = 0  # targets folded into the noise estimate

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
    def noise(self) -> np.ndarray:
        """(n_out,) measurement noise variance in the outputs' units: REML's, once the window
        has informed it, else the innovations' mean square (an overestimate while the
        parameters are uncertain, so the first targets are not over-fitted)."""
        reml = self.drift_rate.noise
        if reml is not None:
            return reml.numpy()
        return self.innovation_sq / WINSOR_BIAS

    def steps_with_lr(self) -> bool:
        return False

    def on_drift(self, start_seq: int | None = None) -> None:
        """An abrupt change of unknown size: add the prior's covariance to P, so the next targets
        re-learn what the change moved (a converged filter's P is far too small for a change of
        tens of percent); the REML estimate of the rate looks only at the new regime."""
        self.covariance = self.covariance + self.options["prior"] * np.eye(len(self.covariance))
        if start_seq is not None:
            self.regime_start = int(start_seq)

    def drift(self) -> float:
        if self.options["drift"] == "auto":
            return self.drift_rate.q or 0.0
        return self.options["drift"]

    def update(self, obs: Observations) -> UpdateReport:
        self.observe(obs)
        if self.regime_start is not None and int(self.window.seq[0]) >= self.regime_start:
            self.regime_start = None
        L, k = self.model.context, len(obs)
        tail = min(len(self.window), k + L)
        if tail <= L:
            return UpdateReport(math.nan, math.nan, 0.0, None, math.nan, k, 0)
        if self.options["drift"] == "auto" and self.n_updates % DRIFT_EVERY == 0:
            self._estimate_rate()
        w = self.window
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
        low, high = (b.to(DTYPE) / scale for b in self.model.raw_bounds())
        z0 = flat_parameters(self.model).to(DTYPE) / scale

        def predict(z):
            return self.model.forward_with(
                unflatten(self.model, z * scale), y_ctx, u_ctx, u_now, dt
            )

        with torch.no_grad():
            yhat0 = predict(z0)
        jac = jacfwd(predict)(z0).detach()  # (T, n_out, P)
        yhat0, jac, y = yhat0.numpy(), jac.numpy(), y.numpy()
        if not (np.isfinite(yhat0).all() and np.isfinite(jac).all()):  # refused: center stays
            return UpdateReport(math.nan, math.nan, 0.0, None, math.nan, k, y.shape[0])
        first = keep & measured.all(axis=1)  # rows whole enough to start the noise estimate
        if self.n_seen == 0 and first.any():  # the first targets set its starting point
            hph = np.einsum("top,pq,toq->to", jac[first], self.covariance, jac[first])
            self._match_noise((y - yhat0)[first], hph)
        z_start = z0.numpy()
        z, loss_before, loss_after = self._fold(z_start, yhat0, jac, y, keep, measured)
        z = np.clip(z, low.numpy(), high.numpy())
        if np.isfinite(z).all() and np.isfinite(self.covariance).all():
            load_flat(self.model, torch.from_numpy(z) * scale)
        else:  # a step to a non-finite center is refused
            z = z_start
            self.covariance = np.eye(z.shape[0]) * self.options["prior"]
        self.n_updates += 1
        step = float(np.linalg.norm(z - z_start))
        n_targets = int((keep & measured.any(axis=1)).sum())
        return UpdateReport(loss_before, loss_after, step, None, math.nan, k, n_targets)

    def _fold(self, z, yhat0, jac, y, keep, measured) -> tuple[np.ndarray, float, float]:
        """Fold the targets (T, n_out) in one at a time, those `measured` (T, n_out) only; return
        the center and the mean squared standardized innovation before and residual after (the
        update's losses)."""
        z0, P = z.copy(), self.covariance
        q = self.drift()
        delta = self.options["huber"]
        before, after = [], []
        eye = np.eye(z.shape[0])
        for t in np.flatnonzero(keep):
            P = P + q * eye
            e_t, hph_t = np.zeros(y.shape[1]), np.zeros(y.shape[1])
            for o in np.flatnonzero(measured[t]):  # a missing output: no measurement row
                r = self.noise[o]
                h = jac[t, o]  # (P,) raw output units per scaled coordinate
                e = y[t, o] - yhat0[t, o] - h @ (z - z0)
                Ph = P @ h
                hph = float(h @ Ph)
                s = hph + r
                nu = abs(e) / math.sqrt(s) if s > 0 else 0.0
                weight = 1.0 if nu <= delta else delta / nu  # Huber's weight
                gain = Ph / (hph + r / weight)
                z = z + gain * e
                P = P - np.outer(gain, Ph)
                P = 0.5 * (P + P.T)
                e_t[o], hph_t[o] = e, hph
                before.append(e * e / s if s > 0 else math.nan)
                after.append((y[t, o] - yhat0[t, o] - h @ (z - z0)) ** 2 / r if r > 0 else math.nan)
            self._match_noise(e_t[None], hph_t[None], measured[t][None])
        self.covariance = P
        return z, _mean(before), _mean(after)

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

    def _estimate_rate(self) -> None:
        """Fold the window into the REML estimate of the random walk's rate (`DriftRate`)."""
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
            "covariance": torch.from_numpy(self.covariance.copy()),
            "innovation_sq": torch.from_numpy(self.innovation_sq.copy()),
            "n_seen": self.n_seen,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.covariance = state["covariance"].numpy().copy()
        self.innovation_sq = state["innovation_sq"].numpy().copy()
        self.n_seen = int(state["n_seen"])


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan
