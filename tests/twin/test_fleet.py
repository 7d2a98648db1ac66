"""Twins stepped together (`twin.fleet.step_together`) end exactly where each stepped alone
ends, whatever their kinds, learners and seeds, and one twin's failure stays its own."""

import copy

import numpy as np
import pytest
import torch

from twin.fleet import step_together
from twin.learners import stack
from twin.learners.base import Learner
from twin.learners.pgpe import PGPELearner
from twin.learners.stack import objectives_together
from twin.observations import Observations
from twin.plants import FirstOrderPlant, LinearPlant, MassSpringDamperPlant, ThermalRCPlant
from twin.replica import Twin
from twin.spec import TwinSpec

STEPS, BATCH = 100, 10


def fleet(damaged: bool = False) -> tuple[list[Twin], list[Observations]]:
    """Eleven twins: first-order ones of different plants, seeds and update sizes (some learned
    in one group), and other kinds and learners beside them (groups of their own; the physical
    `kalman` bank's, twin by twin)."""
    cases = [
        (FirstOrderPlant(K=1.5, tau=15.0), {"seed": 1}),
        (FirstOrderPlant(K=2.5, tau=30.0), {"seed": 2}),
        (FirstOrderPlant(K=0.5, tau=8.0), {"seed": 3, "optimizer": "clipup"}),
        (FirstOrderPlant(K=1.0, tau=20.0), {"seed": 4, "drift": "auto"}),
        (ThermalRCPlant(), {"seed": 5}),
        (ThermalRCPlant(R=0.08), {"seed": 6}),
        (MassSpringDamperPlant(), {"seed": 7}),
        (LinearPlant(), {"method": "gradient", "seed": 8}),
        (MassSpringDamperPlant(m=2.0, c=0.1, k=1.0), {"seed": 9}),  # stacked with seed 7's
        (FirstOrderPlant(K=2.0, tau=12.0), {"method": "kalman", "seed": 10}),  # learned alone
        (ThermalRCPlant(R=0.06), {"method": "kalman", "seed": 11}),
    ]
    twins, runs = [], []
    for i, (plant, learner) in enumerate(cases):
        spec = plant.spec_dict()
        spec["learner"] = learner
        twins.append(Twin(TwinSpec.from_dict(spec)))
        obs = plant.simulate(STEPS, seed=i).observations
        if damaged:  # outputs and inputs missing, outliers: filled in, held, left out
            rng = np.random.default_rng(i)
            y, u = obs.outputs.copy(), obs.inputs.copy()
            y[rng.random(y.shape) < 0.05] = np.nan
            u[rng.random(u.shape) < 0.02] = np.nan
            y[rng.random(y.shape) < 0.01] = 1e9
            obs = Observations(obs.ts, u, y, obs.seq)
        runs.append(obs)
    return twins, runs


def assert_same(a: Twin, b: Twin) -> None:
    assert a.model.named_values() == b.model.named_values()
    left, right = a.learner.state_dict(), b.learner.state_dict()
    for key in ("center", "sigma", "n_updates", "boost_left"):
        if key in left:
            assert torch.equal(torch.as_tensor(left[key]), torch.as_tensor(right[key])), key
    assert a.monitor.summary() == b.monitor.summary()


@pytest.mark.parametrize("damaged", [False, True])
def test_twins_stepped_together_end_bit_for_bit_where_each_alone_ends(damaged):
    """From before their first guess on, in groups of mixed kinds: predictions (made in one
    call for the twins of a kind that stacks), drift events, reports, parameters and states."""
    together, runs = fleet(damaged)
    alone = copy.deepcopy(together)
    for start in range(0, STEPS, BATCH):
        results = step_together(together, [obs[start : start + BATCH] for obs in runs])
        for twin, obs, result in zip(alone, runs, results, strict=True):
            expected = twin.step(obs[start : start + BATCH])
            assert np.array_equal(result.predictions, expected.predictions, equal_nan=True)
            assert np.array_equal(result.frozen_predictions, expected.frozen_predictions, True)
            assert [e.to_dict() for e in result.events] == [e.to_dict() for e in expected.events]
            assert [r.to_dict() for r in result.reports] == [r.to_dict() for r in expected.reports]
    for a, b in zip(alone, together, strict=True):
        assert_same(a, b)
        assert a.to_bytes() == b.to_bytes()
    learned = [t.guessed is not None and t.learner.n_updates > 10 for t in together]
    assert sum(learned) >= (6 if damaged else len(together))  # an outlier delays a first guess


