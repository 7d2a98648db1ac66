"""The learners on a simulated first-order plant: convergence, guard rails, robustness, drift
boost, exact state round trips and seeding, and option checking."""

import io
import math

import numpy as np
import pytest
import torch

from twin.learners import LEARNERS, make_learner, validate_learner
from twin.learners.base import (
    MIN_FRESH,
    Objective,
    recency_weights,
    regime_weights,
    robust_scale,
    weighted_median,
)
from twin.learners.together import StackedObjective
from twin.models import model_class
from twin.models.base import DTYPE, TwinModel, flat_parameters
from twin.observations import Observations, supervised
from twin.spec import LearnerSpec, ModelSpec, SpecError, TwinSpec

METHODS = ["pgpe", "gradient"]
TRUE = {"K": 2.0, "tau": 5.0, "b": 0.5}
NOISE = 0.02


def simulate(n, K=2.0, tau=5.0, b=0.5, seed=0, after=None):
    """A first-order plant y' = (K u + b - y) / tau sampled irregularly, its input held between
    samples (exact zero-order hold), with equation-error noise; continues the run `after`."""
    rng = np.random.default_rng(seed)
    t0, y_prev, u_prev, start = 1000.0, 0.0, 0.0, 0
    if after is not None:
        t0, y_prev, u_prev = after.ts[-1], after.outputs[-1, 0], after.inputs[-1, 0]
        start = int(after.seq[-1]) + 1
    dt = rng.uniform(0.5, 1.5, n)
    u = np.repeat(rng.uniform(-1.0, 1.0, n // 10 + 1), 10)[:n]  # steps every 10 samples
    y = np.empty(n)
    for i in range(n):
        a = math.exp(-dt[i] / tau)
        y_prev = a * y_prev + (1 - a) * (K * u_prev + b) + NOISE * rng.standard_normal()
        y[i], u_prev = y_prev, u[i]
    return Observations(t0 + np.cumsum(dt), u[:, None], y[:, None], np.arange(start, start + n))


def make_spec(method, bounds=None, seed=0, **options):
    return TwinSpec(
        inputs=("u",),
        outputs=("y",),
        model=ModelSpec("first_order", bounds=bounds or {}),
        learner=LearnerSpec(method, options, seed),
    )


def build(spec, y_std=1.0):
    model = model_class(spec.model.kind).from_spec(spec)
    model.set_normalization([0.0], [y_std], [0.0], [1.0])
    return model, make_learner(spec, model)


def feed(learner, obs, chunk=16):
    return [learner.update(obs[s : s + chunk]) for s in range(0, len(obs), chunk)]


@torch.no_grad()
def one_step_rmse(model, obs):
    y_ctx, u_ctx, u_now, dt, y = supervised(
        *(torch.tensor(a) for a in (obs.ts, obs.inputs, obs.outputs)), model.context
    )
    return float((model(y_ctx, u_ctx, u_now, dt) - y).square().mean().sqrt())


def log_error(model):
    v = model.named_values()
    return max(abs(math.log(v["K"] / TRUE["K"])), abs(math.log(v["tau"] / TRUE["tau"])))


# -- shared pieces --------------------------------------------------------------------------------
def test_recency_weights_halve_every_half_life_and_sum_to_one():
    w = recency_weights(100, 10.0)
    assert torch.isclose(w.sum(), torch.tensor(1.0, dtype=DTYPE))
    assert torch.isclose(w[-11] / w[-1], torch.tensor(0.5, dtype=DTYPE))
    assert bool((w[1:] > w[:-1]).all())


def test_regime_weights_drop_targets_before_a_detected_change_but_keep_min_fresh():
    seq = torch.arange(100, 200)
    assert torch.equal(regime_weights(seq, 10.0, None), recency_weights(100, 10.0))
    w = regime_weights(seq, 10.0, regime_start=150)
    assert float(w[:50].abs().sum()) == 0.0
    assert torch.allclose(w[50:], recency_weights(50, 10.0))
    recent = regime_weights(seq, 10.0, regime_start=198)  # the change began 2 targets ago
    assert int((recent > 0).sum()) == MIN_FRESH and float(recent.sum()) == pytest.approx(1.0)


def test_learner_fits_only_the_new_regime_until_it_fills_the_window():
    obs = simulate(600)
    _, learner = build(make_spec("gradient", window=128))
    learner.update(obs[:400])
    learner.on_drift(start_seq=int(obs.seq[380]))
    assert learner.regime_start == int(obs.seq[380])
    learner.update(obs[400:420])
    assert learner.state_dict()["regime_start"] == int(obs.seq[380])
    learner.update(obs[420:600])
    assert learner.regime_start is None, "forgotten once the window holds only the new regime"


def test_weighted_median_matches_numpy_for_equal_weights():
    x = torch.tensor(np.random.default_rng(1).standard_normal((101, 3)))
    w = torch.full((101,), 1 / 101, dtype=DTYPE)
    np.testing.assert_allclose(weighted_median(x, w).numpy(), np.median(x.numpy(), axis=0))


def test_robust_scale_estimates_std_and_ignores_outliers():
    rng = np.random.default_rng(2)
    r = torch.tensor(0.3 * rng.standard_normal((4000, 1)))
    w = torch.full((4000,), 1 / 4000, dtype=DTYPE)
    clean = float(robust_scale(r, w, r)[0])
    r[::50] = 1e6  # 2% wild spikes
    spiked = float(robust_scale(r, w, r)[0])
    assert 0.28 < clean < 0.32
    assert 0.28 < spiked < 0.34


def test_robust_scale_is_floored_on_a_perfect_fit():
    y = torch.linspace(0, 10, 50, dtype=DTYPE)[:, None]
    w = torch.full((50,), 1 / 50, dtype=DTYPE)
    s = robust_scale(torch.zeros_like(y), w, y)
    assert float(s[0]) == pytest.approx(1e-6 * float(y.std(correction=0)))


# -- learning -------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_learner_reduces_the_loss_and_converges_near_the_true_parameters(method):
    obs = simulate(1600)
    model, learner = build(make_spec(method))
    error_before = one_step_rmse(model, obs[-400:])
    reports = feed(learner, obs[:1200])
    assert all(r.loss_after < r.loss_before for r in reports[:5])
    assert one_step_rmse(model, obs[-400:]) < min(0.1 * error_before, 1.25 * NOISE)
    assert log_error(model) < 0.1
    assert abs(model.named_values()["b"] - TRUE["b"]) < 0.1


def test_pgpe_calibrates_a_model_without_gradients():
    """A model whose forward is cut from autograd: PGPE needs only its predictions."""

    class Opaque(model_class("first_order")):
        kind = "opaque_first_order"

        def forward(self, y_ctx, u_ctx, u_now, dt):
            return super().forward(y_ctx, u_ctx, u_now, dt).detach()

    obs = simulate(800)
    model = Opaque()
    learner = LEARNERS["pgpe"](model, {}, seed=0)
    before = log_error(model)
    feed(learner, obs)
    assert log_error(model) < 0.25 * before


@pytest.mark.parametrize("method", METHODS)
def test_bounds_are_never_left_by_the_center_or_any_sample(method, monkeypatch):
    spec = make_spec(method, bounds={"K": (1.0, 1.5), "tau": (2.0, 20.0)})
    model, learner = build(spec)
    low, high = model.raw_bounds()
    seen = []

    def checking(original):
        def checked(self, thetas):
            seen.append(bool(((thetas >= low) & (thetas <= high)).all()))
            return original(self, thetas)

        return checked

    # populations are scored one twin at a time or several together (pgpe: StackedObjective)
    for scorer in (Objective, StackedObjective):
        monkeypatch.setattr(scorer, "losses", checking(scorer.losses))
    obs = simulate(480)
    for s in range(0, 480, 16):
        learner.update(obs[s : s + 16])
        theta = flat_parameters(model)
        assert bool(((theta >= low) & (theta <= high)).all())
    assert model.named_values()["K"] == pytest.approx(1.5)  # the truth (2) lies outside
    assert all(seen) and (len(seen) > 0) == (method == "pgpe")


@pytest.mark.parametrize("method", METHODS)
def test_a_single_huge_spike_moves_the_parameters_far_less_than_without_huber(method):
    obs = simulate(1200)
    moves = {}
    for huber in (1.345, 1e9):  # 1e9: plain least squares
        # 16-observation updates with the lr that went with them
        model, learner = build(make_spec(method, huber=huber, lr=0.02))
        feed(learner, obs[:1024])
        settled = flat_parameters(model)
        spiked = Observations(obs.ts, obs.inputs, obs.outputs.copy(), obs.seq)
        spiked.outputs[1030] += 1000 * NOISE
        moves[huber] = 0.0
        for s in range(1024, 1200, 16):
            learner.update(spiked[s : s + 16])
            moves[huber] = max(moves[huber], float((flat_parameters(model) - settled).norm()))
    assert moves[1.345] < 0.3 * moves[1e9]


@pytest.mark.parametrize("method", METHODS)
def test_on_drift_widens_the_search_then_settles(method):
    obs = simulate(1024)
    adam = {"drift": 0, "optimizer": "adam"} if method == "gradient" else {}  # steps with lr
    model, learner = build(make_spec(method, boost=4.0, boost_updates=10, **adam))
    feed(learner, obs)
    calm = learner.summary()
    learner.on_drift()
    widened = learner.summary()
    assert widened["lr"] == pytest.approx(4.0 * calm["lr"])
    assert widened["boost_left"] == 10
    if method == "pgpe":
        assert widened["sigma"] > 3.0 * calm["sigma"]
    jumped = simulate(160, K=3.0, seed=5, after=obs)
    reports = feed(learner, jumped)
    settled = learner.summary()
    assert reports[0].lr == pytest.approx(4.0 * calm["lr"])
    assert settled["boost_left"] == 0 and settled["lr"] == pytest.approx(calm["lr"])
    if method == "pgpe":
        assert settled["sigma"] < widened["sigma"]


@pytest.mark.parametrize("method", METHODS)
def test_on_drift_re_converges_faster_after_an_abrupt_change(method):
    obs = simulate(1024)
    jumped = simulate(64, K=3.0, seed=5, after=obs)
    errors = {}
    for boosted in (False, True):
        # 16-observation updates with the defaults that went with them (lr 0.02, 20 boosted)
        model, learner = build(make_spec(method, lr=0.02, boost_updates=20))
        feed(learner, obs)
        if boosted:  # told where the change began, as the twin's detector tells it
            learner.on_drift(start_seq=int(jumped.seq[0]))
        errors[boosted] = []
        for s in range(0, 64, 16):
            learner.update(jumped[s : s + 16])
            errors[boosted].append(abs(math.log(model.named_values()["K"] / 3.0)))
    assert np.mean(errors[True]) < 0.5 * np.mean(errors[False])


def test_gauss_newton_reports_no_learning_rate():
    """Its steps solve for the window's minimum: an `lr` in its summary would be a figure that
    sets nothing."""
    for optimizer, reported in (("gauss_newton", False), ("adam", True)):
        model, learner = build(make_spec("gradient", optimizer=optimizer, drift=1e-4))
        reports = feed(learner, simulate(128))
        assert ("lr" in learner.summary()) is reported
        assert (reports[-1].to_dict()["lr"] is not None) is reported


@pytest.mark.parametrize(
    ("method", "options", "momentum"),
    [
        ("pgpe", {}, "m"),
        ("pgpe", {"optimizer": "clipup"}, "velocity"),
        ("gradient", {"drift": 0, "optimizer": "adam"}, "m"),
    ],
)
def test_on_drift_drops_the_optimizers_momentum_and_keeps_its_scale(method, options, momentum):
    model, learner = build(make_spec(method, **options))
    feed(learner, simulate(512))
    before = learner.optimizer.state_dict()
    assert torch.count_nonzero(before[momentum]) > 0
    learner.on_drift()
    after = learner.optimizer.state_dict()
    assert torch.count_nonzero(after[momentum]) == 0
    assert after["t"] == before["t"]  # bias corrections go on: the next steps start small
    if "v" in before:
        assert torch.equal(after["v"], before["v"])


# -- contract -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "options"),
    [("pgpe", {}), ("pgpe", {"optimizer": "clipup", "smoothness": 0.1}), ("gradient", {})],
)
def test_state_round_trip_gives_an_identical_next_update(method, options):
    obs = simulate(400)
    spec = make_spec(method, seed=3, **options)
    model, learner = build(spec)
    feed(learner, obs[:336])
    learner.on_drift()
    learner.update(obs[336:352])
    buf = io.BytesIO()
    torch.save(learner.state_dict(), buf)
    fresh_model, restored = build(spec)
    restored.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=False))
    assert restored.summary() == learner.summary()
    for s in range(352, 400, 16):
        a, b = learner.update(obs[s : s + 16]), restored.update(obs[s : s + 16])
        assert a == b
    assert torch.equal(flat_parameters(model), flat_parameters(fresh_model))
    assert all(
        np.array_equal(x, y)
        for x, y in zip(learner.context_arrays(), restored.context_arrays(), strict=True)
    )


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_gives_bit_identical_parameters(method):
    obs = simulate(320)
    runs = []
    for _ in range(2):
        model, learner = build(make_spec(method, seed=11))
        feed(learner, obs)
        runs.append(flat_parameters(model))
    assert torch.equal(runs[0], runs[1])


