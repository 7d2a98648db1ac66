"""Linear MIMO ARX model in standardized channels (Ljung, System Identification, 2nd ed., ch. 4)."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor, nn

from twin.models import register
from twin.models.base import DTYPE, KindInfo, ModelOption, TwinModel, summary
from twin.spec import SpecError, TwinSpec

MAX_LAG = 32
_COEFFICIENT = re.compile(r"^([AB])(\d+)\[([^,\]]+),([^,\]]+)\]$")
_CONSTANT = re.compile(r"^c\[([^\]]+)\]$")
# the names `params` may give, whatever the channels (`_parse` then checks lags and channels)
PARAM_NAMES = r"^(?:[AB][0-9]+\[[^,\]]+,[^,\]]+\]|c\[[^\]]+\])$"


def int_option(options: dict[str, Any], name: str, option: ModelOption, kind: str) -> int:
    """An integer option in [option.low, option.high], or a SpecError naming `model.<name>`."""
    value = options.get(name, option.default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise SpecError(f"model.{name}", f"must be an integer, got {value!r}")
    low, high = option.low, option.high
    if not low <= value <= high:
        raise SpecError(f"model.{name}", f"{kind} needs {low} <= {name} <= {high}, got {value}")
    return value


def check_options(options: dict[str, Any], known: dict[str, ModelOption], kind: str) -> None:
    """Raise a SpecError naming the first option that `kind` does not take."""
    for key in options:
        if key not in known:
            raise SpecError(
                f"model.{key}", f"unknown option {key!r}; {kind} takes {', '.join(known)}"
            )


def reject_bounds(spec: TwinSpec, kind: str) -> None:
    """Black-box coefficients live in standardized space; only physical kinds take bounds."""
    for name in spec.model.bounds:
        raise SpecError(
            f"model.bounds.{name}", f"{kind} takes no bounds; bounds apply to physical kinds"
        )


@register
class ARX(TwinModel):
    """ys_t = sum_i A_i ys_{t-i} + sum_j B_j us_{t-nk-j+1} + c, on standardized channels.

    `ys`, `us` are outputs and inputs standardized by the twin's channel scaler. With nk = 1,
    B_1 multiplies u_{t-1}; with nk = 0 it multiplies u_t (`u_now`). ARX ignores dt: it assumes
    regular sampling.
    """

    kind = "arx"
    linear_in_parameters = True  # its predictions are linear in A, B, c (twin.learners.kalman)
    OPTIONS = {
        "na": ModelOption("int", 1, 1, MAX_LAG, description="output lags"),
        "nb": ModelOption("int", 1, 0, MAX_LAG, description="input lags (none without inputs)"),
        "nk": ModelOption("int", 1, 0, 1, description="input delay: 0 lets u_t act on y_t"),
    }

    def __init__(
        self,
        n_inputs: int,
        n_outputs: int,
        na: int = 1,
        nb: int = 1,
        nk: int = 1,
        input_names: tuple[str, ...] | None = None,
        output_names: tuple[str, ...] | None = None,
    ):
        super().__init__(n_inputs, n_outputs)
        assert na >= 1 and nb >= 0 and nk in (0, 1), "bad ARX lags"
        self.na, self.nb, self.nk = na, (nb if n_inputs else 0), nk
        self.input_names = tuple(input_names or (f"u{i}" for i in range(n_inputs)))
        self.output_names = tuple(output_names or (f"y{i}" for i in range(n_outputs)))
        self.A = nn.Parameter(torch.zeros(na, n_outputs, n_outputs, dtype=DTYPE))
        self.B = nn.Parameter(torch.zeros(self.nb, n_outputs, n_inputs, dtype=DTYPE))
        self.c = nn.Parameter(torch.zeros(n_outputs, dtype=DTYPE))

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def default_learner(cls, n_params: int | None = None) -> str:
        """`kalman` up to its size limit, `gradient` beyond: on the generalization benchmark's
        linear plants the filter bank tracks closest (docs/benchmarks.md, "Default learner of
        `arx`"), exact for a model linear in its coefficients, but it takes at most 128
        parameters; beyond, `gradient`'s Gauss-Newton or Adam steps."""
        limit, method = cls.default_learner_beyond()
        return method if n_params is not None and n_params > limit else "kalman"

    @classmethod
    def default_learner_beyond(cls) -> tuple[int, str]:
        from twin.learners.kalman import MAX_PARAMS  # twin.learners imports the models

        return MAX_PARAMS, "gradient"

    @classmethod
    def describe(cls) -> KindInfo:
        return KindInfo(
            cls.kind,
            summary(cls),
            param_names=PARAM_NAMES,
            options=cls.OPTIONS,
            bounds=False,
            default_learner=cls.default_learner(),
            default_learner_beyond=cls.default_learner_beyond(),
        )

    @classmethod
    def from_spec(cls, spec: TwinSpec) -> ARX:
        """Coefficients start at zero, or at `params` given by their `named_values` names.

        The initial normalization is the identity, so given values are in the channels' units.
        """
        cls.validate_spec(spec)
        o = {name: spec.model.options.get(name, opt.default) for name, opt in cls.OPTIONS.items()}
        model = cls(
            len(spec.inputs),
            len(spec.outputs),
            na=o["na"],
            nb=o["nb"],
            nk=o["nk"],
            input_names=spec.inputs,
            output_names=spec.outputs,
        )
        with torch.no_grad():
            for name, value in spec.model.params.items():
                tensor, index = model._locate(name)
                tensor[index] = value
        return model

    @classmethod
    def validate_spec(cls, spec: TwinSpec) -> None:
        o = spec.model.options
        check_options(o, cls.OPTIONS, cls.kind)
        na = int_option(o, "na", cls.OPTIONS["na"], cls.kind)
        nb = int_option(o, "nb", cls.OPTIONS["nb"], cls.kind) if spec.inputs else 0
        int_option(o, "nk", cls.OPTIONS["nk"], cls.kind)
        reject_bounds(spec, cls.kind)
        for name in spec.model.params:
            if _parse(name, na, nb, spec.inputs, spec.outputs) is None:
                raise SpecError(
                    f"model.params.{name}",
                    f"unknown coefficient {name!r}; arx takes A<i>[out,out] (1 <= i <= {na}), "
                    f"B<j>[out,in] (1 <= j <= {nb}) and c[out]",
                )

    def _locate(self, name: str) -> tuple[Tensor, tuple[int, ...]]:
        which, index = _parse(name, self.na, self.nb, self.input_names, self.output_names)
        return getattr(self, which), index

    # -- prediction ---------------------------------------------------------------------------
    @property
    def context(self) -> int:
        return max(self.na, self.nb if self.nk == 1 else self.nb - 1, 1)

    def forward(self, y_ctx: Tensor, u_ctx: Tensor, u_now: Tensor, dt: Tensor) -> Tensor:
        ys = (y_ctx[:, -self.na :] - self.y_mean) / self.y_std  # (B, na, n_out), oldest first
        pred = torch.einsum("ioj,bij->bo", self.A, ys.flip(1)) + self.c  # A_1 meets y_{t-1}
        u_all = u_ctx if self.nk == 1 else torch.cat([u_ctx, u_now[:, None]], dim=1)
        us = (u_all[:, u_all.shape[1] - self.nb :] - self.u_mean) / self.u_std  # (B, nb, n_in)
        pred = pred + torch.einsum("ioj,bij->bo", self.B, us.flip(1))  # nb = 0 adds zeros
        return self.y_mean + self.y_std * pred  # (B, n_out)

    # -- parameters ---------------------------------------------------------------------------
    @torch.no_grad()
    def physical_coefficients(self) -> tuple[Tensor, Tensor, Tensor]:
        """A (na, n_out, n_out), B (nb, n_out, n_in), c (n_out) acting on unscaled channels."""
        return self._in_channel_units(self.y_mean, self.y_std, self.u_mean, self.u_std)

    def _in_channel_units(self, y_mean, y_std, u_mean, u_std) -> tuple[Tensor, Tensor, Tensor]:
        """The coefficients in channel units, were the model standardizing with these."""
        a = self.A * y_std[:, None] / y_std[None, :]
        b = self.B * y_std[:, None] / u_std[None, :]
        c = y_mean + y_std * self.c - (a.sum(0) @ y_mean) - (b.sum(0) @ u_mean)
        return a, b, c

    def _reexpress(self, y_mean, y_std, u_mean, u_std) -> None:
        """Exact: the coefficients in channel units under the old scaler, written back in
        standardized units under the new one."""
        a, b, c = self._in_channel_units(y_mean, y_std, u_mean, u_std)
        ym, ys, um, us = self.y_mean, self.y_std, self.u_mean, self.u_std
        self.A.copy_(a * ys[None, :] / ys[:, None])  # a[i, o, j] = A[i, o, j] ys[o] / ys[j]
        self.B.copy_(b * us[None, :] / ys[:, None])
        self.c.copy_((c - ym + a.sum(0) @ ym + b.sum(0) @ um) / ys)

    def named_values(self) -> dict[str, float]:
        a, b, c = self.physical_coefficients()
        out, ys, us = {}, self.output_names, self.input_names
        for i in range(self.na):
            for o in range(self.n_outputs):
                for j in range(self.n_outputs):
                    out[f"A{i + 1}[{ys[o]},{ys[j]}]"] = float(a[i, o, j])
        for i in range(self.nb):
            for o in range(self.n_outputs):
                for j in range(self.n_inputs):
                    out[f"B{i + 1}[{ys[o]},{us[j]}]"] = float(b[i, o, j])
        for o in range(self.n_outputs):
            out[f"c[{ys[o]}]"] = float(c[o])
        return out

    def config(self) -> dict[str, Any]:
        return {**super().config(), "na": self.na, "nb": self.nb, "nk": self.nk}


def _parse(name, na, nb, inputs, outputs) -> tuple[str, tuple[int, ...]] | None:
    """Map "A2[y,y]", "B1[y,u]" or "c[y]" to (tensor name, index), or None if it names nothing."""
    if m := _CONSTANT.match(name):
        return ("c", (outputs.index(m[1]),)) if m[1] in outputs else None
    m = _COEFFICIENT.match(name)
    if m is None:
        return None
    which, lag, row, col = m[1], int(m[2]), m[3], m[4]
    cols, lags = (outputs, na) if which == "A" else (inputs, nb)
    if not 1 <= lag <= lags or row not in outputs or col not in cols:
        return None
    return which, (lag - 1, outputs.index(row), cols.index(col))
