"""Missing values in the numerical core: outputs a sensor did not report are predicted but not
learned from, missing inputs are held, and drift statistics skip what is missing."""

import copy

import numpy as np
import pytest
import torch

from tests.twin.test_walk import arx_learner, kalman_last_state
from twin.drift import ErrorStats
from twin.learners.objective import Objective
from twin.observations import Observations
from twin.replica import Twin
from twin.scaling import ChannelScaler
from twin.spec import TwinSpec


def drop(learner, rows) -> None:
    """Mark the window's outputs at `rows` as not measured (their values stay as context)."""
    learner.window.observed[rows] = False


@pytest.mark.parametrize("q", [0.0, 1e-3])
def test_masked_targets_are_the_kalman_filter_skipping_those_updates(q):
    """On a linear model, the window fit with some targets missing is the Kalman filter's
    estimate that skips those measurements (time, and the walk, still advance)."""
    opts = {"drift": q, "half_life": 1e9, "huber": 1e6, "optimizer": "gauss_newton"}
    model, learner = arx_learner(iterations=200, **opts)
    missing = np.array([3, 10, 11, 12, 40, 77, 100])  # window rows; targets are rows 1..
    drop(learner, missing)
    objective = Objective(model, learner.window, 1e9, learner.options, drift=q)
    assert objective.mask is not None and int((~objective.mask).sum()) == len(missing)
    jac = objective.jacobian()[:, 0, :].numpy()  # (T, P), zero rows where masked
    z0 = objective.z_prev.numpy()
    with torch.no_grad():
        e0 = (objective.y_scaled - objective.predict(objective.theta_prev) / objective.s)[:, 0]
    keep = objective.mask[:, 0].numpy()
    assert not jac[~keep].any()
    # the filter sees every step of the walk, and measures only the kept targets
    p = jac.shape[1]
    z, cov = np.zeros(p), 1e8 * np.eye(p)
    for t in range(len(keep)):
        if t:
            cov = cov + q * np.eye(p)
        if keep[t]:
            x, y = jac[t], e0[t].item() + jac[t] @ z0
            gain = cov @ x / (x @ cov @ x + 1.0)
            z = z + gain * (y - x @ z)
            cov = cov - np.outer(gain, x @ cov)
    theta, _ = learner._learn(objective, 0.0, 1.0)
    np.testing.assert_allclose((theta / objective.scale).numpy(), z, rtol=1e-6, atol=1e-8)
    assert kalman_last_state is not None  # the unmasked reference lives beside it


@pytest.mark.parametrize("drift", [0.0, 1e-3])
def test_a_missing_target_adds_nothing_to_the_loss(drift):
    model, learner = arx_learner(half_life=32.0)
    drop(learner, [-1])  # the newest row: a target, and no other target's context
    before = Objective(model, learner.window, 32.0, learner.options, drift=drift)
    learner.window.outputs[-1] = 1e6  # whatever value stands in for it
    after = Objective(model, learner.window, 32.0, learner.options, drift=drift)
    thetas = before.theta_prev + 0.1 * torch.randn(4, before.theta_prev.shape[0])
    assert torch.equal(after.losses(thetas), before.losses(thetas))
    assert torch.isfinite(after.losses(thetas)).all()


def test_a_complete_window_is_not_masked():
    model, learner = arx_learner()
    assert Objective(model, learner.window, 64.0, learner.options).mask is None


SPEC = {
    "inputs": ["F"],
    "outputs": ["x", "v"],
    "model": {"kind": "mass_spring_damper", "params": {"m": 1.0, "c": 0.5, "k": 2.0}},
    "learner": {"method": "pgpe", "seed": 1},
}


def oscillator(n: int, seed: int = 0, k: float = 3.0):
    """Observations of a mass-spring-damper (m 1, c 0.4, stiffness k) under a random force."""
    rng = np.random.default_rng(seed)
    dt, x, v = 0.05, 0.0, 0.0
    rows = []
    for _ in range(n):
        force = np.sin(len(rows) / 9.0) + 0.3 * rng.standard_normal()
        for _ in range(10):  # fine Euler steps between samples
            a = force - 0.4 * v - k * x
            x, v = x + dt / 10 * v, v + dt / 10 * a
        rows.append((force, x + 1e-3 * rng.standard_normal(), v + 1e-3 * rng.standard_normal()))
    u = np.array([[r[0]] for r in rows])
    y = np.array([[r[1], r[2]] for r in rows])
    return Observations(np.arange(n) * dt, u, y, np.arange(1, n + 1))


