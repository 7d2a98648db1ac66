"""A data-driven first guess for the physical parameters a user did not give.

A thermal resistance in K/W or a gain in millivolts per pascal may lie many decades away from
the template's default of 1. Before calibration starts, each positive parameter the spec left
open is set by a coarse search in log space (1e-9 to 1e9 around the default, coordinate-wise)
for the lowest one-step error on the first observations; an open offset is searched around the
output's level the same way. The learners then refine them.
"""

from __future__ import annotations

import math

import torch
from torch.func import functional_call, vmap

from twin.models.base import DTYPE, flat_parameters, load_flat, unflatten
from twin.observations import Observations, supervised

GRID = torch.linspace(-9 * math.log(10), 9 * math.log(10), 73, dtype=DTYPE)  # 4 points a decade
SWEEPS = 3
ZOOMS = (1.0, 0.05, 0.005)  # the grid's half-width: 9 decades, then 0.45, then 0.045


def open_parameters(model, given: set[str]) -> list:
    """The physical parameters of `model` that the spec left for the data to set."""
    return [p for p in getattr(model, "PARAMS", ()) if p.name not in given]


@torch.no_grad()
def initial_guess(model, obs: Observations, given: set[str]) -> list[str]:
    """Set the open positive parameters of a physical `model` from `obs`; return their names."""
    open_params = open_parameters(model, given)
    if not open_params or len(obs) <= model.context + 2:
        return []
    T = lambda a: torch.as_tensor(a, dtype=DTYPE)  # noqa: E731
    y_ctx, u_ctx, u_now, dt, y = supervised(T(obs.ts), T(obs.inputs), T(obs.outputs), model.context)
    scale = y.std(dim=0).clamp_min(1e-12 * y.abs().max().clamp_min(1e-300))  # (n_out,)
    names = [n for n, _ in model.named_parameters()]
    lo, hi = model.raw_bounds()

    def loss(flat):
        yhat = functional_call(model, unflatten(model, flat), (y_ctx, u_ctx, u_now, dt))
        r = ((y - yhat) / scale).square().mean()
        return torch.where(torch.isfinite(r), r, torch.full_like(r, math.inf))

    theta = flat_parameters(model)
    for zoom in ZOOMS:  # coarse to fine: a decade in 4 steps, then ever closer around the best
        for _ in range(SWEEPS):
            for p in open_params:
                i = names.index(p.raw_name)
                if p.positive:
                    center = math.log(p.default) if zoom == 1.0 else float(theta[i])
                    grid = center + zoom * GRID
                else:
                    grid = _offsets(y[:, p.scale_output], float(theta[i]), zoom)
                candidates = theta.expand(grid.numel(), -1).clone()  # (G, P)
                candidates[:, i] = grid.clamp(lo[i], hi[i])
                theta = candidates[int(torch.argmin(vmap(loss)(candidates)))]
    load_flat(model, theta)
    return [p.name for p in open_params]


def _offsets(y, current: float, zoom: float):
    """Candidate offsets for an output: around zero and its level on the coarse pass, then
    around the current best, on the output's own scale."""
    level, spread = float(y.mean()), float(y.std()) + 1e-12 * abs(float(y.mean()))
    steps = torch.linspace(-5, 5, 41, dtype=DTYPE)
    if zoom == 1.0:
        return torch.cat([level * torch.linspace(-2, 2, 41, dtype=DTYPE), level + spread * steps])
    return current + 10 * zoom * spread * steps
