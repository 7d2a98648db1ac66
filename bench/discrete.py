"""Discrete-time plants that `twin.plants` does not have: ARX of any order with several inputs,
and a mildly nonlinear Hammerstein plant (a tanh saturation ahead of first-order dynamics).

Both are equation-error plants, regularly sampled: y_k = features_k . theta_k + e_k, where the
features are past outputs, past (mapped) inputs and a constant. With theta's true random walk
and the noise variance, a Kalman filter over theta is the optimal one-step predictor (Ljung,
System Identification, ch. 4). The poles are drawn as time constants tau > 0 (pole
exp(-1 / tau)), so every drift keeps the plant stable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from twin.plants import Drift, ParamPath

HAMMERSTEIN_SCALE = 0.8  # u / this inside tanh: inputs of +-1 lose up to a quarter of their gain


@dataclass(frozen=True)
class Regression:
    """A simulated equation-error plant. Row k of `features` and `truth` produce output k from
    the observations before it (NaN rows until the lags exist); oracle: (N, 1) the noise-free
    one-step prediction, NaN where there is none."""

    inputs: np.ndarray  # (N, n_in)
    outputs: np.ndarray  # (N, 1)
    features: np.ndarray  # (N, d)
    truth: np.ndarray  # (N, d) coefficients in force at each observation
    oracle: np.ndarray  # (N, 1)
    names: list[str]  # (d,) coefficient names


def input_signal(
    rng: np.random.Generator, n: int, n_in: int, hold: tuple[int, int], period: float = 400.0
) -> np.ndarray:
    """(n, n_in) excitation as `twin.plants` makes it: random levels in [-1, 1] held for `hold`
    samples (inclusive range; (1, 1) is white noise), plus a slow sinusoid of `period` samples."""
    out = np.empty((n, n_in))
    k = np.arange(n)
    for c in range(n_in):
        pos, levels = 0, np.empty(n)
        while pos < n:
            take = int(rng.integers(hold[0], hold[1] + 1))
            levels[pos : pos + take] = rng.uniform(-1.0, 1.0)
            pos += take
        wave = np.sin(2 * np.pi * k / period + rng.uniform(0.0, 2 * np.pi))
        out[:, c] = 0.7 * levels + 0.3 * wave
    return out


def identity(u: np.ndarray) -> np.ndarray:
    return u


def saturation(u: np.ndarray) -> np.ndarray:
    """The Hammerstein plant's static input nonlinearity."""
    return np.tanh(u / HAMMERSTEIN_SCALE)


def arx_coefficients(taus: np.ndarray) -> np.ndarray:
    """(N, na) autoregressive coefficients A_1..A_na of the poles exp(-1 / tau); taus (N, na).

    prod_i (z - p_i) = z^na - A_1 z^(na-1) - ... - A_na."""
    poles = np.exp(-1.0 / taus)
    poly = np.ones((taus.shape[0], 1))
    for i in range(taus.shape[1]):
        shifted = np.hstack([poly, np.zeros((poly.shape[0], 1))])
        shifted[:, 1:] -= poly * poles[:, i : i + 1]
        poly = shifted
    return -poly[:, 1:]


def simulate(
    taus: list[float],
    gains: np.ndarray,
    c: float,
    drift: dict[str, list[Drift]],
    noise: float,
    inputs: np.ndarray,
    seed: int,
    input_map: Callable[[np.ndarray], np.ndarray] = identity,
) -> Regression:
    """ARX(na = len(taus), nb = gains.shape[1]) with nk = 1 on `inputs` (N, n_in).

    gains (n_in, nb): B_{j,l} multiplies input_map(u_j) at lag l; c: the constant. `drift` moves
    the base parameters named tau{i}, B{j}_{l} and c (see `Drift`), each on its own stream of
    `np.random.default_rng(seed)`, and so does the noise. The first max(na, nb) outputs sit at
    rest under the first input.
    """
    n, n_in = inputs.shape
    na, nb = len(taus), gains.shape[1]
    base = {f"tau{i + 1}": float(t) for i, t in enumerate(taus)}
    base.update({f"B{j + 1}_{l + 1}": float(gains[j, l]) for j in range(n_in) for l in range(nb)})
    base["c"] = float(c)
    streams = np.random.default_rng(seed).spawn(len(base) + 1)
    paths = {
        name: ParamPath(v0, drift.get(name, []), s).take(n)
        for (name, v0), s in zip(base.items(), streams, strict=False)
    }
    a = arx_coefficients(np.column_stack([paths[f"tau{i + 1}"] for i in range(na)]))  # (N, na)
    b = np.stack(
        [np.column_stack([paths[f"B{j + 1}_{l + 1}"] for l in range(nb)]) for j in range(n_in)],
        axis=1,
    )  # (N, n_in, nb)
    v = input_map(inputs)  # (N, n_in)
    e = noise * streams[-1].standard_normal(n)
    lag = max(na, nb)
    y, oracle = np.empty(n), np.full(n, np.nan)
    rest = (b[0].sum(axis=1) @ v[0] + paths["c"][0]) / (1.0 - a[0].sum())
    y[:lag] = rest
    features = np.full((n, na + n_in * nb + 1), np.nan)
    for k in range(lag, n):
        row = np.concatenate([y[k - na : k][::-1], v[k - nb : k][::-1].T.reshape(-1), [1.0]])
        features[k] = row
        oracle[k] = row[:na] @ a[k] + row[na:-1] @ b[k].reshape(-1) + paths["c"][k]
        y[k] = oracle[k] + e[k]
    truth = np.column_stack([a, b.reshape(n, -1), paths["c"]])
    names = [f"A{i + 1}" for i in range(na)]
    names += [f"B{l + 1}[u{j + 1}]" for j in range(n_in) for l in range(nb)]
    return Regression(inputs, y[:, None], features, truth, oracle[:, None], [*names, "c"])