def test_different_seeds_give_different_pgpe_runs():
    obs = simulate(320)
    runs = []
    for seed in (1, 2):
        model, learner = build(make_spec("pgpe", seed=seed))
        feed(learner, obs)
        runs.append(flat_parameters(model))
    assert not torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("method", METHODS)
def test_observations_are_neither_mutated_nor_aliased(method):
    obs = simulate(64)
    kept = {f: getattr(obs, f).copy() for f in ("ts", "inputs", "outputs", "seq")}
    _, learner = build(make_spec(method))
    learner.update(obs[:48])
    learner.observe(obs[48:])
    for f, value in kept.items():
        np.testing.assert_array_equal(getattr(obs, f), value)
    before = learner.context_arrays()
    obs.outputs[:] = -1.0  # the caller reuses its buffers
    obs.ts[:] = 0.0
    for x, y in zip(before, learner.context_arrays(), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("method", METHODS)
def test_window_is_bounded_and_observe_does_not_learn(method):
    obs = simulate(200)
    model, learner = build(make_spec(method, window=32))
    first = learner.update(obs[:1])
    assert first.window == 0 and math.isnan(first.loss_before)
    assert first.to_dict()["loss_before"] is None
    before = flat_parameters(model)
    learner.observe(obs[1:150])
    assert torch.equal(flat_parameters(model), before)
    report = learner.update(obs[150:200])
    assert report.window == 32 and report.n_observations == 50
    assert learner.summary()["window"] == 32 + model.context
    y, u, ts = learner.context_arrays()
    assert y.shape == (model.context, 1) and u.shape == (model.context, 1)
    assert ts[-1] == obs.ts[-1] and y[-1, 0] == obs.outputs[-1, 0]


def test_smoothness_holds_the_parameters_back():
    obs = simulate(160)
    steps = {}
    for smoothness in (0.0, 100.0):
        _, learner = build(make_spec("gradient", smoothness=smoothness, lr=0.05))
        steps[smoothness] = sum(r.step for r in feed(learner, obs))
    assert steps[100.0] < 0.5 * steps[0.0]


def test_default_method_comes_from_the_model_kind():
    spec = TwinSpec.from_dict(
        {"inputs": ["u"], "outputs": ["y"], "model": {"kind": "first_order"}, "learner": {}}
    )
    model = model_class("first_order").from_spec(spec)
    assert make_learner(spec, model).method == model_class("first_order").default_learner()


# -- options --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("learner", "field"),
    [
        ({"method": "pgpe", "bogus": 1}, "learner.bogus"),
        ({"method": "gradient", "popsize": 8}, "learner.popsize"),
        ({"method": "pgpe", "clip": 1.0}, "learner.clip"),
        ({"method": "pgpe", "window": 4}, "learner.window"),
        ({"method": "pgpe", "window": 64.5}, "learner.window"),
        ({"method": "gradient", "lr": -0.1}, "learner.lr"),
        ({"method": "gradient", "lr": "fast"}, "learner.lr"),
        ({"method": "gradient", "iterations": True}, "learner.iterations"),
        ({"method": "pgpe", "half_life": 0}, "learner.half_life"),
        ({"method": "pgpe", "smoothness": -1}, "learner.smoothness"),
        ({"method": "pgpe", "update_size": 0}, "learner.update_size"),
        ({"method": "pgpe", "boost": 0.5}, "learner.boost"),
        ({"method": "pgpe", "huber": float("nan")}, "learner.huber"),
        ({"method": "pgpe", "optimizer": "sgd"}, "learner.optimizer"),
        ({"method": "pgpe", "sigma": 0.9}, "learner.sigma"),
        ({"method": "pgpe", "sigma_min": 0.2, "sigma_max": 0.1}, "learner.sigma_min"),
        ({"popsize": 0}, "learner.popsize"),
    ],
)
def test_invalid_options_raise_spec_errors_naming_the_option(learner, field):
    data = {"inputs": ["u"], "outputs": ["y"], "model": {"kind": "first_order"}, "learner": learner}
    with pytest.raises(SpecError) as err:
        TwinSpec.from_dict(data)
    assert err.value.field == field
    spec = TwinSpec(("u",), ("y",), ModelSpec("first_order"), LearnerSpec(**_split(learner)))
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        validate_learner(spec)


