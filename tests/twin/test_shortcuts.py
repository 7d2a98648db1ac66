"""The shortcuts of a step give exactly what the plain operations give: the window's buffer, the
first-order hold's factor on regular sampling, the cached parameter scales and bounds, scalar
parameters written in place, the channel scaler's mean, and checked slices of observations."""

import numpy as np
import pytest
import torch

from twin.learners.window import Window
from twin.models import model_class
from twin.models.base import DTYPE, load_flat, unflatten
from twin.models.physical import _first_order_hold
from twin.observations import Observations
from twin.scaling import ChannelScaler


def observations(rng: np.random.Generator, start: int, n: int) -> Observations:
    y = rng.normal(size=(n, 2))
    y[rng.random(y.shape) < 0.1] = np.nan
    ts = 1.7e9 + start + np.arange(n) + rng.random(n) * 0.5
    return Observations(ts, rng.normal(size=(n, 1)), y, np.arange(start, start + n))


def test_the_window_holds_what_concatenating_and_cutting_holds():
    """Appends of every size (none, more than the window, several buffers' worth) keep the
    newest `capacity` rows; a field read before an append keeps its values."""
    rng = np.random.default_rng(0)
    window = Window(13, 1, 2)
    fields = ("seq", "ts", "inputs", "outputs", "observed")
    expected = {name: getattr(window, name) for name in fields}
    start = 0
    for n in [0, 3, 5, 1, 20, 4, 4, 0, 13, 7] + [4] * 40:
        obs = observations(rng, start, n)
        start += n
        before = {name: (getattr(window, name), getattr(window, name).clone()) for name in fields}
        window.append(obs)
        for name in fields:
            new = torch.as_tensor(np.asarray(getattr(obs, name)))
            expected[name] = torch.cat([expected[name], new.to(expected[name].dtype)])[-13:]
            got = getattr(window, name)
            assert got.dtype == expected[name].dtype and got.is_contiguous()
            assert same(got, expected[name]), name
            assert same(before[name][0], before[name][1])  # untouched by the append
    state = window.state_dict()
    loaded = Window(13, 1, 2)
    loaded.load_state_dict(state)
    obs = observations(rng, start, 6)
    window.append(obs)
    loaded.append(obs)
    for name in fields:
        assert same(getattr(window, name), getattr(loaded, name))


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    nan = a.is_floating_point()
    return a.shape == b.shape and np.array_equal(a.numpy(), b.numpy(), equal_nan=nan)


@pytest.mark.parametrize("jitter", [0.0, 0.3])
def test_the_first_order_hold_is_the_same_on_regular_sampling(jitter):
    """The factor computed once per row where the intervals are equal: the same numbers as
    computed for every interval."""
    rng = np.random.default_rng(1)
    K, S, T = 5, 7, 33
    y_prev = torch.from_numpy(rng.normal(size=(K, 1, T)))
    target = torch.from_numpy(rng.normal(size=(K, S, T)))
    dt = torch.from_numpy(np.broadcast_to(rng.uniform(0.1, 10, (K, 1, 1)), (K, 1, T)).copy())
    dt *= torch.from_numpy(1 + jitter * rng.uniform(-1, 1, (K, 1, T)))
    tau = torch.from_numpy(np.exp(rng.normal(size=(K, S, 1)) * 3))
    expected = y_prev + -torch.expm1(-dt / tau) * (target - y_prev)
    assert torch.equal(_first_order_hold(y_prev, target, dt, tau), expected)
    one = _first_order_hold(y_prev[0, 0], target[0, 0], dt[0, 0], tau[0, 0])
    assert torch.equal(one, expected[0, 0])


