"""The objectives of many twins' updates built together (`objectives_together`): the common case
(a model that `stacks_twins`, a window of the same length as the others', every value measured
and none outlying) is prepared in a few operations over a leading twin axis; any other twin's
objective is built alone (`Objective`).

A twin's objective is the same whether it is built alone, in a group of any size or by
`Objective` itself, bit for bit: the group's operations are elementwise, selections (sorts,
partitions, running sums along one twin's own row) and copies, whose results for one twin do
not depend on the others; the one reduction whose kernel depends on the batch's shape, the
spread of the targets behind the scale's floor, is taken twin by twin through the same call as
`robust_scale`, where the floor can matter at all.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from twin.learners.guard import any_outlying
from twin.learners.objective import Objective
from twin.learners.walk import RandomWalk, walk_factors
from twin.learners.window import (
    MAD_TO_STD,
    MIN_FRESH,
    Window,
    recency_weights,
    scale_floor,
)
from twin.models.base import DTYPE, TwinModel, parameter_list, unflatten


@dataclass(frozen=True)
class Request:
    """What an update's objective is built from (the arguments of `Objective`)."""

    model: TwinModel
    window: Window
    half_life: float
    options: dict
    regime_start: int | None = None
    drift: float = 0.0

    def alone(self) -> Objective:
        return Objective(
            self.model, self.window, self.half_life, self.options, self.regime_start, self.drift
        )


def objectives_together(requests: list[Request]) -> list[Objective]:
    """`request.alone()` for each request, those that stack built in groups."""
    out: list[Objective | None] = [None] * len(requests)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(requests):
        model, n, context = r.model, len(r.window), r.model.context
        if model.stacks_twins and 1 <= context < n:
            key = (type(model), n, context, model.n_inputs, model.n_outputs)
            groups[key].append(i)
    for members in groups.values():
        built = _stacked([requests[i] for i in members])
        for i, objective in zip(members, built, strict=True):
            out[i] = objective
    objectives = [
        replace(r, drift=0.0).alone() if o is None else o
        for r, o in zip(requests, out, strict=True)
    ]
    _walks(objectives, [r.drift for r in requests])
    return objectives


def _walks(objectives: list[Objective], rates: list[float]) -> None:
    """Give each objective with a drift rate its random walk, as `Objective` would, their
    factors found together (`walk_factors`)."""
    walking = [
        (o, q)
        for o, q in zip(objectives, rates, strict=True)
        if q and o.n_targets and bool(torch.isfinite(o.jacobian()).all())
    ]
    if walking:
        chosen, qs = zip(*walking, strict=True)
        jacs, weights = [o.jacobian() for o in chosen], [o.weights for o in chosen]
        factors = walk_factors(jacs, weights, list(qs))
        for o, jac, q, chol in zip(chosen, jacs, qs, factors, strict=True):
            o.walk = RandomWalk(jac, o.weights, q, chol)


def _stacked(requests: list[Request]) -> list[Objective | None]:
    """The objectives of twins whose windows have one shape; None for those that do not stack
    (something missing or outlying: `Objective` screens them)."""
    windows = [r.window for r in requests]
    K = len(windows)
    outputs = _stack([w.outputs for w in windows])  # (K, N, O)
    inputs = _stack([w.inputs for w in windows])  # (K, N, I)
    observed = _stack([w.observed for w in windows])
    sound = (
        observed.view(K, -1).all(dim=1)
        & torch.isfinite(outputs).view(K, -1).all(dim=1)
        & torch.isfinite(inputs).view(K, -1).all(dim=1)
    )
    sound &= ~torch.from_numpy(any_outlying(outputs.numpy()))
    keep = sound.tolist()
    if not any(keep):
        return [None] * len(requests)
    if not all(keep):
        rows = torch.tensor([k for k, ok in enumerate(keep) if ok])
        outputs, inputs = outputs[rows], inputs[rows]
        requests = [r for r, ok in zip(requests, keep, strict=True) if ok]
        windows = [r.window for r in requests]
    built = iter(_build(requests, windows, outputs, inputs))
    return [next(built) if ok else None for ok in keep]


