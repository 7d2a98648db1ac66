"""The loss of one learner update (`Objective`): the window's targets, their weights and robust
scale, the screen of outlying values and missing ones, and the random walk's whitening."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.func import jacfwd, vmap
from torch.nn.functional import huber_loss

from twin.learners.guard import outlying
from twin.learners.walk import RandomWalk
from twin.learners.window import Window, regime_weights, robust_scale
from twin.models.base import DTYPE, TwinModel, flat_parameters, unflatten
from twin.observations import supervised


def screened(
    outputs: Tensor, context: int, observed: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """Window outputs (N, n_out) with outlying values (`twin.learners.guard`) replaced by their
    channel's median, and (N - context,) which targets see one, as target or in their context
    (None when none does). Only measured values (`observed`, default all) can be outliers: a
    missing one is left as it is, for `target_mask` to leave out."""
    if observed is None:
        bad = torch.from_numpy(outlying(outputs.numpy()))
    else:
        measured = torch.where(observed, outputs, torch.nan)
        bad = torch.from_numpy(outlying(measured.numpy())) & observed
    if not bool(bad.any()):
        return outputs, None
    fill = torch.where(bad, torch.nan, outputs).nanmedian(dim=0).values.nan_to_num(0.0)
    rows = bad.any(dim=1).to(torch.int64)  # (N,)
    seen = torch.cat([torch.zeros(1, dtype=torch.int64), rows.cumsum(dim=0)])  # (N + 1,)
    T = max(outputs.shape[0] - context, 0)
    hit = seen[context + 1 : context + 1 + T] - seen[:T] > 0  # rows t .. t + context
    return torch.where(bad, fill, outputs), hit


def target_mask(observed: Tensor, y: Tensor, args: tuple[Tensor, ...]) -> Tensor:
    """(T, n_out) which targets y (T, n_out) a fit may use: those measured (`observed`, the
    targets' rows of the window's) whose value, context and input are known."""
    y_ctx, u_ctx, u_now, _ = args
    known = (
        torch.isfinite(y_ctx).all(dim=(1, 2))
        & torch.isfinite(u_ctx).all(dim=(1, 2))
        & torch.isfinite(u_now).all(dim=1)
    )  # (T,)
    return observed & torch.isfinite(y) & known[:, None]


class Objective:
    """The loss of one update: the window, weights and residual scale are fixed for its duration.

    Huber's loss (Huber 1964) of standardized residuals is quadratic within `huber` and linear
    beyond, so one spike pulls the fit far less than under least squares:
    loss(theta) = sum_t w_t mean_o huber((y - yhat(theta)) / s_o)
                  + smoothness * mean(((theta - theta_prev) / scale)^2).

    With `drift` q > 0 the parameters are taken to random-walk by N(0, q I) per observation in
    scaled coordinates, and the residuals are whitened by their covariance under that walk before
    the Huber loss (`twin.learners.walk.RandomWalk`); the recency weights then add to it.

    Targets that see an outlier (`screened`), as target or in their context, get zero weight.
    Outputs a sensor did not report (and targets whose context is unknown) are masked: their
    residuals and Jacobian rows are zero, so they add nothing to the loss, its curvature or the
    walk's covariance (a zero Jacobian row makes a target independent of the others under the
    walk, which is the exact marginal of the measured ones). `mask` is None when nothing is
    missing, and the loss is then computed exactly as without masking.
    """

    def __init__(
        self,
        model: TwinModel,
        window: Window,
        half_life: float,
        options: dict,
        regime_start: int | None = None,
        drift: float = 0.0,
    ):
        self.model = model
        complete = window.complete()
        observed = None if complete else window.observed
        outputs, excluded = screened(window.outputs, model.context, observed)
        y_ctx, u_ctx, u_now, dt, y = supervised(window.ts, window.inputs, outputs, model.context)
        self.args = (y_ctx, u_ctx, u_now, dt)
        self.mask = None  # (T, n_out) which targets were measured, None when all were
        if not complete:
            self.mask = target_mask(window.observed[model.context :], y, self.args)
            # unknown values only meet masked targets: any finite stand-in will do
            self.args = tuple(torch.nan_to_num(a) for a in self.args)
            y = torch.where(self.mask, y, 0.0)
        self.y = y  # (T, n_out)
        self.n_targets = y.shape[0]
        self.delta = options["huber"]
        self.smoothness = options["smoothness"]
        self.scale = model.parameter_scales().detach().to(DTYPE)  # (P,)
        assert bool((self.scale > 0).all()), "parameter scales must be positive"
        self.low, self.high = (b.to(DTYPE) for b in model.raw_bounds())
        self.theta_prev = self.clamp(flat_parameters(model).to(DTYPE))
        self.z_prev = self.theta_prev / self.scale
        self.weights = regime_weights(window.seq[model.context :], half_life, regime_start)
        if excluded is not None:  # targets that see an outlier are left out
            self.weights = self.weights * ~excluded
            total = self.weights.sum()
            self.weights = self.weights / total if total > 0 else self.weights
            self.n_targets = self.n_targets if total > 0 else 0
        if self.mask is not None and not bool(self.mask[self.weights > 0].any()):
            self.n_targets = 0  # nothing measured to learn from
        self.s = torch.ones(y.shape[1], dtype=DTYPE)
        yhat = torch.zeros_like(y)
        if self.n_targets:
            with torch.no_grad():
                yhat = self.predict(self.theta_prev)
            self.s = robust_scale(y - yhat, self.weights, y, self.mask)
        self.y_scaled = y / self.s  # (T, n_out)
        self.residuals = self._masked(self.y_scaled - yhat / self.s)  # (T, n_out) at the center
        # Output-major, as physical kinds lay out their predictions (see _from_predictions):
        self.y_rows = self.y_scaled.T.contiguous()  # (n_out, T)
        self.inv_s = 1 / self.s  # (n_out,)
        self.w_mean = self.weights / y.shape[1]  # (T,) recency weight / n_out per residual
        self._jacobian: Tensor | None = None
        self.walk = None
        if self.n_targets and drift and bool(torch.isfinite(self.jacobian()).all()):
            self.walk = RandomWalk(self.jacobian(), self.weights, drift)
        self._center = yhat  # the center's predictions, for its loss when first asked
        self._center_loss: float | None = None if self.n_targets else math.nan

    @property
    def center_loss(self) -> float:
        """The loss at the starting center (NaN without targets), computed when first read
        unless a learner that scored it already set it."""
        if self._center_loss is None:
            with torch.no_grad():
                self._center_loss = float(self._from_predictions(self._center, self.theta_prev))
        return self._center_loss

    @center_loss.setter
    def center_loss(self, value: float) -> None:
        self._center_loss = value

    def jacobian(self) -> Tensor:
        """(T, n_out, P) derivative of the standardized predictions in scaled coordinates z =
        theta / scale, at the update's starting center (computed once, by forward mode)."""
        if self._jacobian is None:
            z = self.z_prev
            jac = jacfwd(lambda z: self.predict(z * self.scale) / self.s)(z).detach()
            self._jacobian = jac if self.mask is None else self._masked(jac, self.mask[..., None])
        return self._jacobian

    def _masked(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x with zeros at the masked targets (x (..., T, n_out) by default)."""
        if self.mask is None:
            return x
        return torch.where(self.mask if mask is None else mask, x, 0.0)

    def curvature(self) -> Tensor:
        """(P, P) Gauss-Newton matrix of the loss in z at the starting center: its Hessian where
        the Huber loss is quadratic and the model linear."""
        if self.walk is not None:
            h = self.walk.curvature(self.jacobian())
        else:
            j = self.jacobian()
            h = torch.einsum("t,top,toq->pq", self.weights, j, j) / j.shape[1]
        if self.smoothness:
            h = h + (2.0 * self.smoothness / h.shape[0]) * torch.eye(h.shape[0], dtype=DTYPE)
        return h

    def clamp(self, theta: Tensor) -> Tensor:
        """Project (..., P) raw parameters onto the model's bounds (the guard rails)."""
        return torch.clamp(theta, self.low, self.high)

    def predict(self, theta: Tensor) -> Tensor:
        """(P,) -> (T, n_out) one-step predictions over the window, differentiable in theta."""
        return self.model.forward_with(unflatten(self.model, theta), *self.args)

    def loss(self, theta: Tensor) -> Tensor:
        """(P,) -> () the loss, differentiable in theta."""
        return self._from_predictions(self.predict(theta), theta)

    @torch.no_grad()
    def losses(self, thetas: Tensor) -> Tensor:
        """(S, P) -> (S,) the loss of every row, in one batched model call.

        Any model is batched by `functional_call` (`forward_with`) under `vmap`. A model that
        `broadcasts_parameters` (the physical kinds: elementwise formulas in a few scalars)
        takes the (S, ...) parameters directly, which spares vmap's per-operation overhead.
        """
        params = unflatten(self.model, thetas)
        if self.model.broadcasts_parameters:
            yhat = self.model.forward_with(params, *self.args)  # (S, T, n_out)
        else:
            yhat = vmap(lambda one: self.model.forward_with(one, *self.args))(params)
        return self._from_predictions(yhat, thetas)

    def _from_predictions(self, yhat: Tensor, theta: Tensor) -> Tensor:
        """yhat (..., T, n_out), theta (..., P) -> (...)."""
        if self.walk is not None:
            fit = self.walk.loss(self._masked(self.y_scaled - yhat / self.s), self.delta)
        else:
            # Output by output, (n_out, ..., T): rows contiguous in time where yhat's memory is
            # output-major (physical kinds), so every operation runs along whole rows.
            rows = yhat.movedim(-1, 0)
            lead = (-1,) + (1,) * (rows.dim() - 2)
            target = self.y_rows.view(lead + (rows.shape[-1],)).expand_as(rows)
            scaled = rows * self.inv_s.view(lead + (1,))
            h = huber_loss(scaled, target, reduction="none", delta=self.delta)
            if self.mask is not None:  # (T, n_out) -> (n_out, 1.., T) like h
                h = torch.where(self.mask.T.reshape(lead + (rows.shape[-1],)), h, 0.0)
            fit = (h @ self.w_mean).sum(dim=0)  # (n_out, ...) -> (...)
        if self.smoothness:
            jump = theta / self.scale - self.z_prev
            fit = fit + self.smoothness * (jump * jump).mean(dim=-1)
        return fit
