"""Reference plants: exact zero-order-hold dynamics, drift, noise floor, sampling, units."""

import itertools

import numpy as np
import pytest
import torch

from twin.models import model_class
from twin.plants import (
    Drift,
    FirstOrderPlant,
    LinearPlant,
    MassSpringDamperPlant,
    ThermalRCPlant,
)
from twin.spec import TwinSpec

PHYSICAL = [FirstOrderPlant, ThermalRCPlant, MassSpringDamperPlant]
ALL = [*PHYSICAL, LinearPlant]


def derivative(kind: str, p: dict, y: np.ndarray, u: np.ndarray) -> np.ndarray:
    """dy/dt of each physical plant, written from its equation: (n, n_out)."""
    if kind == "first_order":
        return ((p["K"] * u[:, 0] + p["b"] - y[:, 0]) / p["tau"])[:, None]
    if kind == "thermal_rc":
        return (((u[:, 1] - y[:, 0]) / p["R"] + u[:, 0]) / p["C"])[:, None]
    x, v = y[:, 0], y[:, 1]
    return np.stack([v, (u[:, 0] - p["c"] * v - p["k"] * x) / p["m"]], axis=1)


def euler_one_step(kind: str, sim, substeps: int = 2000) -> np.ndarray:
    """(n-1, n_out) predictions of observations 1.. from each previous one by fine Euler steps,
    holding the previous input, with the parameters in force (all in channel units)."""
    obs = sim.observations
    y, u = obs.outputs[:-1].copy(), obs.inputs[:-1]
    h = np.diff(obs.ts)[:, None] / substeps  # (n-1, 1)
    params = {k: v[1:] for k, v in sim.params.items()}
    for _ in range(substeps):
        y = y + h * derivative(kind, params, y, u)
    return y


def one_step(plant, sim, substeps: int = 2000) -> np.ndarray:
    if isinstance(plant, LinearPlant):
        obs, p = sim.observations, {k: v[1:] for k, v in sim.params.items()}
        return (p["a"] * obs.outputs[:-1, 0] + p["b"] * obs.inputs[:-1, 0] + p["c"])[:, None]
    return euler_one_step(plant.kind, sim, substeps)


# -- reproducibility ----------------------------------------------------------------------------
@pytest.mark.parametrize("plant_class", ALL)
def test_a_seed_reproduces_a_run_and_another_seed_does_not(plant_class):
    plant = plant_class(drift={next(iter(plant_class().params)): [Drift.random_walk(0.01)]})
    a, b, c = plant.simulate(200, seed=3), plant.simulate(200, seed=3), plant.simulate(200, seed=4)
    assert np.array_equal(a.observations.outputs, b.observations.outputs)
    assert np.array_equal(a.observations.inputs, b.observations.inputs)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert not np.allclose(a.observations.outputs, c.observations.outputs)


@pytest.mark.parametrize("plant_class", ALL)
def test_stream_continues_exactly_like_one_long_simulation(plant_class):
    jitter = {} if plant_class is LinearPlant else {"jitter": 0.5}
    name = list(plant_class().params)[1]
    drift = {name: [Drift.random_walk(0.01), Drift.ramp(1e-3), Drift.step(90, 1.2)]}
    plant = plant_class(drift=drift, sensor_noise=0.01, spikes=0.05, **jitter)
    whole = plant.simulate(300, seed=8).observations
    parts = list(itertools.islice(plant.stream(batch=70, seed=8), 5))
    for field in ("ts", "inputs", "outputs", "seq"):
        joined = np.concatenate([getattr(p, field) for p in parts])[:300]
        assert np.array_equal(joined, getattr(whole, field)), field


def test_observations_are_numbered_from_one_and_start_at_t0():
    obs = FirstOrderPlant(t0=1000.0).simulate(5).observations
    assert obs.seq.tolist() == [1, 2, 3, 4, 5]
    assert obs.ts[0] == 1000.0 and len(obs) == 5


# -- drift --------------------------------------------------------------------------------------
def test_drift_ramp_step_and_season_follow_their_formulas():
    k = np.arange(100)
    assert np.allclose(Drift.ramp(0.01).apply(2.0, 100), 2.0 * (1 + 0.01 * k))
    assert np.allclose(Drift.step(40, 1.5).apply(2.0, 100), np.where(k >= 40, 3.0, 2.0))
    season = Drift.seasonal(0.2, 25.0).apply(2.0, 100)
    assert np.allclose(season, 2.0 * (1 + 0.2 * np.sin(2 * np.pi * k / 25.0)))


