"""The random-walk residual model (`learner.drift`) and Gauss-Newton steps: on a model linear in
its parameters, the window fit is the Kalman filter's estimate."""

import io
import math

import numpy as np
import pytest
import torch

from twin.learners import LEARNERS, make_learner
from twin.learners.base import DRIFT_EVERY
from twin.learners.objective import Objective
from twin.learners.walk import DriftRate
from twin.models import model_class
from twin.models.base import flat_parameters, load_flat
from twin.observations import Observations
from twin.plants import Drift, FirstOrderPlant, LinearPlant
from twin.replica import Twin
from twin.spec import LearnerSpec, ModelSpec, SpecError, TwinSpec


def arx_learner(n: int = 120, seed: int = 0, **options):
    """An ARX(1,1) learner whose window holds n observations of a plant with drifting b."""
    spec = TwinSpec(
        inputs=("u",),
        outputs=("y",),
        model=ModelSpec("arx", options={"na": 1, "nb": 1}),
        learner=LearnerSpec("gradient", {"window": n, **options}, seed),
    )
    model = model_class("arx").from_spec(spec)
    learner = make_learner(spec, model)
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(n + 1)
    b = 0.8 + np.cumsum(0.02 * rng.standard_normal(n + 1))
    y = np.zeros(n + 1)
    for t in range(1, n + 1):
        y[t] = 0.6 * y[t - 1] + b[t] * u[t - 1] + 0.3 + 0.1 * rng.standard_normal()
    ts = np.arange(n + 1, dtype=float)
    learner.observe(Observations(ts, u[:, None], y[:, None], np.arange(n + 1)))
    model.true_b = b[-1]  # the plant's gain now
    return model, learner


def kalman_last_state(rows: np.ndarray, targets: np.ndarray, q: float) -> np.ndarray:
    """The Kalman filter's final estimate for targets = rows . z_t + N(0, 1), z a random walk
    with N(0, q I) steps, from a flat prior."""
    p = rows.shape[1]
    z, cov = np.zeros(p), 1e8 * np.eye(p)
    for t, (x, y) in enumerate(zip(rows, targets, strict=True)):
        if t:
            cov = cov + q * np.eye(p)
        gain = cov @ x / (x @ cov @ x + 1.0)
        z = z + gain * (y - x @ z)
        cov = cov - np.outer(gain, x @ cov)
    return z


@pytest.mark.parametrize("q", [0.0, 1e-4, 1e-2])
def test_gauss_newton_on_a_linear_model_lands_on_the_kalman_estimate(q):
    opts = {"drift": q, "half_life": 1e9, "huber": 1e6, "optimizer": "gauss_newton"}
    model, learner = arx_learner(iterations=200, **opts)  # damped steps: many to converge
    objective = Objective(model, learner.window, 1e9, learner.options, drift=q)
    jac = objective.jacobian()[:, 0, :].numpy()  # (T, P)
    z0 = objective.z_prev.numpy()
    with torch.no_grad():
        e0 = (objective.y_scaled - objective.predict(objective.theta_prev) / objective.s)[:, 0]
    expected = kalman_last_state(jac, e0.numpy() + jac @ z0, q)
    theta, _ = learner._learn(objective, 0.0, 1.0)
    np.testing.assert_allclose((theta / objective.scale).numpy(), expected, rtol=1e-6, atol=1e-8)


def fit(model, learner) -> None:
    objective = Objective(model, learner.window, 1e9, learner.options, drift=learner.drift())
    load_flat(model, learner._learn(objective, 0.0, 1.0)[0])


def test_drift_follows_a_drifting_gain():
    """Without drift the window's fit is its average gain; with the plant's own drift rate
    (the gain's random-walk variance 4e-4 per observation), the gain now (over 8 plants)."""
    errors = {0.0: [], 4e-4: []}
    for seed in range(8):
        for q, errs in errors.items():
            opts = {"half_life": 1e9, "optimizer": "gauss_newton", "iterations": 3, "huber": 1e6}
            model, learner = arx_learner(n=300, seed=seed, **opts, drift=0.0)
            fit(model, learner)  # so that the residual scale is the noise's
            learner.options["drift"] = q
            fit(model, learner)
            errs.append(abs(model.named_values()["B1[y,u]"] - model.true_b))
    assert np.mean(errors[4e-4]) < 0.5 * np.mean(errors[0.0])


