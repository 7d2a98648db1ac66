"""Checkpoint bytes: plain values that load without running code, exact round trips, and the
torch.save checkpoints stored before still load."""

import io
import pickle
from fractions import Fraction

import numpy as np
import pytest
import torch

from twin import checkpoint
from twin.models.physical import FirstOrder
from twin.observations import Observations
from twin.plants import FirstOrderPlant
from twin.replica import Twin
from twin.spec import TwinSpec

CALLED = []


def record(*args):
    CALLED.append(args)


class Sneaky:
    def __reduce__(self):
        return record, ("ran",)


def assert_same(a, b, where="state"):
    """Equal values of equal types, tensors bit for bit with their dtype and requires_grad."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert a.requires_grad == b.requires_grad, where
        assert a.detach().numpy().tobytes() == b.detach().numpy().tobytes(), where
    elif isinstance(a, np.ndarray | np.generic):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        assert getattr(a, "_metadata", None) == getattr(b, "_metadata", None), where
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), where  # NaN equals NaN here


def stepped_twin() -> tuple[Twin, Observations]:
    plant = FirstOrderPlant(K=1.5, tau=15.0)
    sim = plant.simulate(140, seed=1).observations
    twin = Twin(TwinSpec.from_dict(plant.spec_dict()))
    twin.step(Observations(sim.ts[:100], sim.inputs[:100], sim.outputs[:100], np.arange(1, 101)))
    nxt = Observations(sim.ts[100:], sim.inputs[100:], sim.outputs[100:], np.arange(101, 141))
    return twin, nxt


def test_a_twin_checkpoint_is_plain_and_round_trips_exactly():
    twin, nxt = stepped_twin()
    blob = twin.to_bytes()
    assert blob.startswith(checkpoint.MAGIC)
    restored = Twin.from_bytes(blob)
    assert_same(twin.state_dict(), restored.state_dict())
    np.testing.assert_array_equal(twin.step(nxt).predictions, restored.step(nxt).predictions)
    assert twin.parameters() == restored.parameters()


def test_checkpoints_written_by_torch_save_still_load():
    twin, nxt = stepped_twin()
    buf = io.BytesIO()
    torch.save(twin.state_dict(), buf)  # as every checkpoint was stored before
    assert buf.getvalue().startswith(b"PK")
    restored = Twin.from_bytes(buf.getvalue())
    assert_same(twin.state_dict(), restored.state_dict())
    np.testing.assert_array_equal(twin.step(nxt).predictions, restored.step(nxt).predictions)


def test_every_kind_of_value_round_trips_with_its_type():
    module_state = torch.nn.Linear(2, 1).double().state_dict()  # an OrderedDict with _metadata
    state = {
        "module": module_state,
        "grad": torch.ones(3, dtype=torch.float64, requires_grad=True) * 2,
        "scalar_tensor": torch.tensor(1.5, dtype=torch.float32),
        "flags": torch.tensor([[True, False]]),
        "bytes": torch.arange(7, dtype=torch.uint8),
        "array": np.arange(6, dtype=np.int32).reshape(2, 3),
        "np_float": np.float64(0.1),
        "plain": [1, 2.5, float("nan"), None, True, "x", b"y", (1, [2.0, 3.0])],
        "nested": [{"t": torch.zeros(2, 2)}],
        7: {"int key": ()},
    }
    blob = checkpoint.dumps(state)
    assert blob.startswith(checkpoint.MAGIC)
    assert_same(state, checkpoint.loads(blob))


@pytest.mark.parametrize(
    "odd",
    [Fraction(1, 3), torch.zeros(2, dtype=torch.complex64), {checkpoint.TAG: 1}, {1.5j: 1}],
    ids=["fraction", "complex-tensor", "tag-key", "complex-key"],
)
def test_a_state_the_plain_format_cannot_hold_is_written_by_torch_save(odd):
    state = {"odd": odd, "n": 3}
    blob = checkpoint.dumps(state)
    assert blob.startswith(b"PK")
    loaded = checkpoint.loads(blob)
    assert loaded["n"] == 3 and type(loaded["odd"]) is type(odd)


def test_loading_a_checkpoint_that_names_code_refuses_it_without_calling_anything():
    blob = checkpoint.MAGIC + pickle.dumps({"state": [Sneaky()]}, protocol=5)
    with pytest.raises(pickle.UnpicklingError, match="names no code"):
        checkpoint.loads(blob)
    assert CALLED == []


def test_a_twin_names_its_learner_and_a_checkpoint_that_did_not_loads_as_it_ran(monkeypatch):
    """A spec without a method is built and saved with its kind's default named; a checkpoint
    written when specs left it out (null) loads with the default of that time, the learner
    whose state it holds, whatever the kind's default has become since."""
    twin, nxt = stepped_twin()
    assert twin.spec.learner.method == "pgpe"
    state = twin.state_dict()
    state["spec"]["learner"]["method"] = None  # as stored before
    monkeypatch.setattr(
        FirstOrder, "default_learner", classmethod(lambda cls, n_params=None: "gradient")
    )
    assert Twin(TwinSpec.from_dict(FirstOrderPlant().spec_dict())).spec.learner.method == "gradient"
    restored = Twin.from_bytes(checkpoint.dumps(state))
    assert restored.spec.learner.method == "pgpe"
    np.testing.assert_array_equal(twin.step(nxt).predictions, restored.step(nxt).predictions)
