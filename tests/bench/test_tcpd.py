"""The change point benchmark scores with the paper's metric: its own doctest cases."""

import pytest

from bench.tcpd import f_measure, true_positives


def test_true_positives_do_not_count_a_prediction_twice():
    assert true_positives({1, 10, 20, 23}, {3, 8, 20}, 5) == {1, 10, 20}
    assert true_positives({1, 10, 20, 23}, {1, 3, 5, 8, 20}, 5) == {1, 10, 20}
    assert true_positives(set(), {1, 2, 3}, 5) == set()


def test_f_measure_matches_the_papers_examples():
    assert f_measure({1: [10, 20], 2: [11, 20], 3: [10], 4: [0, 5]}, [10, 20]) == 1.0
    assert f_measure({1: [], 2: [10], 3: [50]}, [10]) == pytest.approx(0.9090909090909091)
    assert f_measure({1: [], 2: [10], 3: [50]}, []) == pytest.approx(0.8)
