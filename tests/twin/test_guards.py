"""Numeric guards of the learners: outlying values are not learned, Cholesky factors survive
rounding, non-finite steps are refused, and pgpe's memory does not grow with its iterations."""

import math

import numpy as np
import pytest
import torch

from twin.learners import pgpe
from twin.learners.guard import FAR, cholesky, outlying
from twin.models.base import DTYPE, flat_parameters, load_flat
from twin.observations import Observations
from twin.plants import FirstOrderPlant
from twin.replica import Twin
from twin.spec import TwinSpec

METHODS = ["pgpe", "gradient"]


def test_outlying_flags_far_and_non_finite_values_only():
    rng = np.random.default_rng(0)
    x = 20.0 + rng.standard_normal((200, 2))
    x[10, 0], x[11, 1], x[12, 0] = 1e300, math.nan, 25 * FAR  # far out: 1e3 channel scales
    x[13, 1] = -5.0  # a big spike, but no fault
    bad = outlying(x)
    assert bad[10, 0] and bad[11, 1] and bad[12, 0]
    assert int(bad.sum()) == 3


def test_a_burst_shorter_than_half_the_reference_is_refused_a_lasting_level_is_not():
    window = np.concatenate([np.ones((60, 1)), np.full((40, 1), 1e9)])
    assert outlying(window[-40:], window).all()
    longer = np.concatenate([window, np.full((30, 1), 1e9)])
    assert not outlying(longer[-70:], longer).any()


def test_cholesky_adds_jitter_where_rounding_breaks_it():
    v = torch.tensor([1.0, 1.0 + 1e-9, 1.0], dtype=DTYPE)
    singular = torch.stack([torch.outer(v, v), torch.eye(3, dtype=DTYPE)])  # (2, 3, 3)
    assert bool(torch.linalg.cholesky_ex(singular).info[0] > 0)
    chol = cholesky(singular)
    assert bool(torch.isfinite(chol).all())
    torch.testing.assert_close(chol[1], torch.eye(3, dtype=DTYPE))  # the good one untouched
    torch.testing.assert_close(chol[0] @ chol[0].T, singular[0], atol=1e-4, rtol=0)
    with pytest.raises(torch.linalg.LinAlgError):
        cholesky(torch.full((2, 2), math.nan, dtype=DTYPE))


def first_order_twin(method: str, **learner) -> tuple[Twin, Observations]:
    sim = FirstOrderPlant(noise=0.02).simulate(800, seed=1)
    spec = sim.spec_dict()
    spec["model"]["params"] = {"K": 1.5, "tau": 15.0, "b": 0.0}
    spec["learner"] = {"method": method, **learner}
    return Twin.create(TwinSpec.from_dict(spec)), sim.observations


@pytest.mark.parametrize("method", METHODS)
def test_a_step_to_a_non_finite_parameter_is_refused(method, monkeypatch):
    twin, obs = first_order_twin(method)
    twin.step(obs[:100])
    before = flat_parameters(twin.model).clone()
    nan = torch.full_like(before, math.nan)
    learns_nan = classmethod(lambda cls, pending: [(nan, math.nan)] * len(pending))
    monkeypatch.setattr(type(twin.learner), "learn_together", learns_nan)
    twin.step(obs[100:108])
    assert torch.equal(flat_parameters(twin.model), before)


@pytest.mark.parametrize("method", METHODS)
def test_huge_outputs_are_not_learned_and_the_twin_recovers_when_the_data_do(method):
    """100 outputs of 1e300, then normal data: no parameter is ever non-finite, nothing raises,
    and the error afterwards is as low as without the burst."""
    clean, obs = first_order_twin(method)
    twin, _ = first_order_twin(method)
    burst = obs.outputs.copy()
    burst[300:400] = 1e300
    poisoned = Observations(obs.ts, obs.inputs, burst, obs.seq)
    errors = {}
    for name, t, data in (("clean", clean, obs), ("poisoned", twin, poisoned)):
        for start in range(0, 800, 20):
            result = t.step(data[start : start + 20])
            assert all(math.isfinite(v) for v in t.parameters().values()), (name, start)
            if start >= 700:
                errors.setdefault(name, []).append(np.nanmean(result.residuals**2))
            if name == "poisoned" and 300 <= start < 400:
                assert (
                    np.isnan(result.predictions).all()
                    or (np.abs(result.predictions[np.isfinite(result.predictions)]) < 1e3).all()
                )
    assert np.mean(errors["poisoned"]) < 1.5 * np.mean(errors["clean"])
    stats = twin.metrics()["outputs"]["y"]["twin"]
    assert stats["ew_rmse"] is not None and math.isfinite(stats["ew_rmse"])


def test_pgpe_draws_its_samples_a_bounded_block_at_a_time(monkeypatch):
    monkeypatch.setattr(pgpe, "BLOCK_SAMPLES", 100)
    twin, obs = first_order_twin("pgpe", iterations=50, popsize=8)
    drawn = []
    original = torch.randn

    def spy(*size, **kwargs):
        drawn.append(math.prod(size[0] if isinstance(size[0], tuple) else size))
        return original(*size, **kwargs)

    monkeypatch.setattr(pgpe.torch, "randn", spy)
    twin.step(obs[:40])
    assert drawn and max(drawn) <= 100
    assert sum(drawn) >= 50 * 8 * 3, "every iteration gets its own directions"


def test_an_open_positive_parameter_cannot_overflow():
    """A learner walking a time constant the data do not pin down stops at 1e100, finite."""
    twin, _ = first_order_twin("gradient")
    low, high = twin.model.raw_bounds()
    assert torch.isfinite(low).sum() >= 2 and torch.isfinite(high).sum() >= 2  # K and tau
    load_flat(twin.model, torch.where(torch.isfinite(high), high + 1e3, 0.0))
    clamped = torch.clamp(flat_parameters(twin.model), low, high)
    load_flat(twin.model, clamped)
    values = twin.model.named_values()
    assert all(math.isfinite(v) for v in values.values())
    assert values["tau"] == pytest.approx(1e100, rel=1e-9)
