"""A batch of observations as numpy arrays, the unit the numerical core learns from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Observations:
    """Observations in `seq` order.

    ts: (N,) epoch seconds, strictly increasing; inputs: (N, n_inputs); outputs: (N, n_outputs);
    seq: (N,) server sequence numbers (0..N-1 when not given). A value a sensor did not report
    is NaN. observed: (N, n_outputs) which outputs were measured (default: the finite ones);
    the twin fills the others in for context and passes the mask on, so learners fit only what
    was measured.
    """

    ts: np.ndarray
    inputs: np.ndarray
    outputs: np.ndarray
    seq: np.ndarray | None = None
    observed: np.ndarray | None = None

    def __post_init__(self) -> None:
        ts = np.asarray(self.ts, dtype=np.float64).reshape(-1)
        n = ts.shape[0]
        inputs = np.asarray(self.inputs, dtype=np.float64)
        outputs = np.asarray(self.outputs, dtype=np.float64)
        assert inputs.ndim == 2 and inputs.shape[0] == n, "inputs must be (N, n_inputs)"
        assert outputs.ndim == 2 and outputs.shape[0] == n, "outputs must be (N, n_outputs)"
        seq = np.arange(n) if self.seq is None else np.asarray(self.seq, dtype=np.int64)
        assert seq.shape == (n,), "seq must have one entry per observation"
        if n > 1 and not np.all(np.diff(ts) > 0):
            raise ValueError("observation timestamps must be strictly increasing")
        if self.observed is None:
            observed = np.isfinite(outputs)
        else:
            observed = np.asarray(self.observed, dtype=bool)
        assert observed.shape == outputs.shape, "observed must be shaped like outputs"
        object.__setattr__(self, "ts", ts)
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "outputs", outputs)
        object.__setattr__(self, "seq", seq)
        object.__setattr__(self, "observed", observed)

    @classmethod
    def checked(
        cls,
        ts: np.ndarray,
        inputs: np.ndarray,
        outputs: np.ndarray,
        seq: np.ndarray,
        observed: np.ndarray,
    ) -> Observations:
        """Observations of arrays that already are what `__post_init__` makes of its arguments
        (parts of checked observations, or arrays shaped and typed like them), taken as they
        are, without its conversions and checks."""
        obs = object.__new__(cls)
        for name, value in zip(FIELDS, (ts, inputs, outputs, seq, observed), strict=True):
            object.__setattr__(obs, name, value)
        return obs

    def __len__(self) -> int:
        return self.ts.shape[0]

    def __getitem__(self, index: slice) -> Observations:
        assert isinstance(index, slice), "Observations only slice"
        step = index.step
        assert step is None or step > 0, "a slice keeps observations in order"
        return Observations.checked(
            self.ts[index],
            self.inputs[index],
            self.outputs[index],
            self.seq[index],
            self.observed[index],
        )


FIELDS = ("ts", "inputs", "outputs", "seq", "observed")


def supervised(ts, inputs, outputs, context: int):
    """One-step training/prediction tensors from a run of consecutive observations.

    For each observation t with `context` predecessors in the run: y_ctx (T, L, n_out) and
    u_ctx (T, L, n_in) the L observations before t, u_now (T, n_in), dt (T,) seconds since t-1,
    y (T, n_out) the observed outputs at t. Arguments are torch float64 tensors, (N,), (N, n_in),
    (N, n_out); T = N - L.
    """
    n, L = ts.shape[0], context
    T = max(n - L, 0)
    idx = torch.arange(T)[:, None] + torch.arange(L)[None, :]  # (T, L) rows of each context
    y_ctx = outputs[idx]  # (T, L, n_out)
    u_ctx = inputs[idx]  # (T, L, n_in)
    u_now = inputs[L:]
    dt = ts[L:] - ts[L - 1 : n - 1] if T else ts[:0]
    return y_ctx, u_ctx, u_now, dt, outputs[L:]
