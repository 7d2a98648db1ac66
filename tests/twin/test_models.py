"""Model kinds: shapes, batching over parameter vectors, exact discretization, spec checks."""

import math

import numpy as np
import pytest
import torch
from torch.func import functional_call, vmap

from twin.models import (
    DTYPE,
    TwinModel,
    flat_parameters,
    load_flat,
    model_class,
    model_kinds,
    unflatten,
)
from twin.models.physical import LOG_RANGE
from twin.spec import ModelSpec, TwinSpec

BUILT_IN = {"first_order", "thermal_rc", "mass_spring_damper", "arx", "mlp"}
CASES = {  # name: (kind, inputs, outputs, options)
    "first_order": ("first_order", ("u",), ("y",), {}),
    "thermal_rc": ("thermal_rc", ("Q", "T_amb"), ("T",), {}),
    "mass_spring_damper": ("mass_spring_damper", ("F",), ("x", "v"), {}),
    "arx": ("arx", ("u1", "u2"), ("y1", "y2"), {"na": 2, "nb": 3}),
    "arx_nk0": ("arx", ("u1",), ("y1", "y2"), {"na": 1, "nb": 2, "nk": 0}),
    "arx_autonomous": ("arx", (), ("y",), {"na": 3}),
    "mlp": ("mlp", ("u1", "u2"), ("y1", "y2"), {"hidden": 8, "layers": 2}),
    "mlp_autonomous": ("mlp", (), ("y",), {"na": 3, "hidden": 4, "layers": 1}),
}


def make_spec(kind, inputs, outputs, params=None, options=None, bounds=None):
    """A TwinSpec built directly (the learner options are not under test here)."""
    return TwinSpec(
        tuple(inputs), tuple(outputs), ModelSpec(kind, params or {}, options or {}, bounds or {})
    )


def make_model(case: str, **params) -> TwinModel:
    kind, inputs, outputs, options = CASES[case]
    model = model_class(kind).from_spec(make_spec(kind, inputs, outputs, params, options))
    gen = torch.Generator().manual_seed(1)
    if not model.physical:  # exercise the standardization with a non-trivial scaler
        model.set_normalization(
            torch.randn(model.n_outputs, generator=gen, dtype=DTYPE),
            torch.rand(model.n_outputs, generator=gen, dtype=DTYPE) + 0.5,
            torch.randn(model.n_inputs, generator=gen, dtype=DTYPE),
            torch.rand(model.n_inputs, generator=gen, dtype=DTYPE) + 0.5,
        )
    return model


