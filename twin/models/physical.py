"""Physical templates: named parameters in physical units, discretized exactly by zero-order hold.

A physical model is fully observed: its state is its output vector, so one past observation is
its whole context, and the prediction `y_t = Phi(dt) y_{t-1} + Gamma(dt) u_{t-1}` is exact for any
`dt` (irregular sampling is fine). The input of the previous observation is held over the interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch._C._functorch import is_functorch_wrapped_tensor

from twin.models import register
from twin.models.base import DTYPE, KindInfo, ParamInfo, TwinModel, summary
from twin.models.oscillator import oscillator_step
from twin.spec import SpecError, TwinSpec

# A positive parameter's log is kept within +-LOG_RANGE (1e-100 to 1e100 in its units) when its
# bounds leave it open: no physical constant lies beyond, and past about 709 exp() overflows, so
# a learner walking a parameter the data do not pin down (a time constant over a flat window)
# would otherwise reach an infinite value.
LOG_RANGE = 100 * math.log(10)


@dataclass(frozen=True)
class PhysicalParam:
    """One named parameter; positive ones are stored as `log_<name>` so they stay positive.

    A signed parameter is an offset in the units of output `scale_output`, whose standard
    deviation is its parameter scale.
    """

    name: str
    default: float
    positive: bool = True
    scale_output: int = 0
    unit: str = ""
    description: str = ""

    @property
    def raw_name(self) -> str:
        return f"log_{self.name}" if self.positive else self.name


class PhysicalModel(TwinModel):
    """Shared machinery of the physical kinds: spec checks, parametrization, bounds, scales.

    Subclasses set `INPUTS`, `OUTPUTS` (channel roles, matched by position in the spec),
    `PARAMS`, and implement `step`. A step is a handful of elementwise formulas in a few
    scalars, so it broadcasts a population of parameter sets against the rows by itself, at a
    fraction of the cost of vmap's per-operation batching.
    """

    physical = True
    broadcasts_parameters = True
    INPUTS: ClassVar[tuple[str, ...]]
    OUTPUTS: ClassVar[tuple[str, ...]]
    PARAMS: ClassVar[tuple[PhysicalParam, ...]]

    def __init__(
        self,
        params: dict[str, float] | None = None,
        bounds: dict[str, tuple[float, float]] | None = None,
    ):
        super().__init__(len(self.INPUTS), len(self.OUTPUTS))
        self.bounds = dict(bounds or {})
        values = _initial_values(self.PARAMS, params or {}, self.bounds)
        for p in self.PARAMS:
            v = math.log(values[p.name]) if p.positive else values[p.name]
            self.register_parameter(p.raw_name, nn.Parameter(torch.tensor(v, dtype=DTYPE)))

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def describe(cls) -> KindInfo:
        params = tuple(ParamInfo(p.name, p.unit, p.description, p.positive) for p in cls.PARAMS)
        return KindInfo(
            cls.kind,
            summary(cls),
            inputs=cls.INPUTS,
            outputs=cls.OUTPUTS,
            params=params,
            options={},
            default_learner=cls.default_learner(),
        )

    @classmethod
    def from_spec(cls, spec: TwinSpec) -> PhysicalModel:
        cls.validate_spec(spec)
        return cls(spec.model.params, spec.model.bounds)

    @classmethod
    def validate_spec(cls, spec: TwinSpec) -> None:
        for field, got, roles in (
            ("inputs", spec.inputs, cls.INPUTS),
            ("outputs", spec.outputs, cls.OUTPUTS),
        ):
            if len(got) != len(roles):
                raise SpecError(
                    field,
                    f"{cls.kind} needs exactly {len(roles)} {field}, in the order "
                    f"[{', '.join(roles)}]; got {len(got)}",
                )
        for key in spec.model.options:
            raise SpecError(f"model.{key}", f"unknown option {key!r}; {cls.kind} takes no options")
        by_name = {p.name: p for p in cls.PARAMS}
        known = ", ".join(by_name)
        for name, value in spec.model.params.items():
            if name not in by_name:
                raise SpecError(
                    f"model.params.{name}", f"unknown parameter {name!r}; {cls.kind} has {known}"
                )
            if by_name[name].positive and not value > 0:
                raise SpecError(f"model.params.{name}", "must be positive")
        for name, (low, high) in spec.model.bounds.items():
            if name not in by_name:
                raise SpecError(
                    f"model.bounds.{name}", f"unknown parameter {name!r}; {cls.kind} has {known}"
                )
            if by_name[name].positive and not low > 0:
                raise SpecError(
                    f"model.bounds.{name}", "low must be positive (so is the parameter)"
                )
            value = spec.model.params.get(name)
            if value is not None and not low <= value <= high:
                raise SpecError(
                    f"model.params.{name}", f"{value} is outside its bounds [{low}, {high}]"
                )

    # -- prediction ---------------------------------------------------------------------------
    def values(self, params: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Parameters by name in physical units, differentiable, from the raw `params` where
        given (else the model's own): () tensors, or (S,) for a population."""
        out = {}
        for p in self.PARAMS:
            given = params is not None and p.raw_name in params
            raw = params[p.raw_name] if given else getattr(self, p.raw_name)
            out[p.name] = raw.exp() if p.positive else raw
        return out

    def forward(self, y_ctx: Tensor, u_ctx: Tensor, u_now: Tensor, dt: Tensor) -> Tensor:
        y_prev = y_ctx[..., -1, :]  # (B, n_outputs)
        u_prev = u_ctx[..., -1, :]  # (B, n_inputs), held over dt
        return self.step(self.values(), y_prev, u_prev, dt)

    def forward_with(self, params: dict[str, Tensor], *args: Tensor) -> Tensor:
        """`forward` from the raw `params`, without functional_call's swapping them into the
        module (which costs as much as a step); each may lead with a population (S,).

        Rows may lead with dimensions of their own that broadcast against the parameters' (a
        twin axis: parameters (K, S) against rows (K, 1, T), see `twin.learners.stacked`)."""
        y_ctx, u_ctx, _, dt = args
        return self.step(self.values(params), y_ctx[..., -1, :], u_ctx[..., -1, :], dt)

    def step(self, v: dict[str, Tensor], y_prev: Tensor, u_prev: Tensor, dt: Tensor) -> Tensor:
        """Exact state transition over dt: (B, n_outputs), (B, n_inputs), (B,) -> (..., B,
        n_outputs), where every value in `v` is shaped (...,): () or a population (S,)."""
        raise NotImplementedError

    def set_normalization(self, y_mean, y_std, u_mean, u_std, keep_function: bool = True) -> None:
        """The channel scaler, kept for `parameter_scales` and checkpoints: a physical kind's
        parameters do not act on standardized channels, so there is nothing to re-express and
        the buffers are only copied (the base class's old copies would go unused)."""
        for buffer, value in zip(
            (self.y_mean, self.y_std, self.u_mean, self.u_std),
            (y_mean, y_std, u_mean, u_std),
            strict=True,
        ):
            buffer.numpy()[...] = value  # a copy into the buffer's own memory, as copy_ makes

    # -- parameters ---------------------------------------------------------------------------
    def named_values(self) -> dict[str, float]:
        raws = self._parameters  # `values()`, without the module's attribute lookups
        with torch.no_grad():
            return {
                p.name: float(raws[p.raw_name].exp() if p.positive else raws[p.raw_name])
                for p in self.PARAMS
            }

    def parameter_scales(self) -> Tensor:
        """(P,), one per scalar parameter: 1, or the standard deviation of a signed one's
        output. The same tensor while the scaler's standard deviations stay the same (read
        only: the learners only read it)."""
        key = self.y_std.tolist()
        cached = self.__dict__.get("_scales_cache")
        if cached is None or cached[0] != key:
            scales = [1.0 if p.positive else key[p.scale_output] for p in self.PARAMS]
            cached = self.__dict__["_scales_cache"] = (key, torch.tensor(scales, dtype=DTYPE))
        return cached[1]

    def raw_bounds(self) -> tuple[Tensor, Tensor]:
        """The bounds on the raw coordinates, from the spec's: computed once (read only)."""
        cached = self.__dict__.get("_bounds_cache")
        if cached is None or cached[0] != self.bounds:
            cached = (dict(self.bounds), self._raw_bounds())
            self.__dict__["_bounds_cache"] = cached
        return cached[1]

    def _raw_bounds(self) -> tuple[Tensor, Tensor]:
        low, high = [], []
        for p in self.PARAMS:
            lo, hi = self.bounds.get(p.name, (-math.inf, math.inf))
            if p.positive:
                lo, hi = (math.log(lo) if lo > 0 else -math.inf), math.log(hi)
                lo, hi = max(lo, -LOG_RANGE), min(hi, LOG_RANGE)
            low.append(lo)
            high.append(hi)
        return torch.tensor(low, dtype=DTYPE), torch.tensor(high, dtype=DTYPE)


