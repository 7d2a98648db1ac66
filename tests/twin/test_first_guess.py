"""First guesses: nothing is predicted or reported before one exists, black-box coefficients keep
their meaning when the channel scaler moves, and parameter change counts from convergence."""

import numpy as np
import pytest
import torch

from twin.models.arx import ARX
from twin.models.base import DTYPE
from twin.models.mlp import MLP
from twin.plants import FirstOrderPlant
from twin.replica import GUESS_AFTER, Twin
from twin.spec import TwinSpec


def randomized(model):
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen, dtype=DTYPE))
    return model


@pytest.mark.parametrize(
    "model", [ARX(2, 2, na=2, nb=3, nk=0), MLP(2, 2, na=2, nb=2)], ids=["arx", "mlp"]
)
def test_black_box_models_compute_the_same_function_when_the_scaler_moves(model):
    model = randomized(model)
    model.set_normalization([1.0, -2.0], [2.0, 0.5], [3.0, 4.0], [0.1, 10.0], keep_function=False)
    gen = torch.Generator().manual_seed(1)
    L = model.context
    args = (
        30 * torch.randn(8, L, 2, generator=gen, dtype=DTYPE),
        30 * torch.randn(8, L, 2, generator=gen, dtype=DTYPE),
        torch.randn(8, 2, generator=gen, dtype=DTYPE),
        torch.ones(8, dtype=DTYPE),
    )
    with torch.no_grad():
        before = model(*args)
        model.set_normalization([10.0, -20.0], [0.2, 5.0], [-3.0, 40.0], [1.0, 100.0])
        after = model(*args)
    torch.testing.assert_close(after, before, rtol=1e-12, atol=1e-12)


def test_arx_coefficients_given_in_the_spec_stay_in_channel_units():
    spec = TwinSpec.from_dict(
        {
            "inputs": ["u"],
            "outputs": ["y"],
            "model": {"kind": "arx", "params": {"A1[y,y]": 0.9, "B1[y,u]": 0.5, "c[y]": 2.0}},
        }
    )
    twin = Twin.create(spec)
    assert twin.parameters() == {"A1[y,y]": 0.9, "B1[y,u]": 0.5, "c[y]": 2.0}
    rng = np.random.default_rng(0)
    u = rng.normal(50.0, 10.0, size=(8, 1))
    y = 300.0 + rng.normal(size=(8, 1))
    result = twin.step(_observations(u, y))  # the scaler moves from the identity to these
    frozen = twin.frozen.named_values()
    for name, given in spec.model.params.items():
        assert frozen[name] == pytest.approx(given, rel=1e-9)  # the first guess is the spec's
    expected = 0.9 * y[:-1, 0] + 0.5 * u[:-1, 0] + 2.0
    assert result.frozen_predictions[1:, 0] == pytest.approx(expected, rel=1e-12)


def test_open_physical_parameters_are_null_and_nothing_is_predicted_before_the_first_guess():
    sim = FirstOrderPlant(noise=0.005).simulate(80, seed=0)
    spec = sim.spec_dict()
    spec["model"]["params"] = {}
    twin = Twin.create(TwinSpec.from_dict(spec))
    assert set(twin.parameters().values()) == {None}
    result = twin.step(sim.observations)
    assert np.isnan(result.predictions[:GUESS_AFTER]).all()
    assert np.isnan(result.frozen_predictions[:GUESS_AFTER]).all()
    assert np.isfinite(result.predictions[GUESS_AFTER:]).all()
    assert all(v is not None and np.isfinite(v) for v in twin.parameters().values())
    guess = twin.metrics()["parameters"]
    assert {name: p["first_guess"] for name, p in guess.items()} == twin.frozen.named_values()
    assert all(p["converged"] is None and p["change"] is None for p in guess.values())


def test_an_arx_twin_without_params_first_guesses_the_level_of_its_first_observations():
    spec = TwinSpec.from_dict({"inputs": [], "outputs": ["y"], "model": {"kind": "arx"}})
    twin = Twin.create(spec)
    assert twin.parameters() == {"A1[y,y]": None, "c[y]": None}
    y = 20.0 + np.random.default_rng(0).normal(size=(40, 1))
    result = twin.step(_observations(np.zeros((40, 0)), y))
    n = twin.update_size
    assert np.isnan(result.predictions[:n]).all() and np.isfinite(result.predictions[n:]).all()
    # The frozen first guess predicts the mean of the first chunk, however the scaler moved.
    assert result.frozen_predictions[n:] == pytest.approx(y[:n].mean(), rel=1e-12)


@pytest.mark.slow
def test_a_stationary_plant_shows_a_parameter_change_near_zero():
    sim = FirstOrderPlant(noise=0.005).simulate(1500, seed=0)
    spec = sim.spec_dict()
    spec["model"]["params"] = {"K": 1.2, "tau": 12.0, "b": 0.0}  # a guess 40% off
    twin = Twin.create(TwinSpec.from_dict(spec))
    twin.step(sim.observations)
    summary = twin.metrics()["parameters"]
    for name in ("K", "tau"):
        p = summary[name]
        assert p["first_guess"] == pytest.approx(spec["model"]["params"][name])
        assert abs(p["current"] - p["first_guess"]) / p["first_guess"] > 0.1  # it learned
        assert abs(p["relative_change"]) < 0.05, (name, p)  # but the plant did not change


def test_a_twin_waiting_for_its_first_guess_round_trips():
    sim = FirstOrderPlant().simulate(GUESS_AFTER + 8, seed=0)
    twin = Twin.create(TwinSpec.from_dict(sim.spec_dict()))
    twin.step(sim.observations[:10])
    restored = Twin.from_bytes(twin.to_bytes())
    assert restored.guessed is None and restored.parameters() == twin.parameters()
    rest = sim.observations[10:]
    a, b = twin.step(rest), restored.step(rest)
    np.testing.assert_array_equal(a.predictions, b.predictions)
    assert restored.parameters() == twin.parameters() and None not in twin.parameters().values()


def _observations(u: np.ndarray, y: np.ndarray):
    from twin.observations import Observations

    n = y.shape[0]
    return Observations(np.arange(1.0, n + 1), u, y, np.arange(1, n + 1))
