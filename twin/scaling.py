"""Online per-channel standardization, so one learner setting works from millivolts to pascals."""

from __future__ import annotations

import numpy as np


class ChannelScaler:
    """Running mean and standard deviation of each channel (Welford 1962), over all data seen.

    A constant channel gets std max(|mean|, 1) so that standardizing it never divides by zero.
    """

    def __init__(self, n_channels: int):
        self.n = 0
        self._mean = np.zeros(n_channels)
        self._m2 = np.zeros(n_channels)

    def update(self, x: np.ndarray) -> None:
        """x: (N, n_channels). Chan et al.'s parallel update, exact for any batch size."""
        if x.shape[0] == 0:
            return
        nb = x.shape[0]
        mean_b = x.mean(axis=0)
        m2_b = ((x - mean_b) ** 2).sum(axis=0)
        n = self.n + nb
        delta = mean_b - self._mean
        self._mean = self._mean + delta * nb / n
        self._m2 = self._m2 + m2_b + delta**2 * self.n * nb / n
        self.n = n

    @property
    def mean(self) -> np.ndarray:
        return self._mean.copy()

    @property
    def std(self) -> np.ndarray:
        var = self._m2 / max(self.n - 1, 1)
        fallback = np.maximum(np.abs(self._mean), 1.0)
        return np.where(var > 1e-24 * fallback**2, np.sqrt(var), fallback)

    def state_dict(self) -> dict:
        return {"n": self.n, "mean": self._mean.tolist(), "m2": self._m2.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.n = int(state["n"])
        self._mean = np.asarray(state["mean"], dtype=np.float64)
        self._m2 = np.asarray(state["m2"], dtype=np.float64)