def test_twin_with_missing_outputs_predicts_them_and_tracks_as_well_from_the_rest():
    obs = oscillator(400)
    rng = np.random.default_rng(1)
    y = obs.outputs.copy()
    y[rng.random(400) < 0.2, 1] = np.nan  # the velocity sensor drops one reading in five
    y[rng.random(400) < 0.05, 0] = np.nan
    twin, complete = Twin(TwinSpec.from_dict(SPEC)), Twin(TwinSpec.from_dict(SPEC))
    result = twin.step(Observations(obs.ts, obs.inputs, y, obs.seq))
    reference = complete.step(obs)
    missing = np.isnan(y)
    assert np.isfinite(result.predictions[1:]).all(), "every observation is predicted"
    assert np.isnan(result.residuals[missing]).all()
    assert np.isfinite(result.residuals[1:][~missing[1:]]).all()
    error = np.nanmean(result.residuals[-150:] ** 2, axis=0)
    # within half again the error of the same twin given every value (context stand-ins cost)
    assert (error < 1.5 * np.mean(reference.residuals[-150:] ** 2, axis=0)).all()
    stats = twin.metrics()["outputs"]
    assert stats["v"]["twin"]["total"] == int((~missing[1:, 1]).sum())
    assert stats["x"]["twin"]["total"] == int((~missing[1:, 0]).sum())
    restored = Twin.from_bytes(twin.to_bytes())
    assert torch.equal(restored.learner.window.observed, twin.learner.window.observed)


def test_a_missing_output_is_context_at_the_twins_own_prediction():
    obs = oscillator(200)
    twin = Twin(TwinSpec.from_dict(SPEC))
    twin.step(obs[:100])
    other = copy.deepcopy(twin)
    y = obs.outputs[100:108].copy()
    y[1] = np.nan  # rows 1 and 2 share an update: row 2 is predicted from row 1's stand-in
    got = twin.step(Observations(obs.ts[100:108], obs.inputs[100:108], y, obs.seq[100:108]))
    y[1] = got.predictions[1]
    expected = other.step(Observations(obs.ts[100:108], obs.inputs[100:108], y, obs.seq[100:108]))
    np.testing.assert_array_equal(got.predictions[:4], expected.predictions[:4])
    assert np.isnan(got.residuals[1]).all() and np.isfinite(expected.residuals[1]).all()


def test_a_missing_input_is_held_from_the_previous_observation():
    obs = oscillator(120)
    u = obs.inputs.copy()
    u[50:53] = np.nan
    held = obs.inputs.copy()
    held[50:53] = held[49]
    twin, same = Twin(TwinSpec.from_dict(SPEC)), Twin(TwinSpec.from_dict(SPEC))
    got = twin.step(Observations(obs.ts, u, obs.outputs, obs.seq))
    expected = same.step(Observations(obs.ts, held, obs.outputs, obs.seq))
    np.testing.assert_allclose(got.predictions, expected.predictions, rtol=1e-9)
    np.testing.assert_allclose(
        list(twin.parameters().values()), list(same.parameters().values()), rtol=1e-6
    )


def test_the_first_observations_may_miss_values_with_nothing_to_hold():
    obs = oscillator(80)
    y, u = obs.outputs.copy(), obs.inputs.copy()
    y[0] = np.nan
    u[0] = np.nan
    twin = Twin(TwinSpec.from_dict(SPEC))
    result = twin.step(Observations(obs.ts, u, y, obs.seq))
    assert np.isnan(result.predictions[:2]).all()  # from an unknown state, nothing is predicted
    assert np.isfinite(result.predictions[2:]).all()
    assert all(np.isfinite(v) for v in twin.parameters().values())


def test_channel_scaler_counts_each_channel_over_its_measured_values():
    rng = np.random.default_rng(0)
    x = rng.normal([1.0, -5.0], [2.0, 0.1], size=(200, 2))
    x[rng.random(200) < 0.3, 0] = np.nan
    scaler = ChannelScaler(2)
    for start in range(0, 200, 7):
        scaler.update(x[start : start + 7])
    np.testing.assert_allclose(scaler.mean, np.nanmean(x, axis=0), rtol=1e-12)
    np.testing.assert_allclose(scaler.std, np.nanstd(x, axis=0, ddof=1), rtol=1e-10)
    assert scaler.n.tolist() == np.isfinite(x).sum(axis=0).tolist()
    old = ChannelScaler(2)
    old.load_state_dict({"n": 3, "mean": [1.0, 2.0], "m2": [0.5, 0.5]})  # one shared count
    assert old.n.tolist() == [3, 3]


def test_error_stats_skip_only_the_missing_output():
    stats = ErrorStats(2, window=10)
    stats.update(np.array([[1.0, np.nan], [3.0, 2.0], [np.nan, 4.0]]))
    got = stats.summary(["a", "b"])
    assert got["a"]["n"] == 2 and got["a"]["bias"] == pytest.approx(2.0)
    assert got["b"]["n"] == 2 and got["b"]["rmse"] == pytest.approx(np.sqrt(10.0))
