"""The kalman learner: convergence, its noise and drift estimates, bounds, outliers, the bank's
response to a step and to the drift alarm, older checkpoints, and its size limit."""

import math
import warnings

import numpy as np
import pytest
import torch
from torch.func import jacfwd

from tests.twin.test_learners import (
    NOISE,
    TRUE,
    build,
    feed,
    log_error,
    make_spec,
    one_step_rmse,
    simulate,
)
from twin.learners import count_parameters, learner_method, make_learner, with_method
from twin.learners.kalman import LINEAR_RATES, MAX_PARAMS, RATES
from twin.learners.kalman_each import linearize_each
from twin.models import model_class
from twin.models.base import flat_parameters, unflatten
from twin.observations import Observations
from twin.replica import Twin
from twin.spec import LearnerSpec, ModelSpec, SpecError, TwinSpec

NEW_STATE = ("offsets", "loglik", "info", "scales", "normalization")  # the bank's additions


def test_kalman_converges_near_the_true_parameters_and_estimates_the_noise():
    obs = simulate(800)
    model, learner = build(make_spec("kalman"))
    feed(learner, obs, chunk=8)
    assert log_error(model) < 0.1
    assert abs(model.named_values()["b"] - TRUE["b"]) < 0.1
    noise_std = math.sqrt(float(learner.noise[0]))
    assert 0.7 * NOISE < noise_std < 1.4 * NOISE
    assert learner.summary()["noise_std"] == pytest.approx(noise_std)
    assert learner.summary()["drift_rate"] < 1e-4  # the plant does not drift


def test_kalman_keeps_the_bounds():
    model, learner = build(make_spec("kalman", bounds={"K": (1.0, 1.5), "tau": (2.0, 20.0)}))
    low, high = model.raw_bounds()
    obs = simulate(480)
    for s in range(0, 480, 8):
        learner.update(obs[s : s + 8])
        theta = flat_parameters(model)
        assert bool(((theta >= low) & (theta <= high)).all())
    assert model.named_values()["K"] == pytest.approx(1.5)  # the truth (2) lies outside


def test_kalman_a_single_huge_spike_barely_moves_the_parameters():
    obs = simulate(640)
    moves = {}
    for huber in (1.345, 1e9):  # 1e9: no down-weighting
        model, learner = build(make_spec("kalman", huber=huber))
        feed(learner, obs[:512], chunk=8)
        settled = flat_parameters(model)
        spiked = Observations(obs.ts, obs.inputs, obs.outputs.copy(), obs.seq)
        spiked.outputs[520] += 1000 * NOISE
        moves[huber] = 0.0
        for s in range(512, 640, 8):
            learner.update(spiked[s : s + 8])
            moves[huber] = max(moves[huber], float((flat_parameters(model) - settled).norm()))
    assert moves[1.345] < 0.3 * moves[1e9]


def arx_spec(**options):
    return TwinSpec(
        inputs=("u",),
        outputs=("y",),
        model=ModelSpec("arx", options={"na": 1, "nb": 1}),
        learner=LearnerSpec("kalman", options, 0),
    )


def test_kalman_bank_switches_to_a_fast_filter_at_a_step():
    obs = simulate(512)
    jumped = simulate(96, K=3.0, seed=5, after=obs)
    model, learner = build(arx_spec())
    assert learner.banked and learner.rates == LINEAR_RATES
    feed(learner, obs, chunk=1)
    settled, before = learner.drift(), one_step_rmse(model, obs[-64:])
    stale = one_step_rmse(model, jumped[32:])  # the model of before the step, after it
    rates = []
    for s in range(96):
        learner.update(jumped[s : s + 1])
        rates.append(learner.drift())
    assert max(rates[:16]) >= 100 * settled  # the step's innovations favour a fast filter
    after = one_step_rmse(model, jumped[32:])
    assert after < 1.5 * before and after < 0.6 * stale  # re-converged (arx, irregular dt)


