"""The benchmark's error metrics measure what their names say."""

import numpy as np
import pytest

from bench.report import (
    RECOVERY_WINDOW,
    excess_mse,
    excess_ratio,
    recovery,
    recovery_text,
    rel_param_error,
)
from twin.plants import LinearPlant


def test_recovery_counts_observations_until_the_rolling_error_is_back_at_the_noise_floor():
    sq_err = np.full(400, 1.0)
    sq_err[100:160] = 100.0  # the step at 100 costs 60 bad observations
    rec = recovery(sq_err, step_at=100, floor=1.0)
    assert rec == 60 + RECOVERY_WINDOW  # the first clean 25-observation window ends there


def test_recovery_is_the_window_length_when_the_step_costs_nothing():
    assert recovery(np.full(300, 1.0), step_at=100, floor=1.0) == RECOVERY_WINDOW


def test_recovery_needs_the_error_to_stay_low():
    sq_err = np.full(400, 1.0)
    sq_err[100:130] = 100.0
    sq_err[170:200] = 100.0  # a relapse after a short clean stretch
    assert recovery(sq_err, step_at=100, floor=1.0) == 200 - 100 + RECOVERY_WINDOW


def test_recovery_is_never_when_the_error_stays_high():
    sq_err = np.full(400, 1.0)
    sq_err[100:] = 2.0
    assert recovery(sq_err, step_at=100, floor=1.0) is None


def test_excess_ratio_compares_error_above_the_noise_floor():
    assert excess_ratio(0.3, 0.1) == pytest.approx(3.0)


def test_excess_mse_is_the_distance_from_the_oracle_ignoring_missing_predictions():
    oracle = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    preds = oracle + np.array([[0.5, -0.5], [np.nan, np.nan], [1.0, 0.0]])
    assert excess_mse(preds, oracle) == pytest.approx((0.25 + 0.25 + 1.0) / 4)


def test_excess_mse_estimates_mse_above_the_noise_floor():
    """On a simulation, MSE minus the realized noise power equals the excess on average."""
    sim = LinearPlant(a=0.6, b=0.8, c=0.3).simulate(20_000, seed=3)
    y, oracle = sim.observations.outputs, sim.oracle
    noise = y - oracle
    preds = oracle + 0.2 * np.sin(np.arange(len(y)))[:, None]  # a biased predictor
    mse = np.nanmean((y - preds) ** 2)
    assert mse - np.nanmean(noise**2) == pytest.approx(excess_mse(preds, oracle), rel=0.05)
    assert np.nanmean(noise**2) == pytest.approx(sim.noise_floor, rel=0.05)


def test_relative_parameter_error_skips_parameters_whose_truth_is_zero():
    truth = np.array([[2.0, 0.0], [4.0, 0.0]])
    hat = np.array([[1.0, 5.0], [5.0, 5.0]])
    assert rel_param_error(hat, truth) == 0.375  # mean of 0.5 and 0.25


def test_recovery_text_is_not_applicable_when_the_error_was_never_at_the_floor():
    sq_err = np.full(400, 1.0)
    sq_err[:200:2] = 3.0  # mean 2 x noise^2 before the step: nothing to recover to
    assert recovery_text(sq_err, step_at=200, floor=1.0) == "n/a"
    assert recovery_text(np.full(400, 1.0), step_at=200, floor=1.0) == str(RECOVERY_WINDOW)
    sq_err = np.full(400, 1.0)
    sq_err[200:] = 5.0
    assert recovery_text(sq_err, step_at=200, floor=1.0) == "never"
