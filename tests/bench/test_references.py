"""The benchmark's reference trackers are correct, so a regression in them does not go unseen."""

import numpy as np
import pytest

from bench.references import NLMS, RLS, KalmanFilter, RiverLinear, arx_regression, run_online

THETA = np.array([0.8, -1.5, 0.3])


def regression(n: int, seed: int, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """A static linear regression with two random features and a constant: phi (n, 3), y (n,)."""
    rng = np.random.default_rng(seed)
    phi = np.column_stack([rng.normal(size=(n, 2)), np.ones(n)])
    return phi, phi @ THETA + noise * rng.normal(size=n)


def prequential_errors(ref, phi: np.ndarray, y: np.ndarray) -> np.ndarray:
    errors = np.empty(len(y))
    for t in range(len(y)):
        errors[t] = y[t] - ref.predict(phi[t])
        ref.learn(phi[t], y[t])
    return errors


def test_kalman_filter_on_a_static_regression_converges_to_the_true_theta():
    phi, y = regression(2000, seed=1)
    kf = KalmanFilter(q=0.0, r=0.01, theta0=np.zeros(3), p0=100.0)
    prequential_errors(kf, phi, y)
    np.testing.assert_allclose(kf.theta, THETA, atol=0.02)
    assert np.all(np.diag(kf.P) < 1e-4)  # the posterior shrinks as data arrive


def test_kalman_filter_with_zero_q_is_the_bayesian_batch_posterior_mean():
    phi, y = regression(300, seed=2)
    r, p0 = 0.01, 10.0
    kf = KalmanFilter(q=0.0, r=r, theta0=np.zeros(3), p0=p0)
    prequential_errors(kf, phi, y)
    posterior = np.linalg.solve(phi.T @ phi / r + np.eye(3) / p0, phi.T @ y / r)
    np.testing.assert_allclose(kf.theta, posterior, rtol=1e-8, atol=1e-10)


def test_kalman_filter_tracks_a_random_walk_better_than_a_static_one():
    rng = np.random.default_rng(3)
    n, q = 3000, 1e-4
    phi = np.column_stack([rng.normal(size=(n, 2)), np.ones(n)])
    theta = THETA + np.cumsum(np.sqrt(q) * rng.normal(size=(n, 3)), axis=0)  # (n, 3)
    y = np.einsum("nd,nd->n", phi, theta) + 0.1 * rng.normal(size=n)
    tracking = prequential_errors(KalmanFilter(q, 0.01, np.zeros(3), 10.0), phi, y)
    static = prequential_errors(KalmanFilter(0.0, 0.01, np.zeros(3), 10.0), phi, y)
    assert np.mean(tracking[500:] ** 2) < 0.8 * np.mean(static[500:] ** 2)


def test_rls_without_forgetting_equals_batch_least_squares():
    phi, y = regression(500, seed=4)
    delta = 1e-3
    rls = RLS(lam=1.0, delta=delta)
    prequential_errors(rls, phi, y)
    ridge = np.linalg.solve(phi.T @ phi + delta * np.eye(3), phi.T @ y)
    np.testing.assert_allclose(rls.theta, ridge, rtol=1e-8, atol=1e-10)
    lstsq = np.linalg.lstsq(phi, y, rcond=None)[0]
    np.testing.assert_allclose(rls.theta, lstsq, atol=1e-5)


def test_rls_with_forgetting_weights_recent_data_exponentially():
    phi, y = regression(400, seed=5)
    lam = 0.97
    rls = RLS(lam=lam, delta=1e-6)
    prequential_errors(rls, phi, y)
    w = lam ** np.arange(len(y))[::-1]  # newest observation weight 1
    weighted = np.linalg.solve(phi.T @ (w[:, None] * phi), phi.T @ (w * y))
    np.testing.assert_allclose(rls.theta, weighted, rtol=1e-6, atol=1e-8)


def test_nlms_reduces_the_prediction_error():
    phi, y = regression(3000, seed=6)
    nlms = NLMS(mu=0.2, eps=1e-6)
    errors = prequential_errors(nlms, phi, y)
    assert np.mean(errors[-500:] ** 2) < 0.05 * np.mean(errors[:50] ** 2)
    np.testing.assert_allclose(nlms.theta, THETA, atol=0.05)


def test_nlms_with_zero_step_never_moves():
    phi, y = regression(100, seed=7)
    nlms = NLMS(mu=0.0)
    prequential_errors(nlms, phi, y)
    np.testing.assert_array_equal(nlms.theta, np.zeros(3))


def test_river_linear_regression_learns_the_regression():
    phi, y = regression(3000, seed=8)
    errors = prequential_errors(RiverLinear(lr=0.02), phi, y)
    assert RiverLinear.theta is None
    assert np.mean(errors[-500:] ** 2) < 0.1 * np.mean(errors[:50] ** 2)


def test_arx_regression_lines_up_past_outputs_and_inputs_with_the_next_output():
    inputs = np.arange(10.0).reshape(5, 2)  # (N, n_in)
    outputs = 100 + np.arange(5.0)[:, None]  # (N, n_out)
    phi, targets = arx_regression(inputs, outputs)
    assert phi.shape == (4, 4) and targets.shape == (4, 1)
    np.testing.assert_array_equal(phi[2], [102.0, 4.0, 5.0, 1.0])
    np.testing.assert_array_equal(targets[:, 0], [101.0, 102.0, 103.0, 104.0])


@pytest.mark.parametrize(
    "make", [lambda j: RLS(0.99), lambda j: NLMS(0.5), lambda j: RiverLinear()]
)
def test_run_online_predicts_before_learning_each_output_separately(make):
    phi, y = regression(200, seed=9)
    targets = np.column_stack([y, -y])  # (T, 2) two outputs, two independent predictors
    preds, thetas = run_online(make, phi, targets)
    assert preds.shape == (200, 2)
    assert np.all(preds[0] == 0.0)  # nothing learned before the first prediction
    assert np.mean((preds[-50:] - targets[-50:]) ** 2) < 0.2 * np.mean(targets[-50:] ** 2)
    if thetas[0] is not None:
        np.testing.assert_allclose(thetas[0][-1], -thetas[1][-1], atol=1e-9)
        assert np.all(thetas[0][0] == 0.0)