def test_kalman_drift_alarm_leaves_the_bank_to_follow_the_change():
    obs = simulate(512)
    model, learner = build(arx_spec())
    feed(learner, obs, chunk=8)
    before = learner.covariances.copy()
    learner.on_drift(start_seq=500)
    np.testing.assert_array_equal(learner.covariances, before)
    assert learner.regime_start == 500  # the noise estimate looks at the new regime only


def test_kalman_drift_alarm_widens_the_covariance_and_re_converges_faster():
    obs = simulate(512)
    jumped = simulate(64, K=3.0, seed=5, after=obs)
    errors = {}
    for told in (False, True):
        model, learner = build(make_spec("kalman", drift=1e-6))  # a fixed rate: a lone filter
        assert not learner.banked
        feed(learner, obs, chunk=8)
        before = learner.covariance.copy()
        if told:
            learner.on_drift(start_seq=int(jumped.seq[0]))
            np.testing.assert_allclose(learner.covariance, before + np.eye(len(before)))
        errors[told] = []
        for s in range(0, 64, 4):
            learner.update(jumped[s : s + 4])
            errors[told].append(abs(math.log(model.named_values()["K"] / 3.0)))
    assert np.mean(errors[True]) < 0.7 * np.mean(errors[False])


@pytest.mark.parametrize("banked", [True, False])
def test_kalman_loads_the_state_of_the_single_filter_before_the_bank(banked):
    obs = simulate(600)
    spec = arx_spec() if banked else make_spec("kalman")
    model, learner = build(spec)
    feed(learner, obs[:400], chunk=8)
    state = learner.state_dict()
    old = {k: v for k, v in state.items() if k not in NEW_STATE}
    old["covariance"] = state["covariance"][learner.selected].clone()  # (P, P): one filter's
    model2, restored = build(spec)
    restored.load_state_dict(old)
    k, n = len(restored.rates), len(old["covariance"])
    assert restored.covariances.shape == (k, n, n)
    np.testing.assert_array_equal(restored.covariances[k - 1], old["covariance"].numpy())
    assert torch.equal(flat_parameters(model2), flat_parameters(model))
    feed(restored, obs[400:], chunk=8)
    feed(learner, obs[400:], chunk=8)  # the bank's own state, uninterrupted
    assert one_step_rmse(model2, obs[500:]) < 1.2 * one_step_rmse(model, obs[500:])
    assert restored.state_dict()["covariance"].shape == (k, n, n)


@pytest.mark.parametrize("grid", ["wider", "to 0.1"])
def test_kalman_loads_a_bank_of_another_grid_from_its_most_likely_filter(grid):
    obs = simulate(600)
    model, learner = build(arx_spec())
    feed(learner, obs[:400], chunk=8)
    state = learner.state_dict()
    k, n = len(learner.rates), state["covariance"].shape[-1]
    other = {**state}
    if grid == "wider":  # two more filters than the bank has
        other["covariance"] = torch.cat([state["covariance"], state["covariance"][:2] * 3.0])
        other["offsets"] = torch.cat([state["offsets"], torch.ones(2, n, dtype=torch.float64)])
        other["loglik"] = torch.cat([state["loglik"], torch.tensor([-1e9, 1e9])])
        other["scales"] = torch.cat([state["scales"], torch.ones(2, dtype=torch.float64)])
    else:  # the 12 rates 1e-12..0.1 of the bank before the interaction, its last likeliest
        assert k == 14 and LINEAR_RATES[11] == pytest.approx(0.1)
        other["covariance"] = state["covariance"][:12] * 2.0
        other["offsets"] = state["offsets"][:12]
        other["loglik"] = torch.cat([torch.full((11,), -50.0, dtype=torch.float64), torch.zeros(1)])
        other["scales"] = state["scales"][:12]
    model2, restored = build(arx_spec())
    restored.load_state_dict(other)
    assert restored.covariances.shape == (k, n, n)
    for cov in restored.covariances:
        np.testing.assert_array_equal(cov, other["covariance"][-1].numpy())
    assert not restored.offsets.any() and not restored.loglik.any()
    feed(restored, obs[400:], chunk=8)
    feed(learner, obs[400:], chunk=8)
    assert one_step_rmse(model2, obs[500:]) < 1.2 * one_step_rmse(model, obs[500:])


