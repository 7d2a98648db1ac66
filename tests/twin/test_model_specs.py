"""Model specs and the kind registry: every spec problem names its field; kinds plug in."""

import pytest
import torch

import twin.models
from twin.models import DTYPE, TwinModel, model_class, model_kinds, register
from twin.spec import ModelSpec, SpecError, TwinSpec


def make_spec(kind, inputs, outputs, params=None, options=None, bounds=None):
    """A TwinSpec built directly, so the model's own checks run without the learner's."""
    model = ModelSpec(kind, params or {}, options or {}, bounds or {})
    return TwinSpec(tuple(inputs), tuple(outputs), model)


# -- spec validation --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "inputs", "outputs", "params", "options", "bounds", "field"),
    [
        ("thermal_rc", ["Q"], ["T"], {}, {}, {}, "inputs"),
        ("mass_spring_damper", ["F"], ["x"], {}, {}, {}, "outputs"),
        ("first_order", ["u"], ["y", "z"], {}, {}, {}, "outputs"),
        ("first_order", ["u"], ["y"], {"tau": -1.0}, {}, {}, "model.params.tau"),
        ("thermal_rc", ["Q", "Ta"], ["T"], {"C": 0.0}, {}, {}, "model.params.C"),
        ("thermal_rc", ["Q", "Ta"], ["T"], {"L": 1.0}, {}, {}, "model.params.L"),
        ("thermal_rc", ["Q", "Ta"], ["T"], {}, {}, {"L": (1.0, 2.0)}, "model.bounds.L"),
        ("thermal_rc", ["Q", "Ta"], ["T"], {}, {}, {"R": (-1.0, 2.0)}, "model.bounds.R"),
        ("thermal_rc", ["Q", "Ta"], ["T"], {"R": 3.0}, {}, {"R": (1.0, 2.0)}, "model.params.R"),
        ("first_order", ["u"], ["y"], {}, {"na": 2}, {}, "model.na"),
        ("arx", ["u"], ["y"], {}, {"na": 0}, {}, "model.na"),
        ("arx", ["u"], ["y"], {}, {"na": 1.5}, {}, "model.na"),
        ("arx", ["u"], ["y"], {}, {"na": 33}, {}, "model.na"),
        ("arx", ["u"], ["y"], {}, {"nb": -1}, {}, "model.nb"),
        ("arx", ["u"], ["y"], {}, {"nk": 2}, {}, "model.nk"),
        ("arx", ["u"], ["y"], {}, {"nc": 1}, {}, "model.nc"),
        ("arx", ["u"], ["y"], {"A2[y,y]": 0.5}, {"na": 1}, {}, "model.params.A2[y,y]"),
        ("arx", ["u"], ["y"], {"B1[y,v]": 0.5}, {}, {}, "model.params.B1[y,v]"),
        ("arx", ["u"], ["y"], {}, {}, {"c[y]": (0.0, 1.0)}, "model.bounds.c[y]"),
        ("mlp", ["u"], ["y"], {}, {"hidden": 0}, {}, "model.hidden"),
        ("mlp", ["u"], ["y"], {}, {"na": True}, {}, "model.na"),
        ("mlp", ["u"], ["y"], {}, {"dt_ref": 0.0}, {}, "model.dt_ref"),
        ("mlp", ["u"], ["y"], {"w": 1.0}, {}, {}, "model.params.w"),
        ("mlp", ["u"], ["y"], {}, {"width": 8}, {}, "model.width"),
    ],
)
def test_spec_errors_name_the_field(kind, inputs, outputs, params, options, bounds, field):
    spec = make_spec(kind, inputs, outputs, params, options, bounds)
    with pytest.raises(SpecError) as err:
        model_class(kind).from_spec(spec)
    assert err.value.field == field


def test_channel_count_error_says_the_expected_order():
    with pytest.raises(SpecError, match=r"exactly 2 inputs, in the order \[Q, T_amb\]"):
        model_class("thermal_rc").validate_spec(make_spec("thermal_rc", ["Q"], ["T"]))


def test_positive_parameter_error_says_positive():
    spec = make_spec("first_order", ["u"], ["y"], {"K": -2.0})
    with pytest.raises(SpecError, match="must be positive"):
        model_class("first_order").validate_spec(spec)


# -- registry ---------------------------------------------------------------------------------
class Gain(TwinModel):
    """y_t = g * y_{t-1}: the smallest custom kind."""

    kind = "gain_test"

    def __init__(self):
        super().__init__(0, 1)
        self.g = torch.nn.Parameter(torch.tensor(0.5, dtype=DTYPE))

    @classmethod
    def from_spec(cls, spec):
        return cls()

    @classmethod
    def validate_spec(cls, spec):
        if spec.inputs:
            raise SpecError("inputs", "gain_test takes no inputs")

    def forward(self, y_ctx, u_ctx, u_now, dt):
        return self.g * y_ctx[:, -1]

    def named_values(self):
        return {"g": float(self.g)}


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, with entry points not yet loaded."""
    monkeypatch.setattr(twin.models, "_REGISTRY", dict(twin.models._REGISTRY))
    monkeypatch.setattr(twin.models, "_ENTRY_POINTS_LOADED", False)
    monkeypatch.setattr(twin.models, "entry_points", lambda group: [])


def test_a_registered_custom_kind_builds_through_the_spec(registry):
    register(Gain)
    spec = TwinSpec.from_dict({"outputs": ["y"], "model": {"kind": "gain_test"}})
    model = model_class(spec.model.kind).from_spec(spec)
    out = model(torch.ones(2, 1, 1, dtype=DTYPE), torch.zeros(2, 1, 0, dtype=DTYPE), None, None)
    torch.testing.assert_close(out, torch.full((2, 1), 0.5, dtype=DTYPE))
    with pytest.raises(SpecError) as err:
        TwinSpec.from_dict({"inputs": ["u"], "outputs": ["y"], "model": {"kind": "gain_test"}})
    assert err.value.field == "inputs"


class _EntryPoint:
    def __init__(self, name, target):
        self.name, self.target = name, target

    def load(self):
        return self.target


def test_entry_point_kinds_are_loaded(registry, monkeypatch):
    seen = []

    def entry_points(group):
        seen.append(group)
        return [_EntryPoint("gain_test", Gain)]

    monkeypatch.setattr(twin.models, "entry_points", entry_points)
    assert "gain_test" in model_kinds()
    assert model_class("gain_test") is Gain and seen == ["tandem.models"]


def test_entry_point_name_must_match_the_kind(registry, monkeypatch):
    monkeypatch.setattr(twin.models, "entry_points", lambda group: [_EntryPoint("other", Gain)])
    with pytest.raises(TypeError, match="other"):
        model_kinds()


@pytest.mark.parametrize(
    ("model_dict", "field"),
    [
        ({"kind": "arx", "na": 0}, "model.na"),
        ({"kind": "thermal_rc", "bounds": {"L": [1, 2]}}, "model.bounds.L"),
        ({"kind": "mass_spring_damper", "params": {"m": -1}}, "model.params.m"),
    ],
)
def test_spec_errors_surface_through_from_dict(model_dict, field):
    data = {"inputs": ["Q", "T_amb"], "outputs": ["T"], "model": model_dict}
    if model_dict["kind"] == "mass_spring_damper":
        data.update(inputs=["F"], outputs=["x", "v"])
    with pytest.raises(SpecError) as err:
        TwinSpec.from_dict(data)
    assert err.value.field == field
