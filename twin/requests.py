"""What a twin's step asks for besides its learner updates, answered for many twins at once.

`Twin.stepping` yields its learner updates (an `Observations` chunk) and these requests, and
takes back their answers; `Twin.step` answers them for its twin alone, `twin.fleet.step_together`
for all the twins of a pass together, through the same functions, so a twin's numbers are the
same either way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from twin.drift import DriftEvent, DriftMonitor, settle_together
from twin.models.base import DTYPE, TwinModel, parameter_list, unflatten
from twin.observations import supervised


@dataclass(frozen=True)
class Detect:
    """Run the detections the drift monitor staged (`DriftMonitor.settle`); answered with the
    events since its last settle."""

    monitor: DriftMonitor


def _detect(requests: list[Detect]) -> list[list[DriftEvent]]:
    return settle_together([r.monitor for r in requests])


@dataclass(frozen=True)
class OneStep:
    """One-step predictions of a twin's model and of its frozen first guess on a run of
    consecutive observations (ts (n,), inputs (n, n_in), outputs (n, n_out)): of each of its
    n - L rows after the first L = `model.context`, from the L before it. Answered with the
    two (n - L, n_out) arrays."""

    model: TwinModel
    frozen: TwinModel
    ts: np.ndarray
    inputs: np.ndarray
    outputs: np.ndarray

    @property
    def rows(self) -> int:
        return self.ts.shape[0] - self.model.context


@torch.no_grad()
def predict_together(requests: list[OneStep]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The answers to one-step requests. Twins of a kind that `stacks_twins` (same context and
    channels) are predicted in one model call, their model and first guess as a population of
    two against their rows, padded to the longest; the others each by two calls of their own.
    A row's prediction goes through the same elementwise operations either way."""
    out: list = [None] * len(requests)
    groups: dict[object, list[int]] = defaultdict(list)
    for i, r in enumerate(requests):
        m = r.model
        stacked = m.stacks_twins and m.broadcasts_parameters
        groups[(type(m), m.context, m.n_inputs, m.n_outputs) if stacked else i].append(i)
    for key, members in groups.items():
        if isinstance(key, int):
            r = requests[key]
            args = supervised(*map(_tensor, (r.ts, r.inputs, r.outputs)), r.model.context)[:4]
            out[key] = (r.model(*args).numpy(), r.frozen(*args).numpy())
            continue
        for i, answer in zip(members, _stacked([requests[i] for i in members]), strict=True):
            out[i] = answer
    return out


def _stacked(requests: list[OneStep]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Rows (K, 1, T, ...) against parameters (K, 2): each twin's model and first guess."""
    first = requests[0].model
    K, L, T = len(requests), first.context, max(r.rows for r in requests)
    y_ctx = np.zeros((K, 1, T, L, first.n_outputs))
    u_ctx = np.zeros((K, 1, T, L, first.n_inputs))
    u_now = np.zeros((K, 1, T, first.n_inputs))
    dt = np.ones((K, 1, T))  # rows past a twin's own are padding, their predictions dropped
    for k, r in enumerate(requests):
        n = r.rows  # as `supervised` makes them: row t's context is rows t .. t + L - 1
        for lag in range(L):
            y_ctx[k, 0, :n, lag] = r.outputs[lag : lag + n]
            u_ctx[k, 0, :n, lag] = r.inputs[lag : lag + n]
        u_now[k, 0, :n] = r.inputs[L:]
        dt[k, 0, :n] = r.ts[L:] - r.ts[L - 1 : L - 1 + n]
    raw = [p for r in requests for m in (r.model, r.frozen) for p in parameter_list(m)]
    scalars = all(p.dim() == 0 for p in raw)  # (as `flat_parameters` of each, in one copy)
    flat = torch.stack(raw) if scalars else torch.cat([p.detach().reshape(-1) for p in raw])
    flat = flat.reshape(K, 2, -1)
    args = (torch.from_numpy(a) for a in (y_ctx, u_ctx, u_now, dt))
    yhat = first.forward_with(unflatten(first, flat), *args).numpy()  # (K, 2, T, n_out)
    return [
        (yhat[k, 0, : r.rows].copy(), yhat[k, 1, : r.rows].copy()) for k, r in enumerate(requests)
    ]


def _tensor(a) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(a), dtype=DTYPE)


# Each kind of request: how to answer many at once, and whether a group that raises may be
# answered again one by one (not detections: they change the detectors as they go).
ANSWER: dict[type, tuple[Callable[[list], list], bool]] = {
    Detect: (_detect, False),
    OneStep: (predict_together, True),
}


def answer_together(requests: list) -> list:
    """The answer to each request, those of one type made together. What goes wrong is each
    request's own: where a group raises, its requests are answered again one by one where that
    is safe, and one that raises gets its exception in place of its answer."""
    out: list = [None] * len(requests)
    groups: dict[type, list[int]] = defaultdict(list)
    for i, request in enumerate(requests):
        groups[type(request)].append(i)
    for kind, members in groups.items():
        answer, again = ANSWER[kind]
        try:
            made = answer([requests[i] for i in members])
        except Exception as exc:
            again = again and len(members) > 1
            made = [_alone(answer, requests[i]) if again else exc for i in members]
        for i, outcome in zip(members, made, strict=True):
            out[i] = outcome
    return out


def _alone(answer: Callable[[list], list], request: object) -> object:
    try:
        return answer([request])[0]
    except Exception as exc:
        return exc
