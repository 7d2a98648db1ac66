"""Contract checks run over every model kind and every learner (river's check_estimator idea):
state round-trips exactly, seeding makes runs repeatable, inputs are not mutated, what-if
rollouts have the right shapes, and defaults are not shared between twins."""

import copy

import numpy as np
import pytest
import torch

from twin.models import model_kinds
from twin.models.base import flat_parameters
from twin.observations import Observations
from twin.replica import GUESS_AFTER, Twin
from twin.spec import TwinSpec

CHANNELS = {
    "first_order": (["u"], ["y"]),
    "thermal_rc": (["Q", "T_amb"], ["T"]),
    "mass_spring_damper": (["F"], ["x", "v"]),
    "arx": (["u1", "u2"], ["y1", "y2"]),
    "mlp": (["u"], ["y"]),
}
KINDS = [k for k in model_kinds() if k in CHANNELS]
METHODS = ["pgpe", "gradient", "pgpe+walk", "gradient+walk", "kalman"]
TOO_LARGE = {("mlp", "kalman")}  # kalman refuses models beyond a few dozen parameters
# "+walk": the random-walk residual model, and Gauss-Newton steps for gradient
WALK = {"pgpe": {"drift": 1e-4}, "gradient": {"drift": 1e-4, "optimizer": "gauss_newton"}}


def test_every_built_in_kind_is_covered():
    assert set(CHANNELS) <= set(model_kinds())


def make_spec(kind: str, method: str, seed: int = 7) -> TwinSpec:
    inputs, outputs = CHANNELS[kind]
    method, walk = method.removesuffix("+walk"), method.endswith("+walk")
    learner = {"method": method, "seed": seed, "update_size": 8, "window": 64}
    learner |= WALK[method] if walk else {}
    return TwinSpec.from_dict(
        {"inputs": inputs, "outputs": outputs, "model": {"kind": kind}, "learner": learner}
    )


def make_observations(spec: TwinSpec, n: int, start: int = 0, seed: int = 0) -> Observations:
    """A smooth, stable, irregularly sampled multi-channel signal (not any model's truth)."""
    rng = np.random.default_rng(seed + start)
    ts = 1000.0 + np.cumsum(rng.uniform(0.5, 1.5, start + n))[start:]
    u = np.sin(ts[:, None] / np.arange(7.0, 7.0 + len(spec.inputs))) + 0.1 * rng.standard_normal(
        (n, len(spec.inputs))
    )
    y = np.cos(ts[:, None] / np.arange(11.0, 11.0 + len(spec.outputs))) + 0.05 * (
        rng.standard_normal((n, len(spec.outputs)))
    )
    if spec.inputs:
        y = y + 0.5 * u.mean(axis=1, keepdims=True)
    return Observations(ts, u, y, np.arange(start + 1, start + n + 1))


