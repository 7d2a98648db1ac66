"""The `kalman` bank on models that take a population of parameter sets in one call (the physical
kinds, `broadcasts_parameters`): each filter linearized at its own center, and how often.

A physical model is not linear in its parameters, so one linearization at the bank's center does
not serve filters whose centers lie apart (their time constants can differ thirtyfold). Each
filter is linearized at its own center by central differences, all filters in one model call on
K (2P + 1) parameter sets (`linearize_each`), as the estimated-noise reference of
bench/filters.py does.

It learns every observation (`update_size` 1), as the linear bank does. Learning five an update
costs a third as much (an update costs its preparation: the window's targets, the noise floor,
the model call) but tracks worse: physical tuning seeds 2.17 / 67.3 (median / worst excess-MSE
ratio to the informed filter) against 2.04 / 63.3, report seeds 2.13 / 215 against 1.77 / 15.2
(docs/benchmarks.md, "Physical kinds: the `kalman` bank averaged, five observations an update"
and the section after it). It was for the bank as the physical kinds' default, which it is not;
a spec may still name `update_size`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

# Central-difference step (scaled coordinates) of the Jacobians taken at each filter's center:
# truncation error ~1e-12 relative, rounding ~1e-10 in float64.
DIFFERENCE = 1e-6


def linearize_each(
    predict: Callable[[torch.Tensor], torch.Tensor], centers: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(K, P) centers -> each one's predictions (K, T, n_out) and their Jacobian (K, T, n_out,
    P) by central differences (DIFFERENCE in the scaled coordinates), all in one call of
    `predict` on a population (K (2P + 1), P) of parameter sets."""
    k, n = centers.shape
    steps = np.vstack([np.zeros(n), DIFFERENCE * np.eye(n), -DIFFERENCE * np.eye(n)])
    points = (centers[:, None, :] + steps[None]).reshape(-1, n)
    with torch.no_grad():
        f = predict(torch.from_numpy(points)).numpy()  # (K (2P + 1), T, n_out)
    f = f.reshape((k, 2 * n + 1) + f.shape[1:])
    jac = (f[:, 1 : n + 1] - f[:, n + 1 :]) / (2 * DIFFERENCE)  # (K, P, T, n_out)
    return f[:, 0], np.moveaxis(jac, 1, -1)
