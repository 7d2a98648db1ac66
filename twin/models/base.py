"""The interface every model kind implements, and flat-vector views of its parameters.

A model maps a context of the last `context` observations, the current input and the interval
`dt` since the last observation to a one-step prediction of the outputs. Teacher-forced one-step
predictions over a window are one batched call; `rollout` feeds predictions back for what-ifs.
Learners see the model only through `flat_parameters`, `parameter_scales`, `raw_bounds` and
`forward_with` (`torch.func.functional_call` unless a kind overrides it), so any `nn.Module`
that follows this contract can be calibrated.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn
from torch.func import functional_call

if TYPE_CHECKING:
    from twin.spec import TwinSpec

DTYPE = torch.float64  # channels span 1e-3..1e7 in their own units; float32 is not enough


@dataclass(frozen=True)
class ModelOption:
    """A structural option of a model kind: an "int" or a "float" from `low` to `high`
    (`low` itself excluded when `open_low`), its default and unit."""

    type: str
    default: float
    low: float
    high: float = math.inf
    open_low: bool = False
    unit: str = ""
    description: str = ""


@dataclass(frozen=True)
class ParamInfo:
    """A named parameter of a model kind, in its physical unit; `positive` ones stay > 0."""

    name: str
    unit: str
    description: str
    positive: bool = True


@dataclass(frozen=True)
class KindInfo:
    """What a model kind takes, as plain data: for documentation and the API's schema (the
    checks themselves are `TwinModel.validate_spec`'s).

    inputs, outputs: the channels' roles in the order the spec must list them (None: any
    number); params: the named parameters (None: free-form names matching `param_names`, a
    regular expression, or any when it is empty); options: the structural options (None: not
    declared, any are passed to the kind); bounds: whether `model.bounds` is taken.
    """

    kind: str
    summary: str
    inputs: tuple[str, ...] | None = None
    outputs: tuple[str, ...] | None = None
    params: tuple[ParamInfo, ...] | None = None
    param_names: str = ""
    options: dict[str, ModelOption] | None = None
    bounds: bool = True
    default_learner: str = "pgpe"
    # (n, method): models of more than n parameters default to `method` instead
    default_learner_beyond: tuple[int, str] | None = None


class TwinModel(nn.Module):
    """Base class of all model kinds.

    Subclasses set `kind`, implement `forward`, `named_values` and `validate_spec`, and register
    their trainable tensors as `nn.Parameter`s (the raw, unconstrained coordinates the learners
    move). Normalization buffers `y_mean, y_std, u_mean, u_std` are kept by every model and set
    by the twin from its channel scaler; black-box kinds use them, physical kinds ignore them.

    `broadcasts_parameters`: whether `forward_with` also takes every parameter with a leading
    population dimension (S, *shape) and returns (S, B, n_outputs), one prediction per
    parameter set. Learners then score a population in one plain call; otherwise under `vmap`.

    `stacks_twins`: whether, moreover, the rows may lead with a twin axis, (K, 1, B, ...) against
    parameters (K, S), and row k's predictions are exactly those of its twin's rows alone
    (elementwise formulas: no matmul, whose kernel torch picks by the batch's shape). Learners
    then score the populations of many twins in one call (`twin.learners.together`).
    """

    kind: ClassVar[str]
    physical: ClassVar[bool] = False
    broadcasts_parameters: ClassVar[bool] = False
    stacks_twins: ClassVar[bool] = False

    def __init__(self, n_inputs: int, n_outputs: int):
        super().__init__()
        self.n_inputs = n_inputs
        self.n_outputs = n_outputs
        self.register_buffer("y_mean", torch.zeros(n_outputs, dtype=DTYPE))
        self.register_buffer("y_std", torch.ones(n_outputs, dtype=DTYPE))
        self.register_buffer("u_mean", torch.zeros(n_inputs, dtype=DTYPE))
        self.register_buffer("u_std", torch.ones(n_inputs, dtype=DTYPE))

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: TwinSpec) -> TwinModel:
        """Build the model for a validated spec (initial params, options and bounds applied)."""
        raise NotImplementedError

    @classmethod
    def validate_spec(cls, spec: TwinSpec) -> None:
        """Raise `twin.spec.SpecError` if the spec does not fit this kind (channels, params...)."""
        raise NotImplementedError

    @classmethod
    def default_learner(cls, n_params: int | None = None) -> str:
        """The learner a spec of this kind without `learner.method` gets, for a model of
        `n_params` parameters (None: of a size within `default_learner_beyond`'s limit)."""
        beyond = cls.default_learner_beyond()
        if beyond is not None and n_params is not None and n_params > beyond[0]:
            return beyond[1]
        return "pgpe"

    @classmethod
    def default_learner_beyond(cls) -> tuple[int, str] | None:
        """(n, method) where models of this kind of more than n parameters default to
        `method`; None where the default does not depend on the model's size."""
        return None

    @classmethod
    def describe(cls) -> KindInfo:
        """What this kind takes; a kind that does not override it declares nothing exactly."""
        return KindInfo(
            cls.kind,
            summary(cls),
            default_learner=cls.default_learner(),
            default_learner_beyond=cls.default_learner_beyond(),
        )

    # -- prediction ---------------------------------------------------------------------------
    @property
    def context(self) -> int:
        """How many past observations one prediction needs (>= 1)."""
        return 1

    def forward(self, y_ctx: Tensor, u_ctx: Tensor, u_now: Tensor, dt: Tensor) -> Tensor:
        """One-step prediction.

        y_ctx: (B, L, n_outputs) outputs at t-L..t-1 (oldest first); u_ctx: (B, L, n_inputs)
        inputs at t-L..t-1; u_now: (B, n_inputs) input at t; dt: (B,) seconds from t-1 to t.
        Returns (B, n_outputs), the prediction of the outputs at t.
        """
        raise NotImplementedError

    def forward_with(self, params: dict[str, Tensor], *args: Tensor) -> Tensor:
        """`forward(*args)` with `params` ({name: tensor}, as `named_parameters`) in place of the
        model's own and differentiable in them: `torch.func.functional_call`. A kind may
        override it with an equivalent that does not swap tensors into the module."""
        return functional_call(self, params, args)

    @torch.no_grad()
    def rollout(self, y_ctx: Tensor, u_ctx: Tensor, u_future: Tensor, dt: Tensor) -> Tensor:
        """Free-run prediction under future inputs, feeding each prediction back as context.

        y_ctx: (B, L, n_outputs), u_ctx: (B, L, n_inputs) the last L observations;
        u_future: (B, H, n_inputs); dt: (B, H) intervals. Returns (B, H, n_outputs).
        """
        return rollout_with(self, y_ctx, u_ctx, u_future, dt)

    # -- parameters ---------------------------------------------------------------------------
    def named_values(self) -> dict[str, float]:
        """Parameters by name in the channels' own (physical) units, for users."""
        raise NotImplementedError

    def parameter_scales(self) -> Tensor:
        """(P,) a typical magnitude of each raw coordinate, aligned with `flat_parameters`.

        Learners size exploration and step lengths by it, so one setting of `lr` and `sigma`
        works whatever the channels' units: 1 for log-parametrized and standardized coordinates,
        the output's standard deviation for an additive offset in output units.
        """
        return torch.ones_like(flat_parameters(self))

    def raw_bounds(self) -> tuple[Tensor, Tensor]:
        """(P,), (P,) lower and upper limits on the raw coordinates (+-inf where unbounded)."""
        flat = flat_parameters(self)
        return torch.full_like(flat, -torch.inf), torch.full_like(flat, torch.inf)

    @torch.no_grad()
    def set_normalization(self, y_mean, y_std, u_mean, u_std, keep_function: bool = True) -> None:
        """Set the channel scaler the model standardizes with. With `keep_function`, a kind whose
        parameters act on standardized channels re-expresses them so that the model computes the
        same function of the channels in their own units (`_reexpress`); without it (before a
        first guess, when the parameters mean nothing yet) they are kept as they are."""
        old = (self.y_mean.clone(), self.y_std.clone(), self.u_mean.clone(), self.u_std.clone())
        for name, value in zip(
            ("y_mean", "y_std", "u_mean", "u_std"), (y_mean, y_std, u_mean, u_std), strict=True
        ):
            getattr(self, name).copy_(torch.as_tensor(value, dtype=DTYPE))
        if keep_function:
            self._reexpress(*old)

    def _reexpress(self, y_mean, y_std, u_mean, u_std) -> None:
        """Rewrite the parameters, fitted under the old normalization given, for the new one.
        Physical kinds do not standardize: nothing to do."""

    def config(self) -> dict[str, Any]:
        """Plain-dict description for checkpoints (kind and structural options)."""
        return {"kind": self.kind, "n_inputs": self.n_inputs, "n_outputs": self.n_outputs}


def summary(cls: type) -> str:
    """The first paragraph of a class's docstring, on one line."""
    doc = inspect.getdoc(cls) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip()


def rollout_with(model: nn.Module, y_ctx: Tensor, u_ctx: Tensor, u_future: Tensor, dt: Tensor):
    """`TwinModel.rollout` as a function, usable under `functional_call`/`vmap`."""
    outs = []
    for h in range(u_future.shape[1]):
        y_next = model(y_ctx, u_ctx, u_future[:, h], dt[:, h])  # (B, n_outputs)
        outs.append(y_next)
        y_ctx = torch.cat([y_ctx[:, 1:], y_next[:, None]], dim=1)
        u_ctx = torch.cat([u_ctx[:, 1:], u_future[:, h : h + 1]], dim=1)
    return torch.stack(outs, dim=1)  # (B, H, n_outputs)


def parameter_list(model: nn.Module) -> list[Tensor]:
    """`list(model.parameters())`; read from the module's own table where it has no children
    (the physical kinds), without the generators `parameters` goes through."""
    if model._modules:
        return list(model.parameters())
    out, seen = [], set()
    for p in model._parameters.values():
        if p is not None and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def flat_parameters(model: nn.Module) -> Tensor:
    """All trainable tensors of `model` as one (P,) vector, in `named_parameters` order."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def unflatten(model: nn.Module, flat: Tensor) -> dict[str, Tensor]:
    """Split a (..., P) vector into {name: tensor} shaped like `model`'s parameters.

    Leading batch dimensions are kept, so the result feeds `forward_with` under `vmap` (or
    directly, for a model that `broadcasts_parameters`).
    """
    named = list(model.named_parameters())
    if all(p.dim() == 0 for _, p in named):  # scalars (the physical kinds): one operation
        assert len(named) == flat.shape[-1], "flat vector does not match the model's parameters"
        return {name: value for (name, _), value in zip(named, flat.unbind(-1), strict=True)}
    out, i = {}, 0
    for name, p in named:
        n = p.numel()
        if p.dim() == 0:  # a scalar: one indexing operation
            out[name] = flat[..., i]
        else:
            out[name] = flat[..., i : i + n].reshape((*flat.shape[:-1], *p.shape))
        i += n
    assert i == flat.shape[-1], "flat vector does not match the model's parameter count"
    return out


@torch.no_grad()
def load_flat(model: nn.Module, flat: Tensor) -> None:
    """Write a (P,) vector into `model`'s parameters in place."""
    params = parameter_list(model)
    if flat.dim() == 1 and all(p.dim() == 0 and p.dtype == flat.dtype for p in params):
        assert len(params) == flat.shape[0], "flat vector does not match the model's parameters"
        for p, value in zip(params, flat.tolist(), strict=True):  # scalars: exact copies
            p.fill_(value)
        return
    for name, value in unflatten(model, flat).items():
        model.get_parameter(name).copy_(value)
