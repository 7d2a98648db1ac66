"""Classical online one-step predictors that the twin's learners are benchmarked against.

Each tracks a linear regression y_t = phi_t . theta + e_t: call `predict(phi)` before `learn(phi,
y)`, so every prediction is prequential. `theta` is the current estimate where it has a meaning
in the regression's own coordinates.
"""

from __future__ import annotations

import numpy as np
from river import linear_model, optim, preprocessing


class KalmanFilter:
    """Kalman filter (Kalman 1960) for a random-walk parameter model.

    theta_t = theta_{t-1} + w_t, w_t ~ N(0, Q) with Q = q I or diag(q); y_t = phi_t . theta_t + e_t,
    e_t ~ N(0, r). With the plant's true Q and r it is the optimal one-step predictor there.
    """

    def __init__(self, q, r: float, theta0, p0):
        self.theta = np.array(theta0, dtype=np.float64)
        d = self.theta.shape[0]
        self.Q = _covariance(q, d)
        self.P = _covariance(p0, d)
        self.r = float(r)

    def predict(self, phi: np.ndarray) -> float:
        return float(phi @ self.theta)

    def learn(self, phi: np.ndarray, y: float) -> None:
        P = self.P + self.Q  # time update: the parameters random-walk one step
        Pphi = P @ phi  # (d,)
        s = float(phi @ Pphi) + self.r  # innovation variance
        k = Pphi / s  # (d,) Kalman gain
        self.theta = self.theta + k * (y - phi @ self.theta)
        P = P - np.outer(k, Pphi)
        self.P = 0.5 * (P + P.T)


class RLS:
    """Recursive least squares with exponential forgetting factor `lam` (Haykin, Adaptive Filter
    Theory, ch. 10). P starts at I / delta, so with lam = 1 it is ridge regression with penalty
    delta, and batch least squares as delta -> 0."""

    def __init__(self, lam: float, delta: float = 1e-3):
        assert 0.0 < lam <= 1.0, "forgetting factor must be in (0, 1]"
        self.lam = float(lam)
        self.delta = float(delta)
        self.theta: np.ndarray | None = None  # sized by the first regressor seen

    def predict(self, phi: np.ndarray) -> float:
        if self.theta is None:
            self.theta = np.zeros(phi.shape[0])
            self.P = np.eye(phi.shape[0]) / self.delta
        return float(phi @ self.theta)

    def learn(self, phi: np.ndarray, y: float) -> None:
        if self.theta is None:
            self.predict(phi)
        Pphi = self.P @ phi  # (d,)
        k = Pphi / (self.lam + float(phi @ Pphi))
        self.theta = self.theta + k * (y - phi @ self.theta)
        P = (self.P - np.outer(k, Pphi)) / self.lam
        self.P = 0.5 * (P + P.T)


class NLMS:
    """Normalized least mean squares: a gradient step of size mu / (eps + |phi|^2) on the squared
    prediction error (Nagumo & Noda 1967)."""

    def __init__(self, mu: float, eps: float = 1e-6):
        self.mu = float(mu)
        self.eps = float(eps)
        self.theta: np.ndarray | None = None  # sized by the first regressor seen

    def predict(self, phi: np.ndarray) -> float:
        if self.theta is None:
            self.theta = np.zeros(phi.shape[0])
        return float(phi @ self.theta)

    def learn(self, phi: np.ndarray, y: float) -> None:
        if self.theta is None:
            self.predict(phi)
        e = y - phi @ self.theta
        self.theta = self.theta + self.mu * e * phi / (self.eps + float(phi @ phi))


class RiverLinear:
    """river's online linear regression (SGD), with running standardization of the features and
    of the target, fed the same features as dicts. Its weights live in standardized coordinates,
    so it has no `theta`."""

    theta = None

    def __init__(self, lr: float = 0.01):
        regressor = linear_model.LinearRegression(optimizer=optim.SGD(lr), intercept_lr=lr)
        self.model = preprocessing.StandardScaler() | preprocessing.TargetStandardScaler(
            regressor=regressor
        )

    def predict(self, phi: np.ndarray) -> float:
        return float(self.model.predict_one(_as_dict(phi)))

    def learn(self, phi: np.ndarray, y: float) -> None:
        self.model.learn_one(_as_dict(phi), float(y))


def arx_regression(inputs: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ARX(1, 1) regressors for every observation after the first: phi_t = [y_{t-1}, u_{t-1}, 1].

    inputs (N, n_in), outputs (N, n_out) -> phi (N-1, n_out + n_in + 1), targets (N-1, n_out).
    The sampling interval is not a feature: the references assume regular sampling.
    """
    n = outputs.shape[0]
    phi = np.concatenate([outputs[:-1], inputs[:-1], np.ones((n - 1, 1))], axis=1)
    return phi, outputs[1:]


def run_online(make, phi: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, list]:
    """Run one fresh predictor per output over a regression, predict-then-learn.

    make: output index -> predictor; phi (T, d); targets (T, n_out). Returns prequential predictions
    (T, n_out) and, per output, the (T, d) estimates in force at each prediction (None when the
    predictor has no `theta`).
    """
    T, n_out = targets.shape
    preds = np.empty((T, n_out))
    thetas = []
    for j in range(n_out):
        ref = make(j)
        history = np.full((T, phi.shape[1]), np.nan)
        for t in range(T):
            preds[t, j] = ref.predict(phi[t])
            if ref.theta is not None:
                history[t] = ref.theta
            ref.learn(phi[t], targets[t, j])
        thetas.append(None if ref.theta is None else history)
    return preds, thetas


def _covariance(value, d: int) -> np.ndarray:
    """A scalar (times I), a (d,) diagonal or a (d, d) matrix as a (d, d) covariance."""
    a = np.asarray(value, dtype=np.float64)
    if a.ndim == 0:
        return float(a) * np.eye(d)
    if a.ndim == 1:
        assert a.shape == (d,), "diagonal must have one entry per parameter"
        return np.diag(a)
    assert a.shape == (d, d), "covariance must be (d, d)"
    return a.copy()


def _as_dict(phi: np.ndarray) -> dict[str, float]:
    return {f"x{i}": float(v) for i, v in enumerate(phi)}