def test_drift_random_walk_moves_in_log_space_with_the_given_std():
    values = Drift.random_walk(0.02).apply(5.0, 20_000, np.random.default_rng(0))
    assert values[0] == 5.0 and (values > 0).all()
    assert np.std(np.diff(np.log(values))) == pytest.approx(0.02, rel=0.03)
    additive = Drift.random_walk(0.3, additive=True).apply(0.0, 20_000, np.random.default_rng(0))
    assert additive[0] == 0.0 and (additive < 0).any()
    assert np.std(np.diff(additive)) == pytest.approx(0.3, rel=0.03)


def test_plant_parameters_at_each_step_match_the_drift_in_channel_units():
    at, rate = 150, 1e-3
    plant = FirstOrderPlant(
        K=2.0,
        tau=20.0,
        drift={"K": [Drift.ramp(rate), Drift.step(at, 1.3)], "tau": [Drift.random_walk(0.01)]},
        output_scale=10.0,
        input_scale=0.5,
    )
    sim = plant.simulate(400, seed=2)
    k = np.arange(400)
    expected_k = 2.0 * 10.0 / 0.5 * (1 + rate * k) * np.where(k >= at, 1.3, 1.0)
    assert np.allclose(sim.params["K"], expected_k, rtol=1e-12)
    assert np.allclose(sim.params["b"], 1.0 * 10.0)
    steps = np.diff(np.log(sim.params["tau"]))
    assert 0.008 < np.std(steps) < 0.012
    for step in (0, 149, 150, 399):
        truth = plant.true_params(step, seed=2)
        assert truth == {name: pytest.approx(sim.params[name][step]) for name in truth}


def test_drift_on_an_unknown_parameter_or_to_a_negative_value_is_refused():
    with pytest.raises(ValueError, match="unknown"):
        FirstOrderPlant(drift={"gain": [Drift.ramp(0.1)]})
    with pytest.raises(ValueError, match="non-positive"):
        FirstOrderPlant(drift={"tau": [Drift.ramp(-0.01)]}).simulate(200)
    with pytest.raises(ValueError, match="jitter"):
        LinearPlant(jitter=0.2)


# -- exact discretization -----------------------------------------------------------------------
@pytest.mark.parametrize("plant_class", PHYSICAL)
def test_noise_free_simulation_matches_fine_euler_integration(plant_class):
    name = list(plant_class().params)[0]
    plant = plant_class(
        noise=0.0,
        jitter=0.5,
        drift={name: [Drift.ramp(2e-3)]},
        output_scale=1e3,
        input_scale=1e-2,
    )
    sim = plant.simulate(300, seed=1)
    y = sim.observations.outputs
    error = np.abs(one_step(plant, sim, substeps=4000) - y[1:])
    change = np.abs(np.diff(y, axis=0)).mean(axis=0)
    assert (change > 0).all()
    assert (error.max(axis=0) < 1e-3 * change).all(), (error.max(axis=0), change)


@pytest.mark.parametrize("plant_class", PHYSICAL)
def test_the_twin_model_with_the_true_parameters_predicts_the_plant_exactly(plant_class):
    plant = plant_class(noise=0.0, jitter=0.5, output_scale=3.0, input_scale=2.0)
    sim = plant.simulate(200, seed=5)
    spec = sim.spec_dict()
    spec["model"]["params"] = {k: float(v[0]) for k, v in sim.params.items()}
    model = model_class(plant.kind).from_spec(TwinSpec.from_dict(spec))
    obs = sim.observations
    as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    with torch.no_grad():
        predicted = model(
            as_tensor(obs.outputs[:-1, None]),  # (n-1, 1, n_out)
            as_tensor(obs.inputs[:-1, None]),  # (n-1, 1, n_in)
            as_tensor(obs.inputs[1:]),
            as_tensor(np.diff(obs.ts)),
        ).numpy()
    error = np.abs(predicted - obs.outputs[1:]).max(axis=0)
    assert (error < 1e-9 * np.abs(obs.outputs).max(axis=0)).all(), error


