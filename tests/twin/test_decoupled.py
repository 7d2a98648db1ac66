"""The dekf learner (a bank of decoupled extended Kalman filters over an mlp's weights): its
blocks, the scaler's re-expression within them, learning, determinism and exact checkpoints."""

import numpy as np
import pytest
import torch

from tests.twin.test_checkpoint import assert_same
from twin.learners.decoupled import RATES, Blocks, DecoupledKalmanLearner, parameter_groups
from twin.models.base import flat_parameters, load_flat
from twin.models.mlp import MLP
from twin.observations import Observations
from twin.replica import Twin
from twin.spec import TwinSpec

SPEC = {
    "inputs": ["u"],
    "outputs": ["y"],
    "model": {"kind": "mlp", "na": 1, "nb": 1, "hidden": 8, "layers": 2},
    "learner": {"method": "dekf"},
}


def plant(n: int, seed: int = 0) -> Observations:
    """A Hammerstein plant with a noisy output, offset from zero and scaled (the twin's channel
    scaler then moves, and the bank must follow it)."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(n, 1))
    y = np.zeros((n, 1))
    for t in range(1, n):
        y[t] = 0.8 * y[t - 1] + np.tanh(2 * u[t - 1])
    y = 20.0 + 3.0 * y + 0.05 * rng.normal(size=(n, 1))
    return Observations(np.arange(n, dtype=float), u, y)


def run(twin: Twin, obs: Observations, chunk: int = 5) -> np.ndarray:
    return np.concatenate(
        [twin.step(obs[s : s + chunk]).predictions for s in range(0, len(obs), chunk)]
    )


def test_the_groups_are_the_neurons_and_cover_every_weight_once():
    model = MLP(2, 1, na=1, nb=1, hidden=4, layers=2)
    groups = parameter_groups(model)
    flat = np.concatenate(groups)
    assert sorted(flat.tolist()) == list(range(flat_parameters(model).numel()))
    first = model.net[0]
    assert len(groups) == 4 + 4 + 1  # one per neuron, the output's included
    assert len(groups[0]) == first.weight.shape[1] + 1 and len(groups[-1]) == 4 + 1
    blocks = Blocks(groups)
    assert [ix.shape for ix in blocks.index] == [(5, 5), (4, first.weight.shape[1] + 1)]


def test_the_scalers_re_expression_acts_within_each_group_and_keeps_the_function():
    model = MLP(1, 1, na=2, nb=1, hidden=4, layers=1, seed=3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3)
    old = tuple(t.clone() for t in (model.y_mean, model.y_std, model.u_mean, model.u_std))
    sets = torch.randn(3, flat_parameters(model).numel(), dtype=torch.float64)
    y_ctx, u_ctx = torch.randn(6, 2, 1, dtype=torch.float64), torch.randn(6, 2, 1)
    u_now, dt = torch.randn(6, 1, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    before = []
    for row in sets:
        load_flat(model, row)
        before.append(model(y_ctx, u_ctx.double(), u_now, dt))
    model.set_normalization(
        torch.tensor([2.0]), torch.tensor([3.0]), torch.tensor([-1.0]), torch.tensor([0.5]),
        keep_function=False,
    )  # fmt: skip
    after = model.reexpressed(sets, old)
    for row, want in zip(after, before, strict=True):
        load_flat(model, row)
        torch.testing.assert_close(model(y_ctx, u_ctx.double(), u_now, dt), want)
    # a coordinate moves only coordinates of its own group
    group_of = np.empty(sets.shape[1], dtype=int)
    for g, ix in enumerate(parameter_groups(model)):
        group_of[ix] = g
    zero = model.reexpressed(torch.zeros(1, sets.shape[1], dtype=torch.float64), old)[0]
    for j in range(sets.shape[1]):
        unit = torch.zeros(1, sets.shape[1], dtype=torch.float64)
        unit[0, j] = 1.0
        moved = np.flatnonzero((model.reexpressed(unit, old)[0] - zero).numpy() - unit[0].numpy())
        assert (group_of[moved] == group_of[j]).all()


def test_dekf_learns_a_nonlinear_plant_and_estimates_its_noise():
    obs = plant(700)
    twin = Twin.create(TwinSpec.from_dict(SPEC))
    preds = run(twin, obs)
    late = slice(400, None)
    err = np.mean((preds[late] - obs.outputs[late]) ** 2)
    persistence = np.mean((obs.outputs[399:-1] - obs.outputs[400:]) ** 2)
    assert err < 0.2 * persistence
    learner = twin.learner
    assert isinstance(learner, DecoupledKalmanLearner)
    assert learner.summary()["drift_rate"] in RATES
    assert 0.02 < learner.summary()["noise_std"] < 0.5  # the true noise: 0.05 (3x scaled: 0.15)


def test_dekf_is_deterministic_and_its_checkpoint_round_trips_exactly():
    obs = plant(300, seed=1)
    one, two = (Twin.create(TwinSpec.from_dict(SPEC)) for _ in range(2))
    np.testing.assert_array_equal(run(one, obs[:200]), run(two, obs[:200]))
    restored = Twin.from_bytes(one.to_bytes())
    assert_same(one.state_dict(), restored.state_dict())
    np.testing.assert_array_equal(run(one, obs[200:]), run(restored, obs[200:]))
    assert one.parameters() == restored.parameters()


@pytest.mark.parametrize("drift", [1e-5, "auto"])
def test_dekf_stays_finite_and_a_lone_filter_reopens_at_an_alarm(drift):
    spec = {**SPEC, "learner": {"method": "dekf", "drift": drift}}
    twin = Twin.create(TwinSpec.from_dict(spec))
    run(twin, plant(200, seed=2))
    learner = twin.learner
    assert len(learner.rates) == (1 if drift != "auto" else len(RATES))
    before = [c.diagonal(axis1=-2, axis2=-1).copy() for c in learner.covariances]
    learner.on_drift(150)
    for c, b in zip(learner.covariances, before, strict=True):
        diag = c.diagonal(axis1=-2, axis2=-1)
        assert np.isfinite(c).all() and (diag <= learner.options["prior"] + 1e-12).all()
        if drift != "auto":
            assert (diag >= b).all() and (diag > b).any()
