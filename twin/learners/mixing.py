"""Interacting multiple models for the linear `kalman` bank (Blom & Bar-Shalom 1988, "The
interacting multiple model algorithm for systems with Markovian switching coefficients", IEEE
TAC 33(8)).

The bank's filters differ only in their random-walk rate. Taken as one model whose rate switches
between the grid's values as a Markov chain (stay with probability 1 - eps, else move to any
other rate alike), the exact filter would carry a mixture over every rate history; IMM keeps one
Gaussian per rate and, before each target, re-centers each filter on the mixture of the bank
weighted by the probability that the chain came from each filter into it. A filter the data
favour keeps its own state; an unlikely one restarts from the likely ones' state (and their
spread), so a fast filter's center does not wander along the directions slow inputs leave
unexcited while it is out of favour, and it is ready when a step makes it the likely one.

The model probabilities are the chain's prediction times each filter's likelihood of the
target; where the forgotten likelihoods of dynamic model averaging flattened the weights by a
power, the chain mixes them toward uniform by eps.
"""

from __future__ import annotations

import numpy as np

SWITCH = 1e-4  # probability per target that the rate moves to another of the grid


def transitions(k: int, switch: float | None = None) -> np.ndarray:
    """(K, K) Markov matrix p[j, i] = P(filter i next | filter j now): stay with 1 - switch
    (default SWITCH), else any other filter alike."""
    switch = SWITCH if switch is None else switch
    if k == 1:
        return np.ones((1, 1))
    p = np.full((k, k), switch / (k - 1))
    np.fill_diagonal(p, 1.0 - switch)
    return p


def mix(
    centers: np.ndarray, covariances: np.ndarray, logprob: np.ndarray, p: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IMM's interaction step: centers (K, P), covariances (K, P, P) and the log probabilities
    (K,) of the filters (any offset) under the transition matrix p (K, K) -> the mixed centers
    and covariances, and the predicted log probabilities log(p' mu) (normalized to max 0)."""
    finite = np.where(np.isfinite(logprob), logprob, -np.inf)
    mu = np.exp(finite - finite.max())
    mu /= mu.sum()
    joint = p * mu[:, None]  # (K, K) [j, i]: from j, into i
    c = joint.sum(axis=0)  # (K,) predicted probability of each filter
    w = joint / np.maximum(c, 1e-300)[None, :]  # (K, K) [j, i] mixing weights, columns sum to 1
    # sum_j w_ji (P_j + (z_j - m_i)(z_j - m_i)') = sum_j w_ji (P_j + d_j d_j') - e_i e_i', with
    # d_j = z_j - z_bar and e_i = m_i - z_bar about the bank's mean (no cancellation beyond the
    # filters' spread): one (K, K) x (K, P^2) product
    k, n = centers.shape
    d = centers - mu @ centers
    e = w.T @ d  # (K, P)
    second = covariances + d[:, :, None] * d[:, None, :]
    covs = (w.T @ second.reshape(k, n * n)).reshape(k, n, n) - e[:, :, None] * e[:, None, :]
    covs = 0.5 * (covs + np.transpose(covs, (0, 2, 1)))
    mixed = centers - d + e  # z_bar + e_i
    logc = np.log(np.maximum(c, 1e-300))
    return mixed, covs, logc - logc.max()
