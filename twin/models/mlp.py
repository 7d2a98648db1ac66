"""Neural NARX model: a tanh MLP over standardized lags (Narendra and Parthasarathy, 1990)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from twin.models import register
from twin.models.arx import MAX_LAG, check_options, int_option, reject_bounds
from twin.models.base import (
    DTYPE,
    KindInfo,
    ModelOption,
    TwinModel,
    flat_parameters,
    load_flat,
    summary,
    unflatten,
)
from twin.spec import SpecError, TwinSpec


def _linear(fan_in: int, fan_out: int, generator: torch.Generator, zero: bool = False) -> nn.Linear:
    """A float64 linear layer with PyTorch's default uniform init drawn from `generator`.

    Drawing from a private generator keeps the global RNG untouched and the init repeatable.
    """
    layer = nn.utils.skip_init(nn.Linear, fan_in, fan_out, dtype=DTYPE)
    bound = 0.0 if zero else 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        for p in (layer.weight, layer.bias):
            p.copy_((2 * torch.rand(p.shape, generator=generator, dtype=DTYPE) - 1) * bound)
    return layer


@register
class MLP(TwinModel):
    """ys_t = ys_{t-1} + net(ys lags, us lags, us_t, dt / dt_ref), on standardized channels.

    The net predicts the standardized change from the last output, and its output layer starts
    at zero, so the untrained model is persistence (y_t = y_{t-1}).
    """

    kind = "mlp"
    OPTIONS = {
        "na": ModelOption("int", 2, 1, MAX_LAG, description="output lags"),
        "nb": ModelOption("int", 2, 0, MAX_LAG, description="input lags (none without inputs)"),
        "hidden": ModelOption("int", 32, 1, 1024, description="width of each hidden layer"),
        "layers": ModelOption("int", 2, 1, 8, description="hidden layers"),
        "dt_ref": ModelOption(
            "float", 1.0, 0.0, open_low=True, unit="s", description="the net sees dt / dt_ref"
        ),
    }

    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        na: int = 2,
        nb: int = 2,
        hidden: int = 32,
        layers: int = 2,
        dt_ref: float = 1.0,
        seed: int = 0,
    ):
        super().__init__(n_inputs, n_outputs)
        assert na >= 1 and nb >= 0 and hidden >= 1 and layers >= 1 and dt_ref > 0
        self.na, self.nb = na, (nb if n_inputs else 0)
        self.hidden, self.layers, self.dt_ref = hidden, layers, float(dt_ref)
        n_features = na * n_outputs + (self.nb + 1) * n_inputs + 1
        widths = [n_features] + [hidden] * layers
        generator = torch.Generator().manual_seed(seed)
        body: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            body += [_linear(fan_in, fan_out, generator), nn.Tanh()]
        self.net = nn.Sequential(*body, _linear(hidden, n_outputs, generator, zero=True))

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def describe(cls) -> KindInfo:
        return KindInfo(
            cls.kind,
            summary(cls),
            params=(),
            options=cls.OPTIONS,
            bounds=False,
            default_learner=cls.default_learner(),
        )

    @classmethod
    def from_spec(cls, spec: TwinSpec) -> MLP:
        """Hidden layers are drawn from the learner's seed, so one spec gives one model."""
        cls.validate_spec(spec)
        o = {name: spec.model.options.get(name, opt.default) for name, opt in cls.OPTIONS.items()}
        return cls(
            len(spec.inputs),
            len(spec.outputs),
            na=o["na"],
            nb=o["nb"],
            hidden=o["hidden"],
            layers=o["layers"],
            dt_ref=o["dt_ref"],
            seed=spec.learner.seed,
        )

    @classmethod
    def validate_spec(cls, spec: TwinSpec) -> None:
        o = spec.model.options
        check_options(o, cls.OPTIONS, cls.kind)
        for name in ("na", "nb", "hidden", "layers"):
            if name != "nb" or spec.inputs:
                int_option(o, name, cls.OPTIONS[name], cls.kind)
        dt_ref = o.get("dt_ref", cls.OPTIONS["dt_ref"].default)
        ok = isinstance(dt_ref, int | float) and not isinstance(dt_ref, bool)
        if not (ok and math.isfinite(dt_ref) and dt_ref > 0):
            raise SpecError("model.dt_ref", f"must be a positive number of seconds, got {dt_ref!r}")
        for name in spec.model.params:
            raise SpecError(f"model.params.{name}", "mlp takes no initial params")
        reject_bounds(spec, cls.kind)

    @classmethod
    def default_learner(cls, n_params: int | None = None) -> str:
        return "gradient"

    # -- prediction ---------------------------------------------------------------------------
    @property
    def context(self) -> int:
        return max(self.na, self.nb, 1)

    def forward(self, y_ctx: Tensor, u_ctx: Tensor, u_now: Tensor, dt: Tensor) -> Tensor:
        ys = (y_ctx[:, -self.na :] - self.y_mean) / self.y_std  # (B, na, n_out)
        features = [ys.flatten(1)]  # (B, na * n_out)
        if self.n_inputs:
            u_lags = u_ctx[:, u_ctx.shape[1] - self.nb :]  # (B, nb, n_in)
            u_all = torch.cat([u_lags, u_now[:, None]], dim=1)  # (B, nb + 1, n_in)
            features.append(((u_all - self.u_mean) / self.u_std).flatten(1))
        features.append((dt / self.dt_ref)[:, None])  # (B, 1)
        change = self.net(torch.cat(features, dim=1))  # (B, n_out), standardized
        return y_ctx[:, -1] + self.y_std * change

    # -- parameters ---------------------------------------------------------------------------
    def _reexpress(self, y_mean, y_std, u_mean, u_std) -> None:
        """Exact: the first affine layer absorbs the change in the features' standardization,
        the last one the change in the output scale (the hidden layers see the same values)."""
        flat = flat_parameters(self).to(DTYPE)[None]
        load_flat(self, self.reexpressed(flat, (y_mean, y_std, u_mean, u_std))[0])

    @torch.no_grad()
    def reexpressed(self, flat: Tensor, old: tuple[Tensor, ...]) -> Tensor:
        """(S, P) flat parameter sets fitted under the channel scaler `old` (y_mean, y_std,
        u_mean, u_std) -> (S, P) the same functions under the model's current scaler."""
        named = [name for name, _ in self.named_parameters()]
        first_w, first_b, last_w, last_b = named[0], named[1], named[-2], named[-1]
        p = {k: v.clone() for k, v in unflatten(self, flat).items()}
        mean_old, std_old = self._feature_scaler(*old)  # (F,), (F,)
        mean_new, std_new = self._feature_scaler(self.y_mean, self.y_std, self.u_mean, self.u_std)
        p[first_b] = p[first_b] + p[first_w] @ ((mean_new - mean_old) / std_old)
        p[first_w] = p[first_w] * (std_new / std_old)
        ratio = old[1] / self.y_std  # (n_out,)
        p[last_w] = p[last_w] * ratio[:, None]
        p[last_b] = p[last_b] * ratio
        return torch.cat([p[name].reshape(flat.shape[0], -1) for name in named], dim=1)

    def _feature_scaler(self, y_mean, y_std, u_mean, u_std) -> tuple[Tensor, Tensor]:
        """(F,) mean and std the features are standardized with, in `forward`'s order (dt is
        divided by dt_ref whatever the scaler: 0 and 1 there)."""
        n_u = (self.nb + 1) if self.n_inputs else 0
        one = torch.ones(1, dtype=DTYPE)
        mean = torch.cat([y_mean.repeat(self.na), u_mean.repeat(n_u), 0 * one])
        std = torch.cat([y_std.repeat(self.na), u_std.repeat(n_u), one])
        return mean, std

    def parameter_groups(self) -> list[list[int]]:
        """Flat parameter indices per neuron: the weights into it and its bias (the blocks of a
        node-decoupled Kalman filter, `twin.learners.decoupled`). The channel scaler's
        re-expression acts within each group."""
        groups, start = [], 0
        for layer in self.net:
            if not isinstance(layer, nn.Linear):
                continue
            fan_out, fan_in = layer.weight.shape
            bias = start + fan_out * fan_in
            for i in range(fan_out):
                groups.append([*range(start + i * fan_in, start + (i + 1) * fan_in), bias + i])
            start = bias + fan_out
        return groups

    @torch.no_grad()
    def named_values(self) -> dict[str, float]:
        """Summary numbers, not weights: their overall norm and the output layer's norm."""
        weights = torch.cat([p.reshape(-1) for p in self.parameters()])
        head = self.net[-1]
        return {
            "weights_norm": float(weights.norm()),
            "output_norm": float(torch.cat([head.weight.reshape(-1), head.bias]).norm()),
        }

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "na": self.na,
            "nb": self.nb,
            "hidden": self.hidden,
            "layers": self.layers,
            "dt_ref": self.dt_ref,
        }