def test_a_twin_whose_update_raises_fails_alone(monkeypatch):
    together, runs = fleet()
    alone = copy.deepcopy(together)
    sick = together[1]
    learn_together = PGPELearner.learn_together.__func__

    def fails_with_the_sick_twin(cls, pending):
        if any(p.learner is sick.learner for p in pending):
            raise FloatingPointError("the sick twin's update")
        return learn_together(cls, pending)

    monkeypatch.setattr(PGPELearner, "learn_together", classmethod(fails_with_the_sick_twin))
    sick_failed = False
    for start in range(0, STEPS, BATCH):
        live = [i for i in range(len(together)) if not (sick_failed and i == 1)]
        chunks = [runs[i][start : start + BATCH] for i in live]
        results = step_together([together[i] for i in live], chunks)
        for i, result in zip(live, results, strict=True):
            if i == 1 and isinstance(result, Exception):
                assert isinstance(result, FloatingPointError)
                sick_failed = True
                continue
            expected = alone[i].step(runs[i][start : start + BATCH])
            assert np.array_equal(result.predictions, expected.predictions, equal_nan=True)
    assert sick_failed  # it had a group: the others of its group were learned again, alone
    for i, (a, b) in enumerate(zip(alone, together, strict=True)):
        if i != 1:
            assert_same(a, b)


@pytest.mark.parametrize("size", [1, 3])
def test_a_group_of_any_size_learns_the_same(size):
    """The lockstep of one twin and of three identical twins: the same numbers."""
    plant = FirstOrderPlant()
    obs = plant.simulate(80, seed=0).observations
    twins = [Twin(TwinSpec.from_dict(plant.spec_dict())) for _ in range(size)]
    reference = Twin(TwinSpec.from_dict(plant.spec_dict()))
    for start in range(0, 80, BATCH):
        step_together(twins, [obs[start : start + BATCH]] * size)
        reference.step(obs[start : start + BATCH])
    for twin in twins:
        assert_same(reference, twin)


def uneven_fleet() -> tuple[list[Twin], list[Observations]]:
    """First-order and thermal twins whose windows stack: of even and uneven lengths (twins that
    start later), some with drift, one with a channel not reported and one with an outlier
    (whose objectives are built alone)."""
    twins, runs = [], []
    for i in range(7):
        plant = ThermalRCPlant(R=0.05 + 0.01 * i) if i >= 5 else FirstOrderPlant(K=1.0 + i)
        spec = plant.spec_dict()
        spec["learner"] = {"seed": i, "drift": 1e-4} if i == 2 else {"seed": i}
        twins.append(Twin(TwinSpec.from_dict(spec)))
        obs = plant.simulate(STEPS + 20, seed=i).observations
        outputs = obs.outputs.copy()
        if i == 3:
            outputs[60, 0] = np.nan  # not reported
        if i == 4:
            outputs[70, 0] = 1e9  # an outlier
        runs.append(Observations(obs.ts, obs.inputs, outputs, obs.seq))
    return twins, runs


def test_twins_with_uneven_windows_missing_values_and_outliers_end_where_each_alone_ends(
    monkeypatch,
):
    together, runs = uneven_fleet()
    alone = copy.deepcopy(together)
    built, build = [], stack._build
    monkeypatch.setattr(stack, "_build", lambda r, *a: built.append(len(r)) or build(r, *a))
    delays = [0, 0, 0, 0, 0, 20, 10]  # twins 5 and 6 start later: shorter windows
    for start in range(0, STEPS + 20, BATCH):
        live = [i for i, d in enumerate(delays) if start >= d]
        chunks = [runs[i][start - delays[i] : start - delays[i] + BATCH] for i in live]
        results = step_together([together[i] for i in live], chunks)
        for i, chunk, result in zip(live, chunks, results, strict=True):
            expected = alone[i].step(chunk)
            assert np.array_equal(result.predictions, expected.predictions, equal_nan=True)
            assert [r.to_dict() for r in result.reports] == [r.to_dict() for r in expected.reports]
    for a, b in zip(alone, together, strict=True):
        assert_same(a, b)
    assert max(built) >= 3  # objectives were built in groups