def _initial_values(
    params: tuple[PhysicalParam, ...], given: dict[str, float], bounds: dict[str, tuple]
) -> dict[str, float]:
    """Given values, else defaults; a default outside the user's bounds moves to their middle."""
    out = {}
    for p in params:
        value = given.get(p.name, p.default)
        if p.name not in given and p.name in bounds:
            lo, hi = bounds[p.name]
            if not lo <= value <= hi:
                value = math.sqrt(lo * hi) if p.positive else 0.5 * (lo + hi)
        out[p.name] = float(value)
    return out


def _rows(v: dict[str, Tensor], *names: str) -> list[Tensor]:
    """The named values shaped (..., 1), to broadcast a population against (B,) rows."""
    return [v[name][..., None] for name in names]


def _first_order_hold(y_prev: Tensor, target: Tensor, dt: Tensor, tau: Tensor) -> Tensor:
    """Exact solution of y' = (target - y)/tau over dt with constant target: y_prev and dt
    (B,), target and tau broadcasting against them; -> (..., B).

    Where every row's intervals are equal (regular sampling), the factor is computed once per
    row and parameter set and broadcast along B: the same operations on the same numbers (an
    elementwise result does not depend on its neighbours), at a fraction of the arithmetic. Not
    where tau is differentiated: its gradient would then be summed along B in another order."""
    plain = not tau.requires_grad and not is_functorch_wrapped_tensor(tau)
    if plain and dt.dim() and dt.shape[-1] > 1 and bool((dt == dt[..., :1]).all()):
        dt = dt[..., :1]
    one_minus_a = -torch.expm1(-dt / tau)  # 1 - exp(-dt/tau), accurate for dt << tau
    return y_prev + one_minus_a * (target - y_prev)