def test_without_drift_the_walk_loss_is_the_plain_loss():
    """q = 0 with flat weights whitens by the identity: the same loss as without the model."""
    model, learner = arx_learner(half_life=1e9)
    plain = Objective(model, learner.window, 1e9, learner.options, drift=0.0)
    walked = Objective(model, learner.window, 1e9, learner.options, drift=1e-12)
    theta = flat_parameters(model).to(torch.float64) + 0.1
    assert float(walked.loss(theta)) == pytest.approx(float(plain.loss(theta)), rel=1e-6)
    thetas = theta + 0.05 * torch.randn(5, theta.shape[0], dtype=torch.float64)
    np.testing.assert_allclose(walked.losses(thetas), plain.losses(thetas), rtol=1e-6)


def test_gauss_newton_never_raises_the_loss():
    model, learner = arx_learner(optimizer="gauss_newton", drift=1e-3)
    half_life = learner.options["half_life"]
    objective = Objective(model, learner.window, half_life, learner.options, drift=1e-3)
    _, after = learner._learn(objective, 0.0, 1.0)
    assert after <= objective.center_loss


def walk_window(q: float, n: int = 400, p: int = 3, seed: int = 0):
    """(n, 1, p) regressors and (n, 1) targets x . z_t + N(0, 1), z a random walk of rate q."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, p))
    z = np.cumsum(np.sqrt(q) * rng.standard_normal((n, p)), axis=0)
    y = (x * z).sum(axis=1) + rng.standard_normal(n)
    return torch.tensor(x[:, None, :]), torch.tensor(y[:, None])


@pytest.mark.parametrize("q", [1e-4, 1e-3])
def test_drift_rate_finds_the_walks_rate(q):
    rate = DriftRate()
    for seed in range(20):
        jac, resid = walk_window(q, seed=seed)
        rate.observe(jac, resid, torch.ones(resid.shape[0], dtype=torch.float64))
    assert q / 2 < rate.q < 2 * q


def test_drift_rate_of_still_parameters_is_negligible():
    rate = DriftRate()
    for seed in range(20):
        jac, resid = walk_window(0.0, seed=seed)
        rate.observe(jac, resid, torch.ones(resid.shape[0], dtype=torch.float64))
    assert rate.q < 1e-5  # a parameter moving 1e-5 per observation in 400 hardly moves


def test_a_window_of_collinear_regressors_informs_nothing_and_raises_nothing():
    """Two parameters whose Jacobian columns are equal and large (two outputs of an autonomous
    arx moving as one): the ridge is lost in rounding and the Gram matrix is exactly singular.
    The window is left out of the estimate; the update that asked for it goes on."""
    gen = torch.Generator().manual_seed(0)
    column = 1e9 * torch.randn(200, 1, 1, generator=gen, dtype=torch.float64)
    jac = torch.cat([column, column], dim=2)  # (T, n_out, P)
    resid = torch.randn(200, 1, generator=gen, dtype=torch.float64)
    rate = DriftRate()
    rate.observe(jac, resid, torch.ones(200, dtype=torch.float64))
    assert rate.q is None
    jac, resid = walk_window(1e-3, seed=0)
    rate.observe(jac, resid, torch.ones(resid.shape[0], dtype=torch.float64))
    assert rate.q is not None


def test_drift_rate_waits_for_an_informative_window():
    rate = DriftRate()
    jac, resid = walk_window(1e-3, n=40)
    rate.observe(jac, resid, torch.ones(40, dtype=torch.float64))
    assert rate.q is None


def test_drift_options_accept_auto_and_derive_window_and_half_life():
    _, learner = arx_learner(drift="auto")
    assert learner.options["window"] == 120  # given explicitly by arx_learner
    assert learner.options["half_life"] == math.inf
    spec = LearnerSpec("gradient", {"drift": 1e-5})
    options = LEARNERS["gradient"].resolve_options(spec.options)
    assert (options["window"], options["half_life"]) == (512, math.inf)
    plain = LEARNERS["gradient"].resolve_options({})
    assert (plain["window"], plain["half_life"]) == (256, 64.0)
    with pytest.raises(SpecError, match=r"learner\.drift.*'auto'"):
        LEARNERS["gradient"].resolve_options({"drift": "fast"})


def test_auto_drift_state_round_trips_exactly():
    opts = {"drift": "auto", "optimizer": "gauss_newton", "window": 200}
    model, learner = arx_learner(n=200, seed=2, **opts)
    obs = Observations(
        *(a[-1:] for a in (np.array([200.0]), np.ones((1, 1)), np.zeros((1, 1)))), np.array([201])
    )
    for _ in range(DRIFT_EVERY + 1):  # the estimate has had a window
        learner.update(obs)
        obs = Observations(obs.ts + 1, obs.inputs, obs.outputs + 0.01, obs.seq + 1)
    assert learner.drift_rate.q is not None
    assert learner.summary()["drift_rate"] == learner.drift_rate.q > 0
    buf = io.BytesIO()
    torch.save(learner.state_dict(), buf)
    model2, restored = arx_learner(n=200, seed=2, **opts)
    restored.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=False))
    for _ in range(DRIFT_EVERY + 1):
        assert learner.update(obs) == restored.update(obs)
        obs = Observations(obs.ts + 1, obs.inputs, obs.outputs - 0.01, obs.seq + 1)
    assert learner.drift_rate.q == restored.drift_rate.q
    assert torch.equal(flat_parameters(model), flat_parameters(model2))


WALK = {"method": "gradient", "optimizer": "gauss_newton", "drift": "auto"}  # its defaults here
FORGETTING = {"method": "gradient", "optimizer": "adam", "drift": 0}


def track(plant, learner: dict, n: int, seed: int):
    """A twin fed the plant's run in update_size chunks; its one-step predictions (N, n_out)."""
    sim = plant.simulate(n, seed=seed)
    spec = sim.spec_dict()
    spec["learner"] = learner
    twin = Twin.create(TwinSpec.from_dict(spec))
    preds = [twin.step(sim.observations[s : s + 4]).predictions for s in range(0, n, 4)]
    return sim, np.vstack(preds), twin


