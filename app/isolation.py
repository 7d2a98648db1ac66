"""Isolating a twin whose calibration fails: what counts as a failure, how it is described,
and learning one update at a time past observations that cannot be learned."""

from __future__ import annotations

import time

import numpy as np
import torch

from twin.models.base import flat_parameters
from twin.observations import Observations
from twin.replica import StepResult, Twin


class Failing(Exception):
    """A twin's step left a non-finite parameter."""


def check_finite(twin: Twin) -> None:
    """Raise Failing if a parameter is non-finite (None is a parameter not guessed yet)."""
    bad = sorted(k for k, v in twin.parameters().items() if v is not None and not np.isfinite(v))
    if not bad and not bool(torch.isfinite(flat_parameters(twin.model)).all()):
        bad = ["(raw coordinates)"]
    if bad:
        raise Failing(f"the step left non-finite parameters: {', '.join(bad)}")


def describe(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 500 else text[:497] + "..."


def learn_isolated(
    twin: Twin, obs: Observations, deadline: float | None
) -> tuple[Twin, StepResult, Exception | None, int]:
    """Learn one update at a time from a copy of the state before it; an update that raises
    or leaves a non-finite parameter is passed over: its observations stay stored, are not
    learned, and get no prediction. Returns the twin, the joined result, the newest error
    (None when the last update was learned: the twin has recovered) and how many observations
    were passed over."""
    n_out = len(twin.spec.outputs)
    done = StepResult(obs.seq, np.full((len(obs), n_out), np.nan), None, None)
    done.frozen_predictions = done.predictions.copy()
    error, end, passed = None, 0, 0
    for start in range(0, len(obs), twin.update_size):
        chunk = obs[start : start + twin.update_size]
        end = start + len(chunk)
        saved = twin.to_bytes()
        try:
            part = twin.step(chunk)
            check_finite(twin)
        except Exception as exc:
            twin, error = Twin.from_bytes(saved), exc
            twin.watermark = max(twin.watermark, int(chunk.seq.max()))
            passed += len(chunk)
        else:
            done.predictions[start:end] = part.predictions
            done.frozen_predictions[start:end] = part.frozen_predictions
            done.events.extend(part.events)
            done.reports.extend(part.reports)
            error = None
        # stop only where the watermark covers exactly what was done (late rows reorder seqs)
        if (
            deadline is not None
            and time.monotonic() > deadline
            and (end == len(obs) or obs.seq[:end].max() < obs.seq[end:].min())
        ):
            break
    done.seq, done.predictions = obs.seq[:end], done.predictions[:end]
    done.frozen_predictions = done.frozen_predictions[:end]
    done.residuals = obs.outputs[:end] - done.predictions
    return twin, done, error, passed