def test_valid_options_are_accepted_and_defaults_are_not_shared():
    options = {"window": 64, "lr": 1, "max_speed": 0.2, "optimizer": "clipup", "popsize": 4}
    spec = make_spec("pgpe", **options)
    validate_learner(spec)
    (_, one), (_, two) = build(spec), build(spec)
    assert one.options is not two.options and one.window is not two.window
    assert spec.learner.options == options


def _split(learner: dict) -> dict:
    rest = dict(learner)
    return {"method": rest.pop("method", None), "options": rest}


def test_learner_works_with_any_twin_model():
    """The contract needs only the TwinModel interface: a hand-written model is calibrated too."""

    class Gain(TwinModel):
        kind = "gain"

        def __init__(self):
            super().__init__(1, 1)
            self.log_k = torch.nn.Parameter(torch.zeros((), dtype=DTYPE))

        def forward(self, y_ctx, u_ctx, u_now, dt):
            return self.log_k.exp() * u_now  # (B, 1)

    rng = np.random.default_rng(4)
    u = rng.uniform(-1, 1, (400, 1))
    obs = Observations(np.arange(400.0), u, 3.0 * u + NOISE * rng.standard_normal((400, 1)))
    for method in METHODS:
        model = Gain()
        # 16-observation updates with the lr that went with them
        feed(LEARNERS[method](model, {"lr": 0.02}, seed=0), obs)
        assert float(model.log_k.detach().exp()) == pytest.approx(3.0, rel=0.05)
