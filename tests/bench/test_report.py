"""The benchmark's error metrics measure what their names say."""

import numpy as np
import pytest

from bench.report import RECOVERY_WINDOW, excess_ratio, recovery, recovery_text, rel_param_error


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
    assert excess_ratio(mse=1.3, mse_ref=1.1, floor=1.0) == pytest.approx(3.0)


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