def random_args(model: TwinModel, batch: int = 5, extra_context: int = 0, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    L = model.context + extra_context
    return (
        torch.randn(batch, L, model.n_outputs, generator=gen, dtype=DTYPE),
        torch.randn(batch, L, model.n_inputs, generator=gen, dtype=DTYPE),
        torch.randn(batch, model.n_inputs, generator=gen, dtype=DTYPE),
        0.1 + torch.rand(batch, generator=gen, dtype=DTYPE),
    )


def perturbed(model: TwinModel, n: int, seed: int = 0) -> torch.Tensor:
    """(n, P) parameter vectors around the model's own, at the model's parameter scales."""
    gen = torch.Generator().manual_seed(seed)
    flat = flat_parameters(model)
    noise = torch.randn(n, flat.numel(), generator=gen, dtype=DTYPE)
    return flat + 0.3 * model.parameter_scales() * noise


@pytest.fixture(params=sorted(CASES))
def model(request) -> TwinModel:
    return make_model(request.param)


def test_every_built_in_kind_is_registered_and_covered():
    assert set(model_kinds()) >= BUILT_IN
    assert {case[0] for case in CASES.values()} == BUILT_IN


def test_forward_gives_float64_predictions_of_the_right_shape(model):
    for extra in (0, 2):  # a longer context than needed uses its most recent rows
        out = model(*random_args(model, batch=5, extra_context=extra))
        assert out.shape == (5, model.n_outputs) and out.dtype == DTYPE
        assert torch.isfinite(out).all()
    args = random_args(model, batch=3, extra_context=2)
    trimmed = (args[0][:, 2:], args[1][:, 2:], args[2], args[3])
    torch.testing.assert_close(model(*args), model(*trimmed), rtol=0, atol=0)


def test_forward_does_not_mutate_its_inputs(model):
    args = random_args(model)
    kept = [a.clone() for a in args]
    model(*args)
    for a, k in zip(args, kept, strict=True):
        assert torch.equal(a, k)


def test_vmap_over_parameter_vectors_equals_a_loop(model):
    args = random_args(model)
    thetas = perturbed(model, 8)
    batched = vmap(lambda p: functional_call(model, unflatten(model, p), args))(thetas)
    looped = torch.stack([functional_call(model, unflatten(model, p), args) for p in thetas])
    assert batched.shape == (8, 5, model.n_outputs)
    torch.testing.assert_close(batched, looped, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(looped[0], looped[1])  # the vectors really were used


@pytest.mark.parametrize("case", ["first_order", "thermal_rc", "mass_spring_damper"])
def test_physical_kinds_broadcast_a_population_like_a_loop(case):
    """Learners score a physical population in one plain call, without vmap: (S,) parameters
    broadcast against the rows, by `forward_with` and by `functional_call` alike."""
    model = make_model(case)
    assert model.broadcasts_parameters
    args = random_args(model, batch=32)  # dt from 0.1 to 1.1: short and long steps mixed
    thetas = perturbed(model, 8)
    looped = torch.stack([functional_call(model, unflatten(model, p), args) for p in thetas])
    params = unflatten(model, thetas)
    for batched in (model.forward_with(params, *args), functional_call(model, params, args)):
        assert batched.shape == (8, 32, model.n_outputs)
        torch.testing.assert_close(batched, looped, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(looped[0], looped[1])  # the vectors really were used


def test_only_physical_kinds_claim_to_broadcast(model):
    assert model.broadcasts_parameters == model.physical


def test_gradients_reach_every_parameter(model):
    load_flat(model, perturbed(model, 1, seed=3)[0])  # off zero-initialized layers
    model(*random_args(model)).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.numel() == 0 or p.grad.abs().sum() > 0, name  # arx without inputs: B empty


def test_rollout_gives_one_row_per_future_input(model):
    y_ctx, u_ctx, _, _ = random_args(model, batch=4)
    H = 6
    u_future = torch.randn(4, H, model.n_inputs, dtype=DTYPE)
    out = model.rollout(y_ctx, u_ctx, u_future, torch.full((4, H), 0.5, dtype=DTYPE))
    assert out.shape == (4, H, model.n_outputs) and torch.isfinite(out).all()
    first = model(y_ctx, u_ctx, u_future[:, 0], torch.full((4,), 0.5, dtype=DTYPE))
    torch.testing.assert_close(out[:, 0], first)


def test_config_names_the_kind(model):
    config = model.config()
    assert config["kind"] == model.kind
    assert (config["n_inputs"], config["n_outputs"]) == (model.n_inputs, model.n_outputs)


# -- physical kinds ---------------------------------------------------------------------------
TRUE_PARAMS = {
    "first_order": {"K": 2.5, "tau": 3.0, "b": -1.0},
    "thermal_rc": {"R": 0.5, "C": 20.0},
    "mass_spring_damper": {"m": 2.0, "c": 0.6, "k": 3.0},
}


def vector_field(kind, p):
    """The model equations, written out independently of the implementation."""
    if kind == "first_order":
        return lambda y, u: (p["K"] * u[0] + p["b"] - y) / p["tau"]
    if kind == "thermal_rc":
        return lambda y, u: ((u[1] - y) / p["R"] + u[0]) / p["C"]
    return lambda y, u: np.array([y[1], (u[0] - p["c"] * y[1] - p["k"] * y[0]) / p["m"]])


def simulate(f, y0, inputs, dts, substeps=400):
    """Fine-step RK4 with each input held over its interval: (N+1, n_out) states."""
    ys = [np.asarray(y0, dtype=float)]
    for u, dt in zip(inputs, dts, strict=True):
        y, h = ys[-1], dt / substeps
        for _ in range(substeps):
            k1 = f(y, u)
            k2 = f(y + h / 2 * k1, u)
            k3 = f(y + h / 2 * k2, u)
            k4 = f(y + h * k3, u)
            y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        ys.append(y)
    return np.array(ys).reshape(len(ys), -1)


@pytest.mark.parametrize("kind", sorted(TRUE_PARAMS))
def test_physical_prediction_is_exact_under_irregular_sampling(kind):
    model = make_model(kind, **TRUE_PARAMS[kind])
    rng = np.random.default_rng(0)
    N = 25
    inputs = rng.uniform(-2.0, 2.0, (N + 1, model.n_inputs))
    dts = rng.uniform(0.05, 2.5, N)
    y = simulate(vector_field(kind, TRUE_PARAMS[kind]), np.ones(model.n_outputs), inputs[:-1], dts)
    t = [torch.as_tensor(a, dtype=DTYPE) for a in (y, inputs, dts)]
    pred = model(t[0][:-1, None], t[1][:-1, None], t[1][1:], t[2])  # (N, n_out)
    np.testing.assert_allclose(pred.detach().numpy(), y[1:], rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", sorted(TRUE_PARAMS))
def test_physical_doubled_dt_equals_two_steps_under_held_input(kind):
    model = make_model(kind, **TRUE_PARAMS[kind])
    y0, u, u_now, dt = random_args(model, batch=6, seed=2)
    with torch.no_grad():
        once = model(y0, u, u_now, 2 * dt)
        half = model(y0, u, u_now, dt)
        twice = model(half[:, None], u, u_now, dt)
    torch.testing.assert_close(once, twice, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("kind", "inputs", "steady"),
    [
        ("first_order", [1.5], [2.5 * 1.5 - 1.0]),
        ("thermal_rc", [3.0, 20.0], [20.0 + 0.5 * 3.0]),
        ("mass_spring_damper", [2.0], [2.0 / 3.0, 0.0]),
    ],
)
def test_physical_rollout_settles_to_the_steady_state(kind, inputs, steady):
    model = make_model(kind, **TRUE_PARAMS[kind])
    H = 400
    u = torch.tensor(inputs, dtype=DTYPE)
    y_ctx = torch.zeros(1, 1, model.n_outputs, dtype=DTYPE)
    out = model.rollout(
        y_ctx, u.expand(1, 1, -1), u.expand(1, H, -1), torch.ones(1, H, dtype=DTYPE)
    )
    torch.testing.assert_close(out[0, -1], torch.tensor(steady, dtype=DTYPE), atol=1e-8, rtol=0)
    assert not torch.allclose(out[0, 0], out[0, -1])  # it did move


def test_physical_parameters_are_named_positive_and_bounded():
    spec = make_spec(
        "first_order", ["u"], ["y"], {"K": 2.0}, bounds={"tau": (4.0, 16.0), "b": (-1.0, 3.0)}
    )
    model = model_class("first_order").from_spec(spec)
    assert model.named_values() == pytest.approx({"K": 2.0, "tau": 8.0, "b": 0.0})
    low, high = model.raw_bounds()
    # K is open: its log is held within +-LOG_RANGE (1e-100 to 1e100), never infinite.
    torch.testing.assert_close(low, torch.tensor([-LOG_RANGE, math.log(4.0), -1.0], dtype=DTYPE))
    torch.testing.assert_close(high, torch.tensor([LOG_RANGE, math.log(16.0), 3.0], dtype=DTYPE))
    model.set_normalization([0.0], [7.0], [0.0], [1.0])
    torch.testing.assert_close(model.parameter_scales(), torch.tensor([1.0, 1.0, 7.0], dtype=DTYPE))
    load_flat(model, torch.tensor([-30.0, 5.0, -2.0], dtype=DTYPE))
    values = model.named_values()
    assert values["K"] > 0 and values["tau"] == pytest.approx(math.exp(5.0)) and values["b"] == -2.0


# -- black-box kinds --------------------------------------------------------------------------
def test_arx_follows_its_difference_equation_in_the_channels_units():
    spec = make_spec(
        "arx",
        ["u"],
        ["y"],
        {"A1[y,y]": 0.5, "A2[y,y]": 0.25, "B1[y,u]": 2.0, "B2[y,u]": -1.0, "c[y]": 0.3},
        {"na": 2, "nb": 2},
    )
    model = model_class("arx").from_spec(spec)
    y_ctx = torch.tensor([[[1.0], [2.0]]], dtype=DTYPE)  # y_{t-2}, y_{t-1}
    u_ctx = torch.tensor([[[3.0], [5.0]]], dtype=DTYPE)
    dt = torch.ones(1, dtype=DTYPE)
    expected = 0.5 * 2.0 + 0.25 * 1.0 + 2.0 * 5.0 - 1.0 * 3.0 + 0.3
    pred = model(y_ctx, u_ctx, torch.zeros(1, 1, dtype=DTYPE), dt)
    assert pred.item() == pytest.approx(expected)
    assert model(y_ctx, u_ctx, torch.full((1, 1), 9.0, dtype=DTYPE), 5 * dt).item() == pred.item()
    assert model.named_values()["B2[y,u]"] == pytest.approx(-1.0)


def test_arx_named_values_reproduce_its_predictions_under_any_scaler():
    model = make_model("arx")  # 2 inputs, 2 outputs, na=2, nb=3, non-trivial scaler
    load_flat(model, perturbed(model, 1, seed=5)[0])
    y_ctx, u_ctx, u_now, dt = random_args(model, batch=4)
    v = model.named_values()
    ys, us = ("y1", "y2"), ("u1", "u2")
    pred = np.zeros((4, 2))
    for o, yo in enumerate(ys):
        pred[:, o] = v[f"c[{yo}]"]
        for i in range(2):
            for j, yj in enumerate(ys):
                pred[:, o] += v[f"A{i + 1}[{yo},{yj}]"] * y_ctx[:, -1 - i, j].numpy()
        for i in range(3):
            for j, uj in enumerate(us):
                pred[:, o] += v[f"B{i + 1}[{yo},{uj}]"] * u_ctx[:, -1 - i, j].numpy()
    np.testing.assert_allclose(model(y_ctx, u_ctx, u_now, dt).detach().numpy(), pred, rtol=1e-10)


def test_arx_context_and_input_delay():
    def arx(na, nb, nk, inputs=("u",)):
        options = {"na": na, "nb": nb, "nk": nk}
        return model_class("arx").from_spec(make_spec("arx", inputs, ["y"], options=options))

    assert [arx(3, 2, 1).context, arx(1, 4, 1).context, arx(1, 4, 0).context] == [3, 4, 3]
    assert arx(1, 0, 1).context == 1 and arx(1, 1, 0).context == 1
    assert arx(2, 5, 1, inputs=()).context == 2  # nb is ignored without inputs
    model = arx(1, 1, 0)
    with torch.no_grad():
        model.B.fill_(1.0)
    y_ctx, u_ctx = torch.zeros(1, 1, 1, dtype=DTYPE), torch.zeros(1, 1, 1, dtype=DTYPE)
    dt = torch.ones(1, dtype=DTYPE)
    assert model(y_ctx, u_ctx, torch.full((1, 1), 2.0, dtype=DTYPE), dt).item() == 2.0


def test_mlp_starts_as_persistence_and_uses_dt():
    model = make_model("mlp")
    y_ctx, u_ctx, u_now, dt = random_args(model)
    torch.testing.assert_close(model(y_ctx, u_ctx, u_now, dt), y_ctx[:, -1], rtol=0, atol=0)
    assert model.named_values()["output_norm"] == 0.0
    assert len(model.named_values()) < 5
    load_flat(model, perturbed(model, 1)[0])
    assert not torch.allclose(model(y_ctx, u_ctx, u_now, dt), model(y_ctx, u_ctx, u_now, 2 * dt))
    assert model_class("mlp").default_learner() == "gradient"
    assert model_class("arx").default_learner() == "kalman"


def test_mlp_init_is_seeded_and_leaves_the_global_rng_alone():
    spec = make_spec("mlp", ["u"], ["y"], options={"hidden": 4})
    before = torch.get_rng_state()
    a, b = model_class("mlp").from_spec(spec), model_class("mlp").from_spec(spec)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(flat_parameters(a), flat_parameters(b))
    other = TwinSpec(spec.inputs, spec.outputs, spec.model, type(spec.learner)(seed=1))
    assert not torch.equal(flat_parameters(a), flat_parameters(model_class("mlp").from_spec(other)))
