"""A data-driven first guess for the physical parameters a user did not give.

A thermal resistance in K/W or a gain in millivolts per pascal may lie many decades away from
the template's default of 1, so the parameters the spec left open are fitted to the first
observations by their one-step error (mean squared residual, each output in units of its
standard deviation over them).

**Profile fits** (the three physical kinds). The one-step prediction of each kind's exact
discretization is linear in all but its time scales: for a time constant (`first_order`,
`thermal_rc`) or a natural frequency and damping ratio (`mass_spring_damper`) on a log grid of
PER_DECADE points a decade over every scale the sampling can show (time constants from a tenth
of the median interval to 1e7 intervals; frequencies up to Nyquist's; damping ratios 0.03-30),
least squares sets the rest exactly (gain and offset; resistance; inverse mass) with their
standard errors. A candidate whose positive coefficient comes out negative is dropped. The
chosen grid point is refined within its own cell by ever finer profile grids (`_zoomed`).

**What the observations pin down.** The candidates whose error lies within a likelihood-ratio
test of the best (N ln(loss / best loss) <= CHI2_95, the 95% point of chi-square with one degree
of freedom, N residuals) are *plausible*; with each one's coefficients +-2 standard errors they
give every parameter an interval. The data pin a parameter once its interval lies within a
factor of FACTOR either side of the best fit (an offset: ln FACTOR output standard deviations
either side). When they pin every open parameter, the guess is the best fit. When they do not
(an input that has barely moved shows no gain; a slow, noisy plant no time constant), nothing
in them prefers one plausible candidate to another, and the guess is the plausible one whose
time scales lie nearest the middle of those the observations can show (a time constant near
sqrt(median interval x span), a damping ratio near 1): from there a learner reaches either end
in the fewest steps. `initial_guess(..., last=False)` instead makes no guess then (None).

The coordinate search alone, coordinate-wise in log space over 18 decades, could stop in the
basin of two parameters that trade against each other (a gain of 2.5e-9 with a time constant
of 71 where the truth was 0.96 and 9) or at the grid's edge (a time constant of 1e9 s), from
which no learner climbed out. **Other kinds** (a physical model without a profile fit) still get
it: from 1e-9 to 1e9 around the default for positive parameters (offsets around the output's
level), coarse to fine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call, vmap

from twin.models.base import DTYPE, flat_parameters, load_flat, unflatten
from twin.observations import Observations, supervised

GRID = torch.linspace(-9 * math.log(10), 9 * math.log(10), 73, dtype=DTYPE)  # 4 points a decade
SWEEPS = 3
ZOOMS = (1.0, 0.05, 0.005)  # the grid's half-width: 9 decades, then 0.45, then 0.045
PER_DECADE = 8  # profile grids: points a decade of a time constant, frequency or damping ratio
TAU_RANGE = (-1.0, 7.0)  # log10 of a time constant over the median sampling interval
OMEGA_RANGE = (-3.0, math.log10(math.pi))  # log10 natural frequency x median interval
ZETA_RANGE = (-1.5, 1.5)  # log10 damping ratio
ZOOM_PASSES, ZOOM_POINTS = 3, 8  # refining the chosen grid point: 8 points a side, 3 times
CHI2_95 = 3.841  # 95% point of chi-square, one degree of freedom
FACTOR = 2.0  # a parameter is pinned once its interval lies within this factor of the guess


def open_parameters(model, given: set[str]) -> list:
    """The physical parameters of `model` that the spec left for the data to set."""
    return [p for p in getattr(model, "PARAMS", ()) if p.name not in given]


@torch.no_grad()
def initial_guess(model, obs: Observations, given: set[str], last: bool = True) -> list[str] | None:
    """Set the open parameters of a physical `model` from `obs` and return their names. With
    `last=False`, return None and leave the model as it is where the observations do not pin
    every open parameter down (see the module's docstring); a kind without a profile fit is
    always guessed."""
    open_params = open_parameters(model, given)
    if not open_params:
        return []
    if len(obs) <= model.context + 2:
        return [] if last else None
    fit = _Fit(model, obs, given)
    profile = PROFILES.get(model.kind)
    if profile is None:
        best = fit.coordinate_search(flat_parameters(model), ZOOMS[:1])
    else:
        candidates = profile(fit)
        if candidates.size == 0:  # no candidate with positive coefficients: nothing to go on
            if not last:
                return None
            best = fit.coordinate_search(flat_parameters(model), ZOOMS[:1])
        else:
            pool = fit.pool(candidates)
            losses = fit.losses(pool)
            best = int(torch.argmin(losses))
            plausible = fit.residual_count * torch.log(losses / losses[best]) <= CHI2_95
            plausible[best] = True  # also where the fit is exact (0 / 0)
            if not candidates.pinned(fit, plausible, best):
                if not last:
                    return None
                best = int(torch.argmin(torch.where(plausible, candidates.off_center, math.inf)))
            load_flat(model, _zoomed(fit, profile, candidates.scales[best]))
            return [p.name for p in open_params]
    load_flat(model, fit.coordinate_search(best, ZOOMS[1:]))
    return [p.name for p in open_params]


@dataclass
class _Candidates:
    """Profile candidates: per candidate (S,), each parameter's value, the ends of its interval
    (its least-squares coefficient +-2 standard errors; the grid value itself for a time
    scale), in physical units, and how far its time scales lie from the middle of those the
    observations can show (log units)."""

    values: dict[str, Tensor]
    low: dict[str, Tensor]
    high: dict[str, Tensor]
    off_center: Tensor
    scales: Tensor  # (S, k) log time scales: the grid point each candidate was fitted at

    @property
    def size(self) -> int:
        return int(self.off_center.shape[0])

    def kept(self, keep: Tensor) -> _Candidates:
        def pick(d: dict[str, Tensor]) -> dict[str, Tensor]:
            return {k: v[keep] for k, v in d.items()}

        off, scales = self.off_center[keep], self.scales[keep]
        return _Candidates(pick(self.values), pick(self.low), pick(self.high), off, scales)

    def pinned(self, fit: _Fit, plausible: Tensor, best: int) -> bool:
        """Whether every open parameter's interval over the `plausible` candidates (S,) lies
        within FACTOR of candidate `best`'s value (an offset: ln FACTOR output std either side)."""
        for p in fit.model.PARAMS:
            if p.name in fit.given:
                continue
            low = float(self.low[p.name][plausible].min())
            high = float(self.high[p.name][plausible].max())
            value = float(self.values[p.name][best])
            if p.positive:
                if not (low > 0 and value / low <= FACTOR and high / value <= FACTOR):
                    return False
            else:
                reach = math.log(FACTOR) * float(fit.scale[p.scale_output])
                if not (value - low <= reach and high - value <= reach):
                    return False
        return True


class _Fit:
    """The first observations as one-step regression data, and the loss of candidates on them:
    the mean squared residual in units of each output's standard deviation over them."""

    def __init__(self, model, obs: Observations, given: set[str]):
        T = lambda a: torch.as_tensor(a, dtype=DTYPE)  # noqa: E731
        self.model, self.given = model, given
        *self.args, self.y = supervised(T(obs.ts), T(obs.inputs), T(obs.outputs), model.context)
        y = self.y  # (B, n_out)
        self.scale = y.std(dim=0).clamp_min(1e-12 * y.abs().max().clamp_min(1e-300))
        self.y_prev, self.u_prev, self.dt = self.args[0][:, -1], self.args[1][:, -1], self.args[3]
        self.dt_typical = float(self.dt.median().clamp_min(1e-300))
        self.span = float(self.dt.sum().clamp_min(self.dt_typical))
        self.residual_count = y.numel()
        self.names = [n for n, _ in model.named_parameters()]
        self.lo, self.hi = model.raw_bounds()
        self.start = flat_parameters(model)
        self.params = {p.name: p for p in model.PARAMS}

    def index(self, name: str) -> int:
        return self.names.index(self.params[name].raw_name)

    def value(self, name: str) -> float:
        """A parameter's value as the model holds it (the spec's, for a given one)."""
        raw = float(self.start[self.index(name)])
        return math.exp(raw) if self.params[name].positive else raw

    def pool(self, candidates: _Candidates) -> Tensor:
        """(S, P) raw parameter vectors of the candidates, given parameters as given, within
        the model's bounds."""
        pool = self.start.expand(candidates.size, -1).clone()
        for name, v in candidates.values.items():
            if name not in self.given:
                pool[:, self.index(name)] = v.log() if self.params[name].positive else v
        return pool.clamp(self.lo, self.hi)

    def losses(self, pool: Tensor) -> Tensor:
        """(S,) loss of each candidate (S, P); inf where a prediction is not finite."""
        if self.model.broadcasts_parameters:
            yhat = self.model.forward_with(unflatten(self.model, pool), *self.args)
            r = ((self.y - yhat) / self.scale).square().mean(dim=(-2, -1))
        else:
            r = vmap(self._loss)(pool)
        return torch.where(torch.isfinite(r), r, torch.full_like(r, math.inf))

    def _loss(self, flat: Tensor) -> Tensor:
        yhat = functional_call(self.model, unflatten(self.model, flat), self.args)
        return ((self.y - yhat) / self.scale).square().mean()

    def coordinate_search(self, theta: Tensor, zooms) -> Tensor:
        """Coordinate-wise grid search over the open parameters from `theta`, coarse to fine:
        a decade in 4 steps over 18 decades on the coarse pass, then ever closer."""
        theta = theta.clone()
        for zoom in zooms:
            for _ in range(SWEEPS):
                for p in self.model.PARAMS:
                    if p.name in self.given:
                        continue
                    i = self.index(p.name)
                    if p.positive:
                        center = math.log(p.default) if zoom == 1.0 else float(theta[i])
                        grid = center + zoom * GRID
                    else:
                        grid = _offsets(self.y[:, p.scale_output], float(theta[i]), zoom)
                    candidates = theta.expand(grid.numel(), -1).clone()  # (G, P)
                    candidates[:, i] = grid.clamp(self.lo[i], self.hi[i])
                    theta = candidates[int(torch.argmin(self.losses(candidates)))]
        return theta

    def grid(self, log10_range: tuple[float, float], unit: float) -> Tensor:
        """A log grid of PER_DECADE points a decade over unit * 10**range."""
        lo, hi = log10_range
        return unit * torch.logspace(lo, hi, int(round((hi - lo) * PER_DECADE)) + 1, dtype=DTYPE)

    def off_center(self, tau: Tensor) -> Tensor:
        """|log| distance of time scales `tau` from the middle of those the observations show,
        sqrt(median interval x span)."""
        return (tau.log() - 0.5 * math.log(self.dt_typical * self.span)).abs()


def _zoomed(fit: _Fit, profile, scales: Tensor) -> Tensor:
    """The best raw parameters (P,) of profile grids ever finer around log time scales (k,):
    ZOOM_POINTS a side over the grid point's own cell (half a grid step either side), then
    over one of those steps, and so on: a refinement of the point chosen, never a walk from it
    to a neighbour the choice passed over."""
    step, best = 0.5 * math.log(10) / PER_DECADE, None
    for _ in range(ZOOM_PASSES):
        offsets = torch.linspace(-step, step, 2 * ZOOM_POINTS + 1, dtype=DTYPE)
        axes = torch.meshgrid(*[scales[j] + offsets for j in range(scales.shape[0])], indexing="ij")
        candidates = profile(fit, torch.stack([a.reshape(-1) for a in axes], dim=-1))
        if candidates.size == 0:
            break
        pool = fit.pool(candidates)
        i = int(torch.argmin(fit.losses(pool)))
        best, scales, step = pool[i], candidates.scales[i], step / ZOOM_POINTS
    return best if best is not None else fit.start


def _least_squares(columns: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Per candidate, the coefficients (S, k) minimizing |columns @ x - target|^2 over the
    rows, and their standard errors (S, k): columns (S, B, k), target (S, B)."""
    # numpy's LAPACK and elementwise sums: torch's lstsq and pinv (MKL) gave results that
    # differed in the last bits from one call to the next on the same numbers, and a twin's
    # first guess must be the same every time (a seed makes a run repeatable)
    a, b = columns.numpy(), target.numpy()
    x = torch.from_numpy((np.linalg.pinv(a) * b[:, None, :]).sum(-1))  # (S, k) least squares
    rows, k = columns.shape[-2:]
    sse = (columns * x[:, None, :]).sum(-1).sub(target).square().sum(-1)  # (S,)
    gram = (a[:, :, :, None] * a[:, :, None, :]).sum(1)  # (S, k, k)
    cov = torch.from_numpy(np.linalg.pinv(gram, hermitian=True))
    se = (cov.diagonal(dim1=-2, dim2=-1) * (sse / max(rows - k, 1))[:, None]).clamp_min(0).sqrt()
    return x, se


def _interval(x: Tensor, se: Tensor) -> tuple[Tensor, Tensor]:
    """The ends of x +- 2 standard errors."""
    return x - 2 * se, x + 2 * se


def _lag_response(fit: _Fit, taus: Tensor) -> tuple[Tensor, Tensor]:
    """For a first-order lag y' = (target - y) / tau with the target held over each interval:
    the fraction of the way to the target covered, g = 1 - exp(-dt / tau) (S, B), and
    y - (1 - g) y_prev, which is g times the target (S, B)."""
    g = -torch.expm1(-fit.dt / taus[:, None])
    y, y_prev = fit.y[:, 0], fit.y_prev[:, 0]
    return g, y - (1 - g) * y_prev


def _first_order(fit: _Fit, grid: Tensor | None = None) -> _Candidates:
    """tau * y' = K u + b - y: for each tau (log `grid` (G, 1), else the full grid), K and b
    by least squares."""
    taus = fit.grid(TAU_RANGE, fit.dt_typical) if grid is None else grid[:, 0].exp()
    if "tau" in fit.given:
        taus = torch.tensor([fit.value("tau")], dtype=DTYPE)
    g, z = _lag_response(fit, taus)
    values = {"tau": taus}
    low, high = dict(values), dict(values)
    columns, names = [], []
    for name, column in (("K", g * fit.u_prev[:, 0]), ("b", g)):
        if name in fit.given:  # a given value's part of the target is known
            z = z - fit.value(name) * column
            values[name] = low[name] = high[name] = torch.full_like(taus, fit.value(name))
        else:
            columns.append(column)
            names.append(name)
    if columns:
        x, se = _least_squares(torch.stack(columns, dim=-1), z)
        for j, name in enumerate(names):
            values[name], low[name], high[name] = x[:, j], *_interval(x[:, j], se[:, j])
    candidates = _Candidates(values, low, high, fit.off_center(taus), taus.log()[:, None])
    return candidates.kept((values["K"] > 0) & torch.isfinite(values["b"]))


def _thermal_rc(fit: _Fit, grid: Tensor | None = None) -> _Candidates:
    """C T' = (T_amb - T) / R + Q: for each time constant R C (log `grid` (G, 1), else the
    full grid), R by least squares."""
    taus = fit.grid(TAU_RANGE, fit.dt_typical) if grid is None else grid[:, 0].exp()
    g, z = _lag_response(fit, taus)
    z = z - g * fit.u_prev[:, 1]  # the target is T_amb + R Q
    if "R" in fit.given:
        r = low = high = torch.full_like(taus, fit.value("R"))
    elif "C" in fit.given:
        r = low = high = taus / fit.value("C")
    else:
        x, se = _least_squares((g * fit.u_prev[:, 0])[..., None], z)
        r, (low, high) = x[:, 0], _interval(x[:, 0], se[:, 0])
    c_low = torch.where(low > 0, taus / low, math.inf)
    candidates = _Candidates(
        {"R": r, "C": taus / r}, {"R": low, "C": taus / high}, {"R": high, "C": c_low},
        fit.off_center(taus), taus.log()[:, None],
    )  # fmt: skip
    return candidates.kept(r > 0)


def _mass_spring_damper(fit: _Fit, grid: Tensor | None = None) -> _Candidates:
    """m x'' = F - c x' - k x: for each natural frequency w and damping ratio zeta (log `grid`
    (G, 2), else the full grid) the response to the force is proportional to 1/m, set by least
    squares over both outputs."""
    if grid is None:
        omega = fit.grid(OMEGA_RANGE, 1 / fit.dt_typical)
        zeta = fit.grid(ZETA_RANGE, 1.0)
        w, z = (a.reshape(-1) for a in torch.meshgrid(omega, zeta, indexing="ij"))
    else:
        w, z = grid.exp().unbind(-1)
    unit = {"m": torch.ones_like(w), "c": 2 * z * w, "k": w * w}  # m = 1
    pool = fit.start.expand(w.shape[0], -1).clone()
    for name, v in unit.items():
        pool[:, fit.index(name)] = v.log()
    params = unflatten(fit.model, pool)
    y_ctx, u_ctx, u_now, dt = fit.args
    free = fit.model.forward_with(params, y_ctx, torch.zeros_like(u_ctx), u_now, dt)
    forced = fit.model.forward_with(params, *fit.args) - free  # (S, B, 2) at m = 1
    columns = (forced / fit.scale).flatten(-2)[..., None]  # in the loss's units
    if "m" in fit.given:
        mass = low = high = torch.full_like(w, fit.value("m"))
    else:
        x, se = _least_squares(columns, ((fit.y - free) / fit.scale).flatten(-2))
        inverse, spread = x[:, 0], 2 * se[:, 0]
        mass = 1 / inverse
        low = 1 / (inverse + spread)
        high = torch.where(inverse > spread, 1 / (inverse - spread), math.inf)
    off = (w.log() + 0.5 * math.log(fit.dt_typical * fit.span)).abs() + z.log().abs()

    def scaled(m: Tensor) -> dict[str, Tensor]:
        return {"m": m, "c": 2 * z * w * m, "k": w * w * m}

    scales = torch.stack([w.log(), z.log()], dim=-1)
    candidates = _Candidates(scaled(mass), scaled(low), scaled(high), off, scales)
    return candidates.kept(torch.isfinite(mass) & (mass > 0))


PROFILES = {
    "first_order": _first_order,
    "thermal_rc": _thermal_rc,
    "mass_spring_damper": _mass_spring_damper,
}


def _offsets(y, current: float, zoom: float):
    """Candidate offsets for an output: around zero and its level on the coarse pass, then
    around the current best, on the output's own scale."""
    level, spread = float(y.mean()), float(y.std()) + 1e-12 * abs(float(y.mean()))
    steps = torch.linspace(-5, 5, 41, dtype=DTYPE)
    if zoom == 1.0:
        return torch.cat([level * torch.linspace(-2, 2, 41, dtype=DTYPE), level + spread * steps])
    return current + 10 * zoom * spread * steps