@register
class FirstOrder(PhysicalModel):
    """First-order lag with gain and offset: tau * y' = K * u + b - y.

    Channels: inputs [u], outputs [y]. Params K (gain, > 0), tau (time constant in s, > 0),
    b (offset in output units, signed).
    """

    stacks_twins = True
    kind = "first_order"
    INPUTS = ("u",)
    OUTPUTS = ("y",)
    PARAMS = (
        PhysicalParam("K", 1.0, unit="output units per input unit", description="gain"),
        PhysicalParam("tau", 1.0, unit="s", description="time constant"),
        PhysicalParam("b", 0.0, positive=False, unit="output units", description="offset"),
    )

    def step(self, v, y_prev, u_prev, dt):
        gain, tau, offset = _rows(v, "K", "tau", "b")
        target = gain * u_prev[..., 0] + offset  # (..., B)
        return _first_order_hold(y_prev[..., 0], target, dt, tau)[..., None]


@register
class ThermalRC(PhysicalModel):
    """Lumped thermal mass behind a resistance: C * T' = (T_amb - T) / R + Q.

    Channels: inputs [Q (heat input, W), T_amb (ambient temperature)], outputs [T].
    Params R (thermal resistance, K/W, > 0), C (heat capacitance, J/K, > 0).
    """

    stacks_twins = True
    kind = "thermal_rc"
    INPUTS = ("Q", "T_amb")
    OUTPUTS = ("T",)
    PARAMS = (
        PhysicalParam("R", 1.0, unit="K/W", description="thermal resistance to ambient"),
        PhysicalParam("C", 1.0, unit="J/K", description="heat capacitance"),
    )

    def step(self, v, y_prev, u_prev, dt):
        resistance, capacitance = _rows(v, "R", "C")
        target = u_prev[..., 1] + resistance * u_prev[..., 0]  # (..., B) steady state T_amb + R*Q
        return _first_order_hold(y_prev[..., 0], target, dt, resistance * capacitance)[..., None]


@register
class MassSpringDamper(PhysicalModel):
    """Damped oscillator driven by a force: m * x'' = F - c * x' - k * x.

    Channels: inputs [F (force)], outputs [x (position), v (velocity)]. Params m (mass),
    c (damping), k (stiffness), all > 0. Discretized exactly in closed form (Cayley-Hamilton
    on the 2x2 system, `twin.models.oscillator`): it equals Van Loan's expm([[A, B], [0, 0]] dt)
    to rounding in every damping regime, at a fraction of a batched 3x3 matrix exponential.
    """

    stacks_twins = True
    kind = "mass_spring_damper"
    INPUTS = ("F",)
    OUTPUTS = ("x", "v")
    PARAMS = (
        PhysicalParam("m", 1.0, unit="kg", description="mass (kg with F in N and x in m)"),
        PhysicalParam("c", 1.0, unit="N s/m", description="damping"),
        PhysicalParam("k", 1.0, unit="N/m", description="stiffness"),
    )

    def step(self, v, y_prev, u_prev, dt):
        x, vel, force = y_prev[..., 0], y_prev[..., 1], u_prev[..., 0]  # (B,) each
        return oscillator_step(v["m"], v["c"], v["k"], x, vel, force, dt)  # (..., B, 2)