@pytest.mark.slow
def test_auto_drift_tracks_a_random_walk_closer_than_exponential_forgetting():
    """The excess error over the true parameters' predictions, as in bench/tracking.py; one
    seed's ratio ranges 0.66-0.99, so four are averaged."""
    walk = {"a": [Drift.random_walk(0.003)], "b": [Drift.random_walk(0.004)]}
    plant = LinearPlant(a=0.6, b=0.8, c=0.3, drift=walk)
    ratios = []
    for seed in range(4):
        excess = {}
        for name, learner in (("forgetting", FORGETTING), ("walk", WALK)):
            sim, preds, twin = track(plant, learner, 3000, seed=seed)
            excess[name] = float(np.nanmean((preds[200:] - sim.oracle[200:]) ** 2))
        ratios.append(excess["walk"] / excess["forgetting"])
        # the plant's walk in the twin's scaled coordinates is a few 1e-6 per observation
        assert 1e-6 < twin.learner.drift_rate.q < 2e-5
    assert np.mean(ratios) < 0.95, ratios


@pytest.mark.slow
def test_auto_drift_on_a_stationary_plant_converges_like_a_long_memory():
    """No drift: the estimated rate is small, the fit keeps its memory and converges."""
    plant = FirstOrderPlant(noise=0.005)
    sim, _, twin = track(plant, WALK, 2000, seed=3)
    assert twin.learner.drift_rate.q < 1e-6
    found = twin.parameters()
    for name in ("K", "tau"):
        truth = sim.params[name][-1]
        assert abs(found[name] - truth) / truth < 0.02, (name, found[name], truth)


def test_gradient_defaults_to_the_drift_model_on_small_models_only():
    small = LEARNERS["gradient"].resolve_options({}, n_params=3)
    assert (small["drift"], small["optimizer"], small["window"]) == ("auto", "gauss_newton", 512)
    large = LEARNERS["gradient"].resolve_options({}, n_params=300)
    assert (large["drift"], large["optimizer"], large["half_life"]) == (0.0, "adam", 64.0)
    given = LEARNERS["gradient"].resolve_options({"drift": 1e-4}, n_params=300)
    assert given["optimizer"] == "gauss_newton"
    assert LEARNERS["pgpe"].resolve_options({}, n_params=3)["drift"] == 0.0