def _build(
    requests: list[Request], windows: list[Window], outputs: Tensor, inputs: Tensor
) -> list[Objective]:
    """`Objective`'s steps for complete windows without outliers, on (K, ...) tensors."""
    model = requests[0].model
    K, N, n_out = outputs.shape
    L = model.context
    T = N - L
    ts = _stack([w.ts for w in windows])  # (K, N)
    # `supervised`, on a twin axis
    idx = torch.arange(T)[:, None] + torch.arange(L)[None, :]  # (T, L)
    y_ctx, u_ctx = outputs[:, idx], inputs[:, idx]  # (K, T, L, ...)
    u_now, dt, y = inputs[:, L:], ts[:, L:] - ts[:, L - 1 : N - 1], outputs[:, L:]
    scale = _stack([r.model.parameter_scales() for r in requests]).detach().to(DTYPE)
    assert bool((scale > 0).all()), "parameter scales must be positive"
    bounds = [r.model.raw_bounds() for r in requests]
    low = _stack([b[0] for b in bounds]).to(DTYPE)
    high = _stack([b[1] for b in bounds]).to(DTYPE)
    with torch.no_grad():  # `flat_parameters` of each model
        params = [p for r in requests for p in parameter_list(r.model)]
        scalars = all(p.dim() == 0 for p in params)
        flat = torch.stack(params) if scalars else torch.cat([p.reshape(-1) for p in params])
    theta = torch.clamp(flat.view(K, -1).to(DTYPE), low, high)  # (K, P)
    z_prev = theta / scale
    weights = torch.stack(
        [
            _weights(w.seq[L:], r.half_life, r.regime_start)
            for r, w in zip(requests, windows, strict=True)
        ]
    )  # (K, T)
    with torch.no_grad():
        yhat = model.forward_with(unflatten(model, theta), y_ctx, u_ctx, u_now, dt)  # (K, T, O)
    s = _robust_scale(y - yhat, weights, y)  # (K, O)
    y_scaled = y / s[:, None]
    residuals = y_scaled - yhat / s[:, None]
    y_rows = y_scaled.transpose(1, 2).contiguous()  # (K, O, T)
    inv_s = 1 / s
    w_mean = weights / n_out
    stacked = (
        y_ctx, u_ctx, u_now, dt, y, scale, low, high, theta, z_prev, weights, s, y_scaled,
        residuals, y_rows, inv_s, w_mean, yhat,
    )  # fmt: skip
    views = zip(*(t.unbind(0) for t in stacked), strict=True)  # each twin's rows
    out = []
    for r, v in zip(requests, views, strict=True):
        o = Objective.__new__(Objective)
        o.model, o.args, o.mask, o.y, o.n_targets = r.model, v[:4], None, v[4], T
        o.delta, o.smoothness = r.options["huber"], r.options["smoothness"]
        o.scale, o.low, o.high, o.theta_prev, o.z_prev, o.weights, o.s = v[5:12]
        o.y_scaled, o.residuals, o.y_rows, o.inv_s, o.w_mean, o._center = v[12:]
        o._jacobian, o.walk, o._center_loss = None, None, None
        out.append(o)
    return out


def _stack(rows: list[Tensor]) -> Tensor:
    """torch.stack(rows); one row as a view with a twin axis (read only, as the rows are)."""
    return rows[0][None] if len(rows) == 1 else torch.stack(rows)


def _weights(seq: Tensor, half_life: float, regime_start: int | None) -> Tensor:
    """`regime_weights(seq, half_life, regime_start)` (read-only: shared between calls)."""
    n = seq.shape[0]
    fresh = n if regime_start is None else int((seq >= regime_start).sum())
    return _regime(n, min(max(fresh, MIN_FRESH), n), half_life)


@functools.lru_cache(maxsize=256)
def _regime(n: int, fresh: int, half_life: float) -> Tensor:
    w = torch.zeros(n, dtype=DTYPE)
    w[n - fresh :] = recency_weights(fresh, half_life)
    return w


def _robust_scale(residuals: Tensor, w: Tensor, y: Tensor) -> Tensor:
    """`robust_scale` of each twin's row: (K, T, O), (K, T), (K, T, O) -> (K, O)."""
    residuals = torch.nan_to_num(residuals, nan=0.0, posinf=0.0, neginf=0.0)
    center = _weighted_median(residuals, w)
    s = MAD_TO_STD * _weighted_median((residuals - center[:, None]).abs(), w)
    # The floor, 1e-6 times the targets' spread, is at most 1e-6 times half their range: where
    # s exceeds 1e-6 times the range (and 1e-12), it is s itself.
    spread = y.amax(dim=1) - y.amin(dim=1)
    near = ~((s > 1e-6 * spread) & (s > 1e-12))
    if bool(near.any()):
        s = s.clone()
        for k in near.any(dim=1).nonzero()[:, 0].tolist():
            s[k] = torch.maximum(s[k], scale_floor(y[k]))
    return s


def _weighted_median(x: Tensor, w: Tensor) -> Tensor:
    """`weighted_median` of each twin's row: x (K, T, O) with row weights w (K, T) -> (K, O)."""
    xs, order = x.sort(dim=1)
    cum = w[:, :, None].expand_as(x).gather(1, order).cumsum(dim=1)  # (K, T, O)
    k = (cum < 0.5).sum(dim=1).clamp(max=x.shape[1] - 1)  # (K, O)
    return xs.gather(1, k[:, None]).squeeze(1)
