"""The generalization benchmark draws what it says, keeps tuning and report seeds apart, and
measures its ratios as the docs say."""

import argparse

import numpy as np
import pytest

from bench import filters
from bench.family import (
    KINDS,
    REPORT_SEEDS,
    SHAPES,
    SIGNALS,
    TUNE_SEEDS,
    draw,
    seeds_of,
    strata,
)
from bench.generalize import KF, PLANTS, WARMUP, _kinds, excess_ratios, main
from bench.report import excess_mse
from bench.summary import group_stats

DEFAULT_REPORT = list(REPORT_SEEDS[:PLANTS])


@pytest.fixture(scope="module")
def default_plants():
    return [draw(s, 80) for s in DEFAULT_REPORT]


def test_the_family_is_deterministic_for_a_seed():
    a, b, other = draw(1003, 300), draw(1003, 300), draw(1009, 300)
    np.testing.assert_array_equal(a.observations.outputs, b.observations.outputs)
    np.testing.assert_array_equal(a.truth, b.truth)
    assert a.label == b.label and a.label != other.label


def test_the_default_plants_cover_every_kind_shape_signal_and_sampling(default_plants):
    plants = default_plants
    assert {c.kind for c in plants} == set(KINDS)
    assert {c.shape for c in plants} == set(SHAPES)
    assert {c.signal for c in plants} == set(SIGNALS)
    assert {(c.kind, c.shape) for c in plants} == {(k, s) for k in KINDS for s in SHAPES}
    physical = [c for c in plants if c.group == "physical"]
    assert any(c.jitter > 0 for c in physical) and any(c.jitter == 0 for c in physical)
    arx = [c for c in plants if c.kind == "arx"]
    assert {c.spec["model"]["na"] for c in arx} == {1, 2, 3}
    assert {len(c.spec["inputs"]) for c in arx} == {1, 2}
    rates, nsrs = [c.rate for c in plants], [c.nsr for c in plants]
    assert max(rates) / min(rates) > 1e3 and max(nsrs) / min(nsrs) > 1e3  # three decades


def test_each_plants_filter_model_reproduces_its_noise_free_prediction(default_plants):
    for case in default_plants:
        for k in (40, 79):
            np.testing.assert_allclose(case.measure(k, case.truth[k][None])[0], case.oracle[k])


def test_tuning_and_report_seeds_are_disjoint_and_never_mixed(capsys):
    assert not set(TUNE_SEEDS) & set(REPORT_SEEDS)
    with pytest.raises(SystemExit):
        main(["--seeds", "5"])  # a tuning seed in a report run
    with pytest.raises(SystemExit):
        main(["--tune", "--seeds", "998-1001"])
    assert "tuning seeds" in capsys.readouterr().err
    assert seeds_of("3,5-7") == [3, 5, 6, 7]


def test_the_informed_kalman_filter_beats_a_naive_predictor():
    case = next(c for c in map(lambda s: draw(s, 1000), REPORT_SEEDS) if c.kind == "arx")
    preds, factor = filters.informed(case, lambda p: excess_mse(p[WARMUP:], case.oracle[WARMUP:]))
    naive = np.vstack([np.full((1, 1), np.nan), case.observations.outputs[:-1]])  # last value
    ours = excess_mse(preds[WARMUP:], case.oracle[WARMUP:])
    assert ours < 0.2 * excess_mse(naive[WARMUP:], case.oracle[WARMUP:])
    assert ours < case.noise_var[0]  # within the noise floor's size of the true predictions


def test_excess_ratio_is_the_error_above_the_oracle_over_the_informed_filters():
    n = WARMUP + 4
    oracle = np.arange(2.0 * n).reshape(n, 2)
    offset = np.tile([[0.1, -0.1]], (n, 1))
    runs = {KF: oracle + offset, "twice": oracle + 2 * offset, "none": np.full((n, 2), np.nan)}
    runs["twice"][:WARMUP] = 99.0  # the warm-up is left out
    ratios = excess_ratios(runs, oracle)
    assert ratios["twice"] == pytest.approx(4.0)  # twice the distance: four times the excess
    assert ratios["none"] == np.inf


def test_summary_counts_a_failed_run_as_the_worst():
    from types import SimpleNamespace

    results = [SimpleNamespace(group="linear", ratios={"pgpe": v}) for v in (1.0, 3.0, 2.0, np.nan)]
    median, worst, count = group_stats(results, "pgpe", "linear")
    assert (median, worst, count) == (2.5, np.inf, 4)
    results[0].ratios["pgpe"] = np.inf  # an infinite ratio stays infinite (not float max)
    assert group_stats(results, "pgpe", "linear")[1] == np.inf


def test_an_unknown_learner_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--learners", "pgpe,newton"])
    assert "unknown learners" in capsys.readouterr().err


def test_kinds_select_plants_by_kind_or_group(capsys):
    parser = argparse.ArgumentParser()
    assert _kinds(parser, "physical") == {"first_order", "thermal_rc", "mass_spring_damper"}
    assert _kinds(parser, "arx,hammerstein") == {"arx", "hammerstein"}
    with pytest.raises(SystemExit):
        main(["--tune", "--kinds", "pump"])
    assert "unknown kind or group 'pump'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # seed 0 draws an arx plant
        main(["--tune", "--seeds", "0", "--kinds", "physical"])
    assert strata(0)["kind"] == "arx"