@pytest.fixture(
    params=[(k, m) for k in KINDS for m in METHODS if (k, m) not in TOO_LARGE],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def spec(request) -> TwinSpec:
    return make_spec(*request.param)


def test_state_round_trip_gives_identical_next_update(spec):
    twin = Twin.create(spec)
    twin.step(make_observations(spec, 40))
    restored = Twin.from_bytes(twin.to_bytes())
    nxt = make_observations(spec, 24, start=40)
    a, b = twin.step(nxt), restored.step(nxt)
    np.testing.assert_array_equal(a.predictions, b.predictions)
    assert twin.parameters() == restored.parameters()
    assert twin.watermark == restored.watermark == 64
    assert twin.metrics() == restored.metrics()


def test_same_seed_gives_identical_runs(spec):
    obs = make_observations(spec, 48)
    one, two = Twin.create(spec), Twin.create(spec)
    r1, r2 = one.step(obs), two.step(obs)
    np.testing.assert_array_equal(r1.predictions, r2.predictions)
    assert one.parameters() == two.parameters()


def test_learning_moves_the_parameters(spec):
    twin = Twin.create(spec)
    before = twin.parameters()
    twin.step(make_observations(spec, 48))
    assert twin.parameters() != before


def test_step_does_not_mutate_its_input(spec):
    obs = make_observations(spec, 32)
    kept = copy.deepcopy(obs)
    spec_before = spec.to_dict()
    Twin.create(spec).step(obs)
    for field in ("ts", "inputs", "outputs", "seq"):
        np.testing.assert_array_equal(getattr(obs, field), getattr(kept, field))
    assert spec.to_dict() == spec_before


def test_twins_do_not_share_state(spec):
    one, two = Twin.create(spec), Twin.create(spec)
    one.step(make_observations(spec, 32))
    assert two.parameters() == Twin.create(spec).parameters()
    assert two.watermark == 0


def test_prequential_predictions_cover_every_observation_after_the_context_and_first_guess(spec):
    twin = Twin.create(spec)
    obs = make_observations(spec, 40)
    L = twin.model.context
    if twin.guessed is not None:  # the spec gave everything: the first guess is the spec's
        first = L
    elif twin.model.physical:  # open physical parameters: guessed from the first observations
        first = max(L, GUESS_AFTER)
    else:  # black-box: the first update's scaler is the guess
        first = max(L, twin.update_size)
    result = twin.step(obs)
    assert result.predictions.shape == (40, len(spec.outputs))
    assert np.isnan(result.predictions[:first]).all()
    assert np.isfinite(result.predictions[first:]).all()
    np.testing.assert_allclose(
        result.residuals[first:], obs.outputs[first:] - result.predictions[first:]
    )


def test_rollout_has_one_row_per_future_input(spec):
    twin = Twin.create(spec)
    twin.step(make_observations(spec, 40))
    H = 7
    mean, std = twin.predict(np.ones((H, len(spec.inputs))), np.full(H, 1.0))
    assert mean.shape == std.shape == (H, len(spec.outputs))
    assert np.isfinite(mean).all() and (std >= 0).all()


def test_rollout_needs_an_observed_state(spec):
    with pytest.raises(ValueError, match="not seen enough|no first guess"):
        Twin.create(spec).predict(np.ones((3, len(spec.inputs))), np.ones(3))


def test_an_output_not_measured_is_not_learned_from(spec):
    """Whatever value stands in for an output the sensor did not report, the update is the
    same (masked loss; a filter gets no measurement row); a measured value does move it."""
    twin = Twin.create(spec)
    twin.step(make_observations(spec, 40))
    nxt = make_observations(spec, twin.update_size, start=40)
    observed = np.ones(nxt.outputs.shape, dtype=bool)
    observed[-1, 0] = False  # the newest target: no other target's context holds it yet
    learned = []
    for value, measured in ((0.0, observed), (5.0, observed), (5.0, None)):
        y = nxt.outputs.copy()
        y[-1, 0] = value
        learner = Twin.from_bytes(twin.to_bytes()).learner
        learner.update(Observations(nxt.ts, nxt.inputs, y, nxt.seq, measured))
        learned.append((flat_parameters(learner.model), learner.summary()))
    (a, summary_a), (b, summary_b), (c, _) = learned
    assert torch.equal(a, b) and summary_a == summary_b
    assert torch.isfinite(a).all()
    assert not torch.equal(b, c)


def test_missing_outputs_are_predicted_and_their_residuals_left_null(spec):
    obs = make_observations(spec, 48)
    y = obs.outputs.copy()
    y[20:27, 0] = np.nan  # a sensor out for a while
    y[33, -1] = np.nan
    twin = Twin.create(spec)
    result = twin.step(Observations(obs.ts, obs.inputs, y, obs.seq))
    first = max(twin.model.context, GUESS_AFTER if twin.model.physical else twin.update_size)
    assert np.isfinite(result.predictions[first:]).all()  # the gaps are predicted too
    np.testing.assert_array_equal(np.isnan(result.residuals[first:]), np.isnan(y[first:]))
    assert all(np.isfinite(v) for v in twin.parameters().values())
    assert twin.watermark == 48
