"""The fleet benchmark runs end to end, tiny: real servers, real HTTP, every post accepted and
learned, on the embedded default and on PostgreSQL with two workers."""

import os

import orjson
import pytest

from bench.fleet import BATCH, PERIOD, Workload, _setting, main, twin_spec
from bench.fleet_deploy import Deployment

POSTGRES_URL = os.environ.get("TANDEM_TEST_POSTGRES_URL")


def test_each_twin_gets_its_next_ten_one_second_observations_per_post():
    work = Workload(n_twins=3, length=40)
    first, second = work.body(1), work.body(1)
    a, b = orjson.loads(first)["observations"], orjson.loads(second)["observations"]
    assert len(a) == len(b) == BATCH
    ts = [row["ts"] for row in a + b]
    assert ts == [ts[0] + k for k in range(2 * BATCH)]  # one second apart, no gap, no repeat
    assert work.next == [0, 2 * BATCH, 0]


def test_the_fleet_can_be_of_another_model_and_learner_on_the_same_channels():
    default = twin_spec(None, None)
    assert default["model"]["kind"] == "first_order" and "learner" not in default
    arx = twin_spec('{"kind": "arx", "na": 2, "nb": 1}', "kalman")
    assert arx["model"] == {"kind": "arx", "na": 2, "nb": 1}
    assert arx["learner"] == {"method": "kalman"}
    assert (arx["inputs"], arx["outputs"]) == (default["inputs"], default["outputs"])
    assert twin_spec("arx", None)["model"] == {"kind": "arx"}


def test_a_setting_reaches_the_deployment_as_its_tandem_variable_and_names_the_row(tmp_path):
    assert _setting("calibration_twins=256") == ("TANDEM_CALIBRATION_TWINS", "256")
    assert _setting("TANDEM_LEASE_SECONDS=10") == ("TANDEM_LEASE_SECONDS", "10")
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        _setting("calibration_twins")
    run = Deployment(tmp_path, None, 2, dict([_setting("calibration_twins=256")]))
    assert run.label == "embedded (SQLite), 2 workers, CALIBRATION_TWINS=256"


def _check(results, config: str, twins: int) -> None:
    (r,) = results
    assert r.config == config and r.twins == twins
    assert r.failed == 0
    assert r.accepted_rate > 0 and r.accepted_rate <= twins * BATCH / PERIOD * 1.5
    assert r.samples >= 1 and r.lag[1] >= 0
    assert r.catch_up is not None  # everything posted was learned
    assert r.burst_rps > 0 and r.burst_learned > 0 and r.per_core > 0
    # learned during the load: something, and no more than was posted
    assert 0 < r.load_learned <= r.accepted_rate / BATCH * 1.01


@pytest.mark.slow
def test_fleet_bench_runs_tiny_on_the_embedded_default(capsys):
    results = main(["--twins", "4", "--duration", "4", "--every", "1"])
    _check(results, "embedded (SQLite)", 4)
    assert "lag p50 / p95 / max" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.skipif(not POSTGRES_URL, reason="TANDEM_TEST_POSTGRES_URL is not set")
def test_fleet_bench_runs_tiny_on_postgres_with_two_workers():
    results = main(
        ["--twins", "4", "--duration", "4", "--every", "1"]
        + ["--postgres", POSTGRES_URL, "--workers", "2"]
    )
    _check(results, "PostgreSQL, 2 workers", 4)
