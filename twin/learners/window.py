"""The learner's window of recent raw observations, and how its targets are weighted and
scaled: recency and regime weights, weighted medians, the residuals' robust scale."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from twin.models.base import DTYPE
from twin.observations import Observations

MAD_TO_STD = 1.4826  # makes the median absolute deviation estimate a normal's std
MIN_FRESH = 16  # targets a fit keeps after a detected change, however recent the change


class Window:
    """The last `capacity` observations, oldest first, as float64 tensors (a bounded FIFO), with
    their `seq` and which outputs were measured (`observed`; the twin fills in the others).

    Each field is a view of the live rows of a buffer with room for more: an append writes its
    rows after them and moves the view, and only when the room is used up are the newest rows
    copied to new buffers. Rows once written are never written again, so a field read before an
    append keeps its values, as a copy would (the fields are read only)."""

    FIELDS = ("seq", "ts", "inputs", "outputs", "observed")

    def __init__(self, capacity: int, n_inputs: int, n_outputs: int):
        self.capacity = capacity
        self.seq = torch.empty(0, dtype=torch.int64)
        self.ts = torch.empty(0, dtype=DTYPE)
        self.inputs = torch.empty(0, n_inputs, dtype=DTYPE)
        self.outputs = torch.empty(0, n_outputs, dtype=DTYPE)
        self.observed = torch.empty(0, n_outputs, dtype=torch.bool)
        self._buffers: tuple[Tensor, ...] | None = None  # None: the fields are whole tensors
        self._end = 0  # the row after the live ones in the buffers

    def __len__(self) -> int:
        return self.ts.shape[0]

    def append(self, obs: Observations) -> None:
        """Copy `obs` in (the caller's arrays are never aliased) and drop the oldest rows."""
        n = len(obs)
        new = (obs.seq, obs.ts, obs.inputs, obs.outputs, obs.observed)
        held = len(self)
        keep = min(held, max(self.capacity - n, 0))  # old rows that stay
        end = self._end
        if self._buffers is None or end + n > self._buffers[1].shape[0]:
            rows = keep + n + self.capacity // 2 + n  # room for about capacity / 2n appends
            old = [getattr(self, name)[held - keep :] for name in self.FIELDS]
            self._buffers = tuple(torch.empty((rows, *t.shape[1:]), dtype=t.dtype) for t in old)
            for buffer, part in zip(self._buffers, old, strict=True):
                buffer[:keep] = part
            end = keep
        for buffer, values in zip(self._buffers, new, strict=True):
            buffer.numpy()[end : end + n] = values
        end += n
        start = end - min(keep + n, self.capacity)
        self.seq, self.ts, self.inputs, self.outputs, self.observed = (
            buffer[start:end] for buffer in self._buffers
        )
        self._end = end

    def last(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Outputs (k', n_out), inputs (k', n_in), ts (k',) of the newest k' = min(k, held) rows."""
        start = len(self) - min(k, len(self))
        return (
            self.outputs[start:].numpy().copy(),
            self.inputs[start:].numpy().copy(),
            self.ts[start:].numpy().copy(),
        )

    def state_dict(self) -> dict:
        return {
            "seq": self.seq.clone(),
            "ts": self.ts.clone(),
            "inputs": self.inputs.clone(),
            "outputs": self.outputs.clone(),
            "observed": self.observed.clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        self._buffers, self._end = None, 0
        self.ts = state["ts"].clone().to(DTYPE)
        unknown = torch.full(self.ts.shape, -1, dtype=torch.int64)  # saved before seq was kept
        self.seq = state.get("seq", unknown).clone().to(torch.int64)
        self.inputs = state["inputs"].clone().to(DTYPE)
        self.outputs = state["outputs"].clone().to(DTYPE)
        measured = torch.isfinite(self.outputs)  # saved before missing outputs were kept
        self.observed = state.get("observed", measured).clone().to(torch.bool)

    def complete(self) -> bool:
        """Whether every output was measured and every value is known (the common case)."""
        return bool(
            self.observed.all()
            and torch.isfinite(self.outputs).all()
            and torch.isfinite(self.inputs).all()
        )


def recency_weights(n: int, half_life: float) -> Tensor:
    """(n,) weights 0.5 ** (age / half_life), oldest first (the newest has age 0), summing to 1."""
    age = torch.arange(n - 1, -1, -1, dtype=DTYPE)
    w = torch.pow(0.5, age / half_life)
    return w / w.sum()


def regime_weights(seq: Tensor, half_life: float, regime_start: int | None) -> Tensor:
    """(T,) recency weights of targets with these `seq`, zero before `regime_start` (the start
    of the current regime, after a detected change) except for the newest MIN_FRESH targets."""
    n = seq.shape[0]
    fresh = n if regime_start is None else int((seq >= regime_start).sum())
    fresh = min(max(fresh, MIN_FRESH), n)
    w = torch.zeros(n, dtype=DTYPE)
    w[n - fresh :] = recency_weights(fresh, half_life)
    return w


def weighted_median(x: Tensor, w: Tensor) -> Tensor:
    """Per column of x (T, O) with row weights w (T,), or per-column weights (T, O), summing to 1
    in each column: the lower weighted median."""
    xs, order = x.sort(dim=0)
    cum = (w[order] if w.dim() == 1 else w.gather(0, order)).cumsum(dim=0)  # (T, O)
    k = (cum < 0.5).sum(dim=0).clamp(max=x.shape[0] - 1)  # (O,) first row reaching half
    return xs.gather(0, k[None]).squeeze(0)


def robust_scale(residuals: Tensor, w: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """(O,) residual scale: 1.4826 * weighted MAD, floored at 1e-6 * std(y) and at 1e-12; over
    the targets where `mask` (T, O) holds, if given."""
    residuals = torch.nan_to_num(residuals, nan=0.0, posinf=0.0, neginf=0.0)
    if mask is not None:  # each output over its measured targets
        w = w[:, None] * mask
        w = w / w.sum(dim=0).clamp(min=1e-300)
    center = weighted_median(residuals, w)
    s = MAD_TO_STD * weighted_median((residuals - center).abs(), w)
    return torch.maximum(s, scale_floor(y, mask))


def scale_floor(y: Tensor, mask: Tensor | None = None) -> Tensor:
    """(O,) the floor of the residual scale of targets y (T, O): 1e-6 * their std, at least
    1e-12; over the targets where `mask` (T, O) holds, if given."""
    if mask is not None:
        n = mask.sum(dim=0).clamp(min=1)
        mean = (y * mask).sum(dim=0) / n
        spread = (((y - mean) * mask).square().sum(dim=0) / n).sqrt()
    else:
        spread = y.std(dim=0, correction=0) if y.shape[0] > 1 else y.new_zeros(y.shape[1])
    return torch.clamp(1e-6 * spread, min=1e-12)
