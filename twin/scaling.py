"""Online per-channel standardization, so one learner setting works from millivolts to pascals."""

from __future__ import annotations

import numpy as np


class ChannelScaler:
    """Running mean and standard deviation of each channel (Welford 1962), over all data seen.

    A constant channel gets std max(|mean|, 1) so that standardizing it never divides by zero.
    Missing values (NaN) are skipped: each channel counts its own observations.
    """

    def __init__(self, n_channels: int):
        self.n = np.zeros(n_channels, dtype=np.int64)  # observations per channel
        self._mean = np.zeros(n_channels)
        self._m2 = np.zeros(n_channels)

    def update(self, x: np.ndarray) -> None:
        """x: (N, n_channels). Chan et al.'s parallel update, exact for any batch size."""
        seen = np.isfinite(x)
        if seen.all():  # every value: x.mean(axis=0) is this sum divided by the count
            m = x.shape[0]
            if m == 0:
                return
            nb = np.full(self.n.shape, m, dtype=np.int64)
            mean_b = x.sum(axis=0) / m
            m2_b = ((x - mean_b) ** 2).sum(axis=0)
        else:
            nb = seen.sum(axis=0)  # (n_channels,)
            if not nb.any():
                return
            mean_b = np.where(seen, x, 0.0).sum(axis=0) / np.maximum(nb, 1)
            m2_b = (np.where(seen, x - mean_b, 0.0) ** 2).sum(axis=0)
        n = self.n + nb
        delta = mean_b - self._mean
        self._mean = self._mean + delta * nb / np.maximum(n, 1)
        self._m2 = self._m2 + m2_b + delta**2 * self.n * nb / np.maximum(n, 1)
        self.n = n

    @property
    def mean(self) -> np.ndarray:
        return self._mean.copy()

    @property
    def std(self) -> np.ndarray:
        var = self._m2 / np.maximum(self.n - 1, 1)
        fallback = np.maximum(np.abs(self._mean), 1.0)
        return np.where(var > 1e-24 * fallback**2, np.sqrt(var), fallback)

    def state_dict(self) -> dict:
        return {"n": self.n.tolist(), "mean": self._mean.tolist(), "m2": self._m2.tolist()}

    def load_state_dict(self, state: dict) -> None:
        """Also reads state saved when all channels shared one count (a plain number)."""
        self._mean = np.asarray(state["mean"], dtype=np.float64)
        self._m2 = np.asarray(state["m2"], dtype=np.float64)
        self.n = np.broadcast_to(np.asarray(state["n"], dtype=np.int64), self._mean.shape).copy()