def test_parameter_scales_and_bounds_follow_the_scaler_and_the_state():
    cls = model_class("first_order")
    model = cls(bounds={"tau": (0.5, 100.0)})
    fresh = cls(bounds={"tau": (0.5, 100.0)})
    model.set_normalization([3.0], [2.5], [0.0], [1.0])
    assert model.parameter_scales().tolist() == [1.0, 1.0, 2.5]
    assert model.parameter_scales() is model.parameter_scales()  # cached while the same
    fresh.load_state_dict(model.state_dict())
    assert fresh.parameter_scales().tolist() == [1.0, 1.0, 2.5]
    model.set_normalization([3.0], [0.7], [0.0], [1.0])
    assert model.parameter_scales().tolist() == [1.0, 1.0, 0.7]
    low, high = model.raw_bounds()
    assert low.tolist()[1] == np.log(0.5) and high.tolist()[1] == np.log(100.0)
    pairs = zip(model._raw_bounds(), model.raw_bounds(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_scalar_parameters_are_written_as_copy_writes_them():
    model = model_class("thermal_rc")()
    other = model_class("thermal_rc")()
    flat = torch.tensor([0.123456789, -7.0 / 3.0], dtype=DTYPE)
    load_flat(model, flat)
    with torch.no_grad():
        for name, value in unflatten(other, flat).items():
            other.get_parameter(name).copy_(value)
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b) and a.requires_grad


def test_the_channel_scaler_mean_is_numpys():
    rng = np.random.default_rng(2)
    scaler, mean, m2, n = ChannelScaler(3), np.zeros(3), np.zeros(3), 0
    for size in [1, 4, 4, 9, 2, 0, 17]:
        x = rng.normal(size=(size, 3)) * 1e3 + 7
        scaler.update(x)
        if size:  # Chan et al.'s update, with np.mean
            mean_b = x.mean(axis=0)
            delta = mean_b - mean
            total = n + size
            mean = mean + delta * size / total
            m2 = m2 + ((x - mean_b) ** 2).sum(axis=0) + delta**2 * n * size / total
            n = total
        assert np.array_equal(scaler.mean, mean) and np.array_equal(scaler._m2, m2)


def test_slices_of_observations_are_checked_observations():
    obs = observations(np.random.default_rng(3), 10, 9)
    part = obs[2:7]
    again = Observations(obs.ts[2:7], obs.inputs[2:7], obs.outputs[2:7], obs.seq[2:7])
    for name in ("ts", "inputs", "outputs", "seq", "observed"):
        assert np.array_equal(getattr(part, name), getattr(again, name), equal_nan=True)
        assert getattr(part, name).dtype == getattr(again, name).dtype


@pytest.mark.parametrize("kind", ["first_order", "thermal_rc", "mass_spring_damper", "arx", "mlp"])
def test_the_parameter_list_is_the_modules(kind):
    from twin.models.base import parameter_list

    model = model_class(kind)(**({"n_inputs": 1, "n_outputs": 1} if kind in ("arx", "mlp") else {}))
    assert [id(p) for p in parameter_list(model)] == [id(p) for p in model.parameters()]


def test_convergence_is_judged_as_numpy_judges_it():
    """The settled test over the recent updates' parameters, on plain floats: what the (updates,
    P) array's reductions decide, for spreads on either side of the bound."""
    from twin.plants import FirstOrderPlant
    from twin.replica import CONVERGE_WINDOWS, SETTLED, Twin
    from twin.spec import TwinSpec

    rng = np.random.default_rng(4)
    decided = []
    for trial in range(200):
        twin = Twin(TwinSpec.from_dict(FirstOrderPlant().spec_dict()))
        window = twin.learner.options["window"]
        base = rng.normal(size=3) * 10.0 ** rng.integers(-3, 3)
        shape = (int(rng.integers(1, 70)), 3)
        rows = base * (1 + rng.uniform(-1, 1, shape) * SETTLED * rng.uniform(0, 1.5))
        twin.settling = rows[:-1].tolist()
        values = dict(zip(twin.model.named_values(), rows[-1].tolist(), strict=True))
        twin.model.named_values = lambda values=values: values
        twin.watermark = window + (trial % 2) * CONVERGE_WINDOWS * window
        recent = np.array(twin.settling + [rows[-1].tolist()])
        spread = recent.max(axis=0) - recent.min(axis=0)
        size = np.maximum(np.abs(recent).max(axis=0), 1e-12)
        expected = bool((spread <= SETTLED * size).all()) or trial % 2 == 1
        twin._maybe_converged()
        assert (twin.tracker.converged is not None) == expected
        decided.append(expected)
    assert 20 < sum(decided[::2]) < 80  # settled and not, by the spread alone
