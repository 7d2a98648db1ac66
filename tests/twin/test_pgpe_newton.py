"""`pgpe` with its search distribution as a posterior (`optimizer: "newton"`, pgpe's default
on `arx`): derivatives from the antithetic samples, the Kalman update it reduces to, tracking, the
bank's choice of rate, state round trips, old checkpoints and groups."""

import copy

import numpy as np
import pytest

from twin.fleet import step_together
from twin.learners.posterior import Posterior, _derivatives, _root, pairs
from twin.observations import Observations
from twin.plants import FirstOrderPlant, LinearPlant
from twin.replica import Twin
from twin.spec import SpecError, TwinSpec


def quadratic(P: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(P, P))
    H, g = A @ A.T, rng.normal(size=P)
    return H, g, lambda z: 1.0 + g @ z + 0.5 * z @ H @ z


def test_gradient_and_curvature_of_a_quadratic_come_exactly_from_the_pairs():
    P = 4
    H, g, loss = quadratic(P)
    root = _root(np.diag([0.3, 1e-3, 2.0, 0.05]), 1e-4, 0.5)  # clipped: still undone exactly
    zeta = np.random.default_rng(1).normal(size=(pairs(P), P))
    plus = np.array([loss(root[0] @ x) for x in zeta])
    minus = np.array([loss(-root[0] @ x) for x in zeta])
    g_hat, H_hat = _derivatives(zeta, plus, minus, loss(np.zeros(P)), *root)
    np.testing.assert_allclose(g_hat, g, atol=1e-10)
    np.testing.assert_allclose(H_hat, H, atol=1e-9)


def test_the_fold_is_the_kalman_filters_update_on_a_linear_gaussian_model():
    """No walk before the first targets: every filter is the Kalman filter, and so the center."""
    rng = np.random.default_rng(0)
    P, r = 3, 0.01
    truth = np.array([0.5, -0.3, 1.0])
    post, center = Posterior(P), np.zeros(P)
    J = rng.normal(size=(40, P))
    y = J @ truth + np.sqrt(r) * rng.normal(size=40)
    e = y - J @ center
    center = center + post.fold(0.5 * e @ e / r, -J.T @ e / r, J.T @ J / r, 40, 40)
    S = np.linalg.inv(np.eye(P) + J.T @ J / r)  # prior I
    np.testing.assert_allclose(center, S @ J.T @ y / r, atol=1e-10)
    np.testing.assert_allclose(post.covariances[0], S, atol=1e-12)


@pytest.mark.parametrize(("walk", "faster"), [(0.0, False), (0.05, True)])
def test_the_bank_weighs_up_the_rate_the_parameters_walk_at(walk, faster):
    rng = np.random.default_rng(2)
    P, r = 2, 0.01
    truth, post, center = np.array([1.0, -0.5]), Posterior(P), np.zeros(P)
    for _ in range(300):
        truth = truth + walk * rng.normal(size=P)
        J = rng.normal(size=(4, P))
        y = J @ truth + np.sqrt(r) * rng.normal(size=4)
        e = y - J @ center
        center = center + post.fold(0.5 * e @ e / r, -J.T @ e / r, J.T @ J / r, 4, 4)
    likeliest = int(np.argmax(post.weights))
    assert (likeliest >= 8) is faster  # relative rates 1e-4 and up for a walk this fast
    assert np.abs(center - truth).max() < (0.05 if walk else 0.01)


def arx_spec(**learner) -> dict:
    spec = LinearPlant().spec_dict()
    spec["learner"] = {"method": "pgpe", **learner}
    return spec


def test_arx_twins_take_newton_by_default_and_track_a_drifting_plant_better_than_adam():
    plant = LinearPlant(a=0.8, b=0.5, noise=0.05)
    obs = plant.simulate(1200, seed=3).observations
    errors = {}
    for optimizer in ("newton", "adam"):
        twin = Twin(TwinSpec.from_dict(arx_spec(optimizer=optimizer)))
        preds = np.concatenate([twin.step(obs[s : s + 5]).predictions for s in range(0, 1200, 5)])
        errors[optimizer] = float(np.nanmean((preds[400:] - obs.outputs[400:]) ** 2))
    default = Twin(TwinSpec.from_dict(arx_spec()))  # pgpe, its optimizer left to the model
    assert default.learner.options["optimizer"] == "newton"
    assert not default.learner.steps_with_lr()
    first_order = Twin(TwinSpec.from_dict(FirstOrderPlant().spec_dict()))
    assert first_order.learner.options["optimizer"] == "adam"  # not linear in its parameters
    assert errors["newton"] < errors["adam"]
    noise_floor = 0.05**2 * plant.output_scale**2 if hasattr(plant, "output_scale") else 0.05**2
    assert errors["newton"] < 1.5 * noise_floor


