"""The interaction step of the linear kalman bank (IMM): the mixture's moments, what it keeps of a
likely filter and gives an unlikely one, and the bank re-centering its slow filters after a step."""

import numpy as np

from tests.twin.test_kalman import arx_spec
from tests.twin.test_learners import build, feed, simulate
from twin.learners import mixing
from twin.learners.mixing import SWITCH, mix, transitions


def _bank(k=5, n=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = 2.0 + 0.1 * rng.normal(size=(k, n))
    a = rng.normal(size=(k, n, n))
    return centers, 1e-6 * a @ np.transpose(a, (0, 2, 1))


def test_transitions_stay_with_one_less_the_switch_and_rows_sum_to_one():
    p = transitions(6, 0.01)
    np.testing.assert_allclose(np.diag(p), 0.99)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert transitions(1).shape == (1, 1) and 0 < SWITCH < 0.01


def test_mix_gives_each_filter_the_moments_of_the_mixture_it_came_from():
    centers, covs = _bank()
    logprob = np.array([0.0, -1.0, -3.0, -20.0, 2.0])
    p = transitions(5, 0.05)
    mixed, mixed_covs, predicted = mix(centers, covs, logprob + 7.0, p)  # any offset
    mu = np.exp(logprob - logprob.max())
    mu /= mu.sum()
    c = p.T @ mu
    w = p * mu[:, None] / c[None, :]  # [j, i]
    for i in range(5):
        m = w[:, i] @ centers
        d = centers - m
        expected = np.einsum("j,jpq->pq", w[:, i], covs + d[:, :, None] * d[:, None, :])
        np.testing.assert_allclose(mixed[i], m, rtol=1e-12)
        np.testing.assert_allclose(mixed_covs[i], expected, rtol=1e-9, atol=1e-18)
    np.testing.assert_allclose(predicted, np.log(c) - np.log(c).max())


def test_mix_keeps_a_likely_filter_and_re_centers_an_unlikely_one():
    centers, covs = _bank()
    centers[3] += 5.0  # a filter gone astray, and unlikely
    logprob = np.array([0.0, -0.5, -1.0, -40.0, -0.2])
    mixed, mixed_covs, _ = mix(centers, covs, logprob, transitions(5))
    np.testing.assert_allclose(mixed[0], centers[0], atol=1e-3)  # kept, nearly
    added = mixed_covs[0] - covs[0]  # the others' spread, each at the odds of a switch
    assert np.linalg.eigvalsh(added).min() > -1e-15
    assert np.trace(added) < SWITCH * np.sum((centers - centers[0]) ** 2)
    others = np.delete(centers, 3, axis=0)
    assert np.abs(mixed[3] - others.mean(axis=0)).max() < 0.2  # back among the likely ones
    unchanged, same_covs, _ = mix(centers, covs, logprob, transitions(5, 0.0))
    np.testing.assert_allclose(unchanged, centers)
    np.testing.assert_allclose(same_covs, covs, atol=1e-18)


def test_kalman_bank_re_centers_its_slow_filters_after_a_step(monkeypatch):
    obs = simulate(512)
    jumped = simulate(160, K=3.0, seed=5, after=obs)
    spread = {}
    for switch in (0.0, mixing.SWITCH):
        monkeypatch.setattr(mixing, "SWITCH", switch)
        model, learner = build(arx_spec())
        feed(learner, obs, chunk=1)
        feed(learner, jumped, chunk=1)
        spread[switch] = np.abs(learner.offsets[:4]).max()  # the slowest filters, from the center
    # without the interaction the slowest filters (rates 1e-12..1e-8) remember the 512 targets
    # before the step and sit far from the others; re-centered, the bank agrees again
    assert spread[mixing.SWITCH] < 0.5 * spread[0.0]