def test_objectives_built_together_equal_those_built_alone():
    """`objectives_together` gives each twin the objective `Objective` builds for it, bit for
    bit, whether its window stacks with others or not."""
    twins, runs = uneven_fleet()
    for i, (twin, obs) in enumerate(zip(twins, runs, strict=True)):
        for start in range(0, STEPS - 10 * (i // 2), BATCH):  # lengths in pairs
            twin.step(obs[start : start + BATCH])
    twins[1].learner.regime_start = int(twins[1].learner.window.seq[-30])
    requests = [twin.learner.request(obs[:0]) for twin, obs in zip(twins, runs, strict=True)]
    for built, request in zip(objectives_together(requests), requests, strict=True):
        expected = request.alone()
        assert built.n_targets == expected.n_targets > 0
        assert (built.walk is None) == (expected.walk is None)
        assert built.center_loss == expected.center_loss
        for name in (
            "y", "scale", "low", "high", "theta_prev", "z_prev", "weights", "s", "y_scaled",
            "residuals", "y_rows", "inv_s", "w_mean", "_center",
        ):  # fmt: skip
            assert torch.equal(getattr(built, name), getattr(expected, name)), name
        assert all(torch.equal(a, b) for a, b in zip(built.args, expected.args, strict=True))


def test_a_twin_whose_step_raises_is_left_as_alone(monkeypatch):
    """A twin whose update raises part-way through its step (its drift detections staged but
    not yet run) is left exactly as `Twin.step` leaves it, and the others go on."""
    together, runs = fleet()
    alone = copy.deepcopy(together)
    calls = {}
    # a learner's own update (kalman's) fails in it, the others' in their request
    entry = {
        cls: "update" if cls.update is not Learner.update else "request"
        for cls in {type(t.learner) for t in together}
    }
    original = {cls: getattr(cls, name) for cls, name in entry.items()}

    def request_or_fail(learner, chunk):
        calls[id(learner)] = calls.get(id(learner), 0) + 1
        if calls[id(learner)] == 3:  # the 3rd update of each twin, mid-step
            raise FloatingPointError("sick")
        return original[type(learner)](learner, chunk)

    for cls, name in entry.items():
        monkeypatch.setattr(cls, name, request_or_fail)
    failed = 0
    for start in range(0, 60, BATCH):
        chunks = [obs[start : start + BATCH] for obs in runs]
        results = step_together(together, chunks)
        for twin, chunk, result in zip(alone, chunks, results, strict=True):
            try:
                expected = twin.step(chunk)
            except FloatingPointError as exc:
                assert isinstance(result, FloatingPointError), exc
                failed += 1
                continue
            assert np.array_equal(result.predictions, expected.predictions, equal_nan=True)
            assert [e.to_dict() for e in result.events] == [e.to_dict() for e in expected.events]
    assert failed == len(together)
    for a, b in zip(alone, together, strict=True):
        assert a.monitor.state_dict() == b.monitor.state_dict()
        assert a.to_bytes() == b.to_bytes()


def test_the_deadline_cut_falls_where_it_falls_alone():
    """A deadline already past: each twin stops after its first update, together as alone."""
    together, runs = fleet()
    alone = copy.deepcopy(together)
    for start in range(0, STEPS, 3 * BATCH):
        chunks = [obs[start : start + 3 * BATCH] for obs in runs]
        results = step_together(together, chunks, deadline=0.0)
        for twin, chunk, result in zip(alone, chunks, results, strict=True):
            expected = twin.step(chunk, deadline=0.0)
            assert np.array_equal(result.seq, expected.seq)
            assert np.array_equal(result.predictions, expected.predictions, equal_nan=True)
            assert [e.to_dict() for e in result.events] == [e.to_dict() for e in expected.events]
    assert any(len(r.seq) < 3 * BATCH for r in results)  # cut
    for a, b in zip(alone, together, strict=True):
        assert a.to_bytes() == b.to_bytes()


def test_learners_of_other_methods_in_one_round_learn_as_alone(monkeypatch):
    """Each twin's update is grouped by its own learner's key: a `gradient` twin of a kind that
    stacks, between `pgpe` twins and with a `kalman` twin (which makes its own update) last in
    the round, ends where it ends alone, and the `pgpe` twins are still learned in one group."""
    cases = [
        (FirstOrderPlant(K=1.5, tau=15.0), {"seed": 1}),
        (FirstOrderPlant(K=1.0, tau=20.0), {"method": "gradient", "seed": 2}),
        (FirstOrderPlant(K=2.5, tau=30.0), {"seed": 3}),
        (FirstOrderPlant(K=0.5, tau=8.0), {"method": "kalman", "seed": 4}),
    ]
    together, runs = [], []
    for i, (plant, learner) in enumerate(cases):
        spec = plant.spec_dict()
        spec["learner"] = learner
        together.append(Twin(TwinSpec.from_dict(spec)))
        runs.append(plant.simulate(STEPS, seed=i).observations)
    alone = copy.deepcopy(together)
    sizes = group_sizes(monkeypatch, PGPELearner)
    step_both(together, alone, runs, STEPS, 7)  # windows of odd lengths too
    for a, b in zip(alone, together, strict=True):
        assert a.to_bytes() == b.to_bytes()
    assert together[3].learner.n_updates > 10 and together[1].learner.n_updates > 10
    assert max(sizes) == 2


def test_a_group_larger_than_group_twins_learns_in_parts_as_alone(monkeypatch):
    """Compatible twins beyond GROUP_TWINS are learned in several groups, none larger, and each
    twin still ends where it ends alone."""
    from twin.learners import together as together_module

    monkeypatch.setattr(together_module, "GROUP_TWINS", 2)
    plants = [FirstOrderPlant(K=1.0 + 0.3 * i, tau=10.0 + 4 * i) for i in range(5)]
    together = [
        Twin(TwinSpec.from_dict({**p.spec_dict(), "learner": {"seed": i}}))
        for i, p in enumerate(plants)
    ]
    runs = [p.simulate(STEPS, seed=i).observations for i, p in enumerate(plants)]
    alone = copy.deepcopy(together)
    sizes = group_sizes(monkeypatch, PGPELearner)
    step_both(together, alone, runs, STEPS, BATCH)
    for a, b in zip(alone, together, strict=True):
        assert a.to_bytes() == b.to_bytes()
    assert sizes and max(sizes) == 2 and 1 in sizes  # 5 twins: groups of 2, 2 and 1


@pytest.mark.parametrize("damaged", [False, True])
def test_gradient_twins_learned_in_one_group_end_where_each_alone_ends(damaged, monkeypatch):
    """`gradient` twins on the random-walk loss (their default on small models) step in wide
    operations (`twin.learners.newton`), `arx` twins (whose objectives are built one by one)
    and first-order ones (built together) alike, with values missing and outlying: each ends
    where it ends alone, bit for bit, and the walk's factors and steps were made in groups."""
    from twin.learners.gradient import GradientLearner

    cases = [LinearPlant(a=0.8), LinearPlant(a=0.6, b=0.3), LinearPlant(a=0.9, b=0.2)]
    cases += [FirstOrderPlant(K=1.5, tau=15.0), FirstOrderPlant(K=0.5, tau=8.0)]
    together, runs = [], []
    for i, plant in enumerate(cases):
        spec = plant.spec_dict()
        spec["learner"] = {"method": "gradient", "seed": i}
        together.append(Twin(TwinSpec.from_dict(spec)))
        obs = plant.simulate(2 * STEPS, seed=i).observations
        if damaged:
            rng = np.random.default_rng(i)
            y = obs.outputs.copy()
            y[rng.random(y.shape) < 0.05] = np.nan
            y[rng.random(y.shape) < 0.01] = 1e9
            obs = Observations(obs.ts, obs.inputs, y, obs.seq)
        runs.append(obs)
    alone = copy.deepcopy(together)
    sizes = group_sizes(monkeypatch, GradientLearner)
    step_both(together, alone, runs, 2 * STEPS, BATCH)
    for a, b in zip(alone, together, strict=True):
        assert_same(a, b)
        assert a.to_bytes() == b.to_bytes()
    assert all(t.learner.drift() > 0 for t in together)  # the walk was in use
    # three parameters each and one window length: one group (damaged: windows of their own
    # lengths after an outlier, smaller groups)
    assert max(sizes) >= (2 if damaged else len(cases))


def group_sizes(monkeypatch, learner_cls) -> list[int]:
    """The sizes of the groups `learner_cls.learn_together` is called with, from now on."""
    sizes, learn_together = [], learner_cls.learn_together.__func__

    def counted(cls, pending):
        sizes.append(len(pending))
        return learn_together(cls, pending)

    monkeypatch.setattr(learner_cls, "learn_together", classmethod(counted))
    return sizes


def step_both(together, alone, runs, steps: int, chunk: int) -> None:
    """Step `together` with `step_together` and `alone` one by one, `chunk` observations at a
    time; each chunk's predictions and reports must agree."""
    for start in range(0, steps, chunk):
        results = step_together(together, [obs[start : start + chunk] for obs in runs])
        for twin, obs, result in zip(alone, runs, results, strict=True):
            expected = twin.step(obs[start : start + chunk])
            assert not isinstance(result, Exception), result
            assert np.array_equal(result.predictions, expected.predictions, equal_nan=True)
            assert [r.to_dict() for r in result.reports] == [r.to_dict() for r in expected.reports]