def test_kalman_runs_are_deterministic_and_its_state_round_trips():
    obs = simulate(400)
    one, two = build(make_spec("kalman")), build(make_spec("kalman"))
    feed(one[1], obs[:300], chunk=8)
    feed(two[1], obs[:300], chunk=8)
    assert torch.equal(flat_parameters(one[0]), flat_parameters(two[0]))
    model, restored = build(make_spec("kalman"))
    restored.load_state_dict(one[1].state_dict())
    feed(one[1], obs[300:], chunk=8)
    feed(restored, obs[300:], chunk=8)
    assert torch.equal(flat_parameters(one[0]), flat_parameters(model))
    np.testing.assert_array_equal(one[1].covariance, restored.covariance)


def test_kalman_refuses_models_beyond_its_size_limit_at_spec_validation():
    spec = {"inputs": ["u"], "outputs": ["y"], "learner": {"method": "kalman"}}
    TwinSpec.from_dict({**spec, "model": {"kind": "arx", "na": 2, "nb": 2}})
    with pytest.raises(SpecError, match=f"at most {MAX_PARAMS} parameters") as err:
        TwinSpec.from_dict({**spec, "model": {"kind": "mlp"}})
    assert err.value.field == "learner.method"


def test_arx_defaults_to_kalman_up_to_its_size_limit_and_to_gradient_beyond():
    def arx(n_outputs):  # na 1, no inputs: n_outputs^2 + n_outputs parameters
        outputs = [f"y{i}" for i in range(n_outputs)]
        return TwinSpec.from_dict({"inputs": [], "outputs": outputs, "model": {"kind": "arx"}})

    assert MAX_PARAMS == 128 and count_parameters(arx(10)) == 110
    assert count_parameters(arx(11)) == 132
    assert learner_method(arx(10)) == "kalman" and learner_method(arx(11)) == "gradient"
    assert with_method(arx(11)).learner.method == "gradient"  # valid: not refused by kalman
    for n_outputs, method in ((1, "kalman"), (11, "gradient")):
        spec = arx(n_outputs)
        assert make_learner(spec, model_class("arx").from_spec(spec)).method == method


def test_kalman_bank_stays_finite_on_a_channel_that_reads_exactly_zero():
    """A light sensor reading exactly 0 (off) then 430 (on), beside a temperature: the lag of
    the light channel is informed by no target while it reads 0 and the noise estimate of that
    channel is 0, which made the fast filters' covariances overflow (occupancy, bench/tcpd.py).
    Every filter's covariance stays finite and positive semi-definite, and the twin predicts."""
    rng = np.random.default_rng(0)
    n = 360
    t = np.arange(n)
    temp = 21 + np.cumsum(rng.normal(0, 0.05, n))
    on = ((t >= 100) & (t < 200)) | (t >= 220)  # on for more than half the window at the end
    light = np.where(on, 430.0 + rng.normal(0, 5, n), 0.0)
    y = np.stack([temp, light], 1)
    spec = {"inputs": [], "outputs": ["temp", "light"], "model": {"kind": "arx", "na": 1}}
    twin = Twin.create(TwinSpec.from_dict({**spec, "learner": {"method": "kalman"}}))
    seq = t + 1
    predictions = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # overflow, invalid values
        for s in range(0, n, 5):
            obs = Observations(
                seq[s : s + 5].astype(float), np.zeros((5, 0)), y[s : s + 5], seq[s : s + 5]
            )
            predictions.append(twin.step(obs).predictions)
            P = twin.learner.covariances
            assert np.isfinite(P).all()
            options = twin.learner.options
            cap = options["prior"] * options["window"]
            assert np.diagonal(P, axis1=1, axis2=2).max() <= cap * (1 + 1e-9)
            assert min(np.linalg.eigvalsh(p).min() for p in P) >= -1e-9
            assert np.isfinite(twin.learner.noise).all() and (twin.learner.noise > 0).all()
    late = np.concatenate(predictions)[-40:]
    assert np.isfinite(late).all()
    assert np.abs(late - y[-40:]).mean(axis=0)[1] < 50  # light on: tracked within 10 noise std


