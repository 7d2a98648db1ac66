"""Late observations in the numerical core: learned in time order while the twin has not
learned past them, skipped and counted once it has; the watermark is the largest seq given."""

import copy

import numpy as np

from twin.observations import Observations
from twin.plants import FirstOrderPlant
from twin.replica import Twin
from twin.spec import TwinSpec


def plant_run(n: int = 80):
    plant = FirstOrderPlant(jitter=0.3)
    return plant, plant.simulate(n, seed=3).observations


def rows(obs, index, seq) -> Observations:
    index = np.asarray(index)
    return Observations(obs.ts[index], obs.inputs[index], obs.outputs[index], np.asarray(seq))


def test_late_observations_before_the_newest_learned_are_skipped_and_counted():
    plant, obs = plant_run()
    twin = Twin(TwinSpec.from_dict(plant.spec_dict()))
    twin.step(rows(obs, range(50), range(1, 51)))
    reference = copy.deepcopy(twin)
    # seqs 51-60 arrived live (ts 50-59), then 61-65 replayed ts 20-24: learned past
    index = list(range(20, 25)) + list(range(50, 60))
    seq = list(range(61, 66)) + list(range(51, 61))
    result = twin.step(rows(obs, index, seq))
    expected = reference.step(rows(obs, range(50, 60), range(51, 61)))
    assert twin.late_skipped == 5 and twin.metrics()["late"] == {"skipped": 5}
    assert twin.watermark == 65
    assert np.isnan(result.predictions[:5]).all()
    np.testing.assert_array_equal(result.predictions[5:], expected.predictions)
    assert twin.parameters() == reference.parameters()
    assert Twin.from_bytes(twin.to_bytes()).late_skipped == 5


def test_late_observations_in_the_unlearned_range_are_learned_in_time_order():
    plant, obs = plant_run()
    twin, same = (
        Twin(TwinSpec.from_dict(plant.spec_dict())),
        Twin(TwinSpec.from_dict(plant.spec_dict())),
    )
    twin.step(rows(obs, range(40), range(1, 41)))
    same.step(rows(obs, range(40), range(1, 41)))
    # live rows ts 60-79 arrived (seqs 41-60) before the replay of ts 40-59 (seqs 61-80)
    seq = list(range(61, 81)) + list(range(41, 61))
    result = twin.step(rows(obs, range(40, 80), seq))
    expected = same.step(rows(obs, range(40, 80), range(41, 81)))
    assert twin.late_skipped == 0 and twin.watermark == 80
    np.testing.assert_array_equal(result.predictions, expected.predictions)
    assert np.isfinite(result.predictions).all()