# -- noise --------------------------------------------------------------------------------------
@pytest.mark.parametrize("plant_class", ALL)
def test_one_step_error_with_the_true_parameters_is_the_noise_floor(plant_class):
    jitter = {} if plant_class is LinearPlant else {"jitter": 0.3}
    name = list(plant_class().params)[0]
    plant = plant_class(drift={name: [Drift.random_walk(0.002)]}, output_scale=50.0, **jitter)
    sim = plant.simulate(6000, seed=4)
    residuals = sim.observations.outputs[1:] - one_step(plant, sim, substeps=500)
    per_output = np.mean(residuals**2, axis=0)
    assert np.allclose(per_output, (plant.noise * 50.0) ** 2, rtol=0.07), per_output
    assert sim.noise_floor == pytest.approx(np.mean((plant.noise * 50.0) ** 2))
    assert np.mean(residuals**2) == pytest.approx(sim.noise_floor, rel=0.07)
    assert abs(np.mean(residuals)) < 0.05 * np.sqrt(sim.noise_floor)


def test_default_noise_is_a_few_percent_of_each_outputs_spread():
    for plant_class in ALL:
        plant = plant_class()
        spread = plant.simulate(3000, seed=0).observations.outputs.std(axis=0)
        assert ((plant.noise > 0.005 * spread) & (plant.noise < 0.05 * spread)).all()


def test_spikes_and_sensor_noise_touch_the_measurements_not_the_state():
    clean = FirstOrderPlant().simulate(5000, seed=6).observations.outputs[:, 0]
    spiky = FirstOrderPlant(spikes=0.02, spike_size=20.0).simulate(5000, seed=6)
    diff = spiky.observations.outputs[:, 0] - clean
    hit = diff != 0
    assert 0.015 < hit.mean() < 0.025
    noise = FirstOrderPlant().noise[0]
    assert np.allclose(np.abs(diff[hit]), 20.0 * noise)
    assert spiky.noise_floor == pytest.approx(noise**2)
    noisy = FirstOrderPlant(sensor_noise=0.1).simulate(5000, seed=6).observations.outputs[:, 0]
    assert np.std(noisy - clean) == pytest.approx(0.1, rel=0.05)
    assert abs(np.corrcoef((noisy - clean)[1:], (noisy - clean)[:-1])[0, 1]) < 0.05


# -- sampling, excitation, units, specs ---------------------------------------------------------
def test_jitter_gives_irregular_intervals_within_its_range():
    dt = np.diff(FirstOrderPlant(dt=2.0, jitter=0.5).simulate(2000, seed=0).observations.ts)
    assert dt.min() >= 1.0 - 1e-6 and dt.max() <= 3.0 + 1e-6
    assert dt.std() > 0.4 and dt.mean() == pytest.approx(2.0, rel=0.03)
    regular = np.diff(MassSpringDamperPlant(dt=0.1).simulate(500).observations.ts)
    assert np.allclose(regular, 0.1, rtol=1e-5)


@pytest.mark.parametrize("plant_class", ALL)
def test_inputs_excite_the_plant_within_their_range(plant_class):
    plant = plant_class()
    u = plant.simulate(3000, seed=1).observations.inputs
    low, high = plant.input_mean - plant.input_amplitude, plant.input_mean + plant.input_amplitude
    assert (u >= low).all() and (u <= high).all()
    assert (u.std(axis=0) > 0.3 * plant.input_amplitude).all()
    if u.shape[1] > 1:
        assert abs(np.corrcoef(u.T)[0, 1]) < 0.5, "channels move independently"


@pytest.mark.parametrize("plant_class", ALL)
def test_other_units_scale_the_channels_and_the_noise_floor(plant_class):
    base = plant_class().simulate(300, seed=2)
    scaled = plant_class(output_scale=1e7, input_scale=1e-3).simulate(300, seed=2)
    in_scale = np.array([1e-3, 1e7]) if plant_class is ThermalRCPlant else 1e-3
    assert np.array_equal(scaled.observations.ts, base.observations.ts)
    assert np.allclose(scaled.observations.outputs, 1e7 * base.observations.outputs, rtol=1e-12)
    assert np.allclose(scaled.observations.inputs, in_scale * base.observations.inputs)
    assert scaled.noise_floor == pytest.approx(1e14 * base.noise_floor)


@pytest.mark.parametrize("plant_class", ALL)
def test_spec_dict_is_a_valid_spec_without_the_true_parameters(plant_class):
    plant = plant_class()
    spec = TwinSpec.from_dict(plant.simulate(10).spec_dict())
    assert (list(spec.inputs), list(spec.outputs)) == plant.channels
    assert spec.model.kind == plant.kind and spec.model.params == {}