def test_kalman_linearizes_each_filter_of_a_physical_bank_at_its_own_center():
    spec = TwinSpec(
        inputs=("F",),
        outputs=("x", "v"),
        model=ModelSpec("mass_spring_damper"),
        learner=LearnerSpec("kalman", {}, 0),
    )
    model, learner = build(spec)
    assert learner.banked and learner.each and len(learner.rates) == len(RATES)
    rng = np.random.default_rng(0)
    args = (
        torch.from_numpy(rng.normal(size=(6, 1, 2))),
        torch.from_numpy(rng.normal(size=(6, 1, 1))),
        torch.zeros(6, 1),
        torch.from_numpy(rng.uniform(0.05, 0.2, 6)),
    )

    def predict(z):
        return model.forward_with(unflatten(model, z), *args)

    centers = rng.normal(scale=0.3, size=(4, 3))
    yhat, jac = linearize_each(predict, centers)
    assert yhat.shape == (4, 6, 2) and jac.shape == (4, 6, 2, 3)
    for k, center in enumerate(centers):
        z = torch.from_numpy(center)
        np.testing.assert_allclose(yhat[k], predict(z).numpy(), rtol=1e-12)
        np.testing.assert_allclose(jac[k], jacfwd(predict)(z).numpy(), rtol=1e-6, atol=1e-9)


def test_kalman_physical_bank_averages_its_filters_and_learns_every_observation():
    """The model's center is the filters' centers averaged by their likelihoods (not the most
    likely one), and a physical twin learns every observation, as the linear bank does, unless
    its spec names update_size."""
    model, learner = build(make_spec("kalman"))
    feed(learner, simulate(400), chunk=5)
    assert learner.each and learner.options["update_size"] == 1
    w = learner.weights
    assert w.max() < 0.999  # more than one filter carries weight
    np.testing.assert_allclose(w @ learner.offsets, 0.0, atol=1e-9)  # the center: their mean
    assert np.abs(learner.offsets).max() > 1e-6  # yet the filters lie apart
    assert Twin(make_spec("kalman")).update_size == 1
    assert Twin(make_spec("kalman", update_size=5)).update_size == 5
    assert Twin(arx_spec()).update_size == 1


def test_kalman_physical_twin_stored_with_one_filter_loads_into_the_bank():
    obs = simulate(600)
    model, learner = build(make_spec("kalman"))
    feed(learner, obs[:400], chunk=8)
    state = learner.state_dict()
    one = slice(learner.selected, learner.selected + 1)  # a lone filter's state, (1, ...)
    old = {**state, **{k: state[k][one].clone() for k in ("covariance", "loglik", "scales")}}
    old["offsets"] = torch.zeros(1, state["offsets"].shape[1], dtype=torch.float64)
    model2, restored = build(make_spec("kalman"))
    restored.load_state_dict(old)
    k = len(restored.rates)
    assert restored.covariances.shape[0] == k and restored.offsets.shape[0] == k
    assert torch.equal(flat_parameters(model2), flat_parameters(model))
    feed(restored, obs[400:], chunk=8)
    feed(learner, obs[400:], chunk=8)
    assert one_step_rmse(model2, obs[500:]) < 1.2 * one_step_rmse(model, obs[500:])