@pytest.mark.parametrize("n_out", [1, 2])
def test_the_walks_whitening_by_its_structure_is_the_cholesky_factors(n_out):
    """`walk_whiten`'s O(n P^2) pass gives what the dense Cholesky factor of the same covariance
    does, at every rate of the grid, with down-weighted and masked (zero) Jacobian rows."""
    from twin.learners.walk import LOG_RATES, _walk_cholesky, walk_whiten

    g = torch.Generator().manual_seed(3)
    n, p = 120, 3
    jac = torch.randn(n, n_out, p, generator=g, dtype=torch.float64)
    jac[10:14, 0] = 0.0  # targets of the first output that were not measured
    weights = torch.rand(n, generator=g, dtype=torch.float64) + 0.1
    y = torch.randn(n_out, n, 2, generator=g, dtype=torch.float64)
    rates = (10.0**LOG_RATES).numpy()
    d = (weights.max() / weights).numpy()
    white, logdet = walk_whiten(jac.permute(1, 0, 2).numpy(), d, rates, y.numpy())
    assert white.shape == (len(rates), n_out, n, 2) and logdet.shape == (len(rates), n_out)
    for r, q in enumerate(rates):
        chol = _walk_cholesky(jac, weights, float(q))  # (n_out, n, n)
        dense = torch.linalg.solve_triangular(chol, y, upper=False)
        scale = dense.abs().max()
        assert torch.allclose(torch.from_numpy(white[r]), dense, rtol=0, atol=1e-11 * scale)
        dense_logdet = 2 * chol.diagonal(dim1=1, dim2=2).log().sum(dim=1)
        assert np.allclose(logdet[r], dense_logdet.numpy(), rtol=1e-11, atol=0)


def test_the_walks_factor_by_its_blocks_is_the_dense_cholesky_factor():
    """`RandomWalk`'s factor (`walk_factor`, O(n P^2) a row) equals the dense Cholesky factor
    of the same covariance within rounding, on random windows, recency weights and rates, with
    several outputs, unmeasured (zero) Jacobian rows and targets left out before a change; and
    a window's factor is the same, bit for bit, alone or found with other windows."""
    from twin.learners.walk import BLOCK, RandomWalk, _walk_cholesky, walk_factors

    g = torch.Generator().manual_seed(5)
    cases = []
    for n, n_out, p in [(40, 1, 2), (2 * BLOCK + 17, 3, 3), (5 * BLOCK, 2, 12)]:
        for q in (1e-8, 1e-4, 1e-2, 0.3):
            jac = torch.randn(n, n_out, p, generator=g, dtype=torch.float64)
            jac[5:9, 0] = 0.0  # targets of the first output that were not measured
            jac[:, -1, -1] = 0.0  # a parameter the last output does not depend on
            weights = torch.rand(n, generator=g, dtype=torch.float64) + 0.05
            weights[:3] = 0.0  # before a detected change: left out
            cases.append((jac, weights, q))
    for jac, weights, q in cases:
        keep = weights > 0
        dense = _walk_cholesky(jac[keep], weights[keep], q)
        walk = RandomWalk(jac, weights, q)
        n = dense.shape[-1]
        assert walk.chol.shape[-1] % 8 == 0 and walk.chol.shape[-1] - n < 8
        assert torch.equal(walk.chol[:, n:, :n], torch.zeros_like(walk.chol[:, n:, :n]))
        err = (walk.chol[:, :n, :n] - dense).abs().max() / dense.abs().max()
        assert err < 1e-12, (jac.shape, q, float(err))
        x = torch.randn(jac.shape[1], int(keep.sum()), 2, generator=g, dtype=torch.float64)
        white = torch.linalg.solve_triangular(dense, x, upper=False)
        assert torch.allclose(walk.whiten(x), white, rtol=0, atol=1e-9 * white.abs().max())
    together = walk_factors(*(list(c) for c in zip(*cases, strict=True)))
    for (jac, weights, q), chol in zip(cases, together, strict=True):
        assert torch.equal(chol, RandomWalk(jac, weights, q).chol)
