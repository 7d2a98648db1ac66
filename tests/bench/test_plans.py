"""The query-plan bench runs tiny: it builds the fleet, runs the service's paths with their
statements captured and shows each plan before and after the covering keys (whether the plans
at scale are index-only is for the bench to show; tests/app/test_observation_keys.py checks
that the keys allow it)."""

import os

import pytest

from bench.plans import main, normalized, touches_observation_heap

POSTGRES_URL = os.environ.get("TANDEM_TEST_POSTGRES_URL")


def test_statements_differing_only_in_how_many_twins_they_name_are_one():
    two = "SELECT x FROM t WHERE (a, b) IN ((%(p_1)s, %(p_2)s), (%(p_3)s, %(p_4)s))"
    one = "SELECT x FROM t WHERE (a, b) IN ((%(p_1)s, %(p_2)s))"
    assert normalized(two) == normalized(one)


def test_a_plan_reads_the_heap_unless_its_scans_of_observations_are_index_only():
    index_only = "Index Only Scan using pk_observations on observations\n  Heap Fetches: 0"
    fetching = "Index Only Scan using pk_observations on observations\n  Heap Fetches: 3"
    assert not touches_observation_heap(index_only)
    assert touches_observation_heap(fetching)
    assert touches_observation_heap("Index Scan using pk_observations on observations")
    assert not touches_observation_heap("Seq Scan on twins")


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.skipif(not POSTGRES_URL, reason="TANDEM_TEST_POSTGRES_URL is not set")
def test_plans_bench_runs_tiny_before_and_after_the_covering_keys(capsys):
    main(["--postgres", POSTGRES_URL, "--twins", "30", "--rows", "60"])
    out = capsys.readouterr().out
    assert "built 30 twins x 60 observations" in out
    assert "rebuilt both keys" in out
    paths = {r.split(" | ")[0].lstrip("| ") for r in out.splitlines() if r.startswith("| ")}
    assert {"calibrator pass", "GET /twins?limit=50", "POST /twins/{id}/observations"} <= paths
    lag = [r for r in out.splitlines() if r.startswith("| GET /twins") and "received_at" in r]
    assert lag and all(r.count(" | ") == 5 for r in lag)  # a figure before and after