def test_state_round_trips_and_a_checkpoint_from_before_the_bank_still_loads(monkeypatch):
    """A twin's bank is in its checkpoint; an `arx` pgpe twin saved before there was one (no
    optimizer named, Adam's state, no bank) loads and goes on with newton from the prior
    about its center."""
    obs = LinearPlant(a=0.7, b=1.0).simulate(400, seed=1).observations
    twin = Twin(TwinSpec.from_dict(arx_spec(seed=4)))
    assert twin.learner.options["update_size"] == 1
    for s in range(0, 300, 10):
        twin.step(obs[s : s + 10])
    restored = Twin.from_bytes(twin.to_bytes())
    for s in range(300, 400, 10):
        a, b = twin.step(obs[s : s + 10]), restored.step(obs[s : s + 10])
        np.testing.assert_array_equal(a.predictions, b.predictions)
    assert restored.learner.newton and restored.learner.posterior.n_seen > 300
    assert twin.parameters() == restored.parameters()

    from twin.models import model_class

    monkeypatch.setattr(model_class("arx"), "linear_in_parameters", False)  # Adam, as before
    old = Twin(TwinSpec.from_dict(arx_spec(seed=4)))
    assert not old.learner.newton
    for s in range(0, 300, 10):
        old.step(obs[s : s + 10])
    state = old.state_dict()
    state["learner"].pop("posterior")  # not written then
    monkeypatch.undo()
    loaded = Twin.from_state_dict(state)
    assert loaded.learner.newton and loaded.learner.posterior.n_seen == 0
    assert loaded.parameters() == old.parameters()
    for s in range(300, 400, 10):
        assert np.isfinite(loaded.step(obs[s : s + 10]).predictions).all()
    assert loaded.learner.posterior.n_seen >= 100
    truth = np.array([0.7, 1.0])
    got = np.array([loaded.parameters()[k] for k in list(loaded.parameters())[:2]])
    assert np.abs(got - truth).max() < 0.1, loaded.parameters()


def test_arx_twins_stepped_together_end_bit_for_bit_where_each_alone_ends():
    """Newton twins of different plants and seeds, one missing values and one an outlier, in a
    group with a first-order (Adam) twin."""
    twins, runs = [], []
    for i in range(5):
        plant = LinearPlant(a=0.5 + 0.1 * i, b=1.0 - 0.1 * i)
        twins.append(Twin(TwinSpec.from_dict(arx_spec(seed=i))))
        obs = plant.simulate(200, seed=i).observations
        y = obs.outputs.copy()
        if i == 3:
            y[90, 0] = np.nan
        if i == 4:
            y[120, 0] = 1e9
        runs.append(Observations(obs.ts, obs.inputs, y, obs.seq))
    plant = FirstOrderPlant()
    twins.append(Twin(TwinSpec.from_dict({**plant.spec_dict(), "learner": {"seed": 9}})))
    runs.append(plant.simulate(200, seed=9).observations)
    alone = copy.deepcopy(twins)
    for start in range(0, 200, 10):
        results = step_together(twins, [obs[start : start + 10] for obs in runs])
        for twin, obs, result in zip(alone, runs, results, strict=True):
            expected = twin.step(obs[start : start + 10])
            assert np.array_equal(result.predictions, expected.predictions, equal_nan=True)
            assert [r.to_dict() for r in result.reports] == [r.to_dict() for r in expected.reports]
    for a, b in zip(alone, twins, strict=True):
        assert a.to_bytes() == b.to_bytes()
    assert all(t.learner.posterior.n_seen > 100 for t in twins[:5])


def test_newton_is_for_small_models_only():
    """Its curvature fit grows as P^4: an arx of more than 16 parameters takes Adam, and asking
    for newton there is refused, naming the option."""
    spec = arx_spec()
    spec["model"] = {"kind": "arx", "na": 17, "nb": 1, "nk": 1}
    assert Twin(TwinSpec.from_dict(spec)).learner.options["optimizer"] == "adam"
    spec["learner"]["optimizer"] = "newton"
    with pytest.raises(SpecError, match="at most 16"):
        Twin(TwinSpec.from_dict(spec))
