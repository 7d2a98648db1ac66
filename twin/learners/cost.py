"""What one update will cost, known from the spec alone: a small model of memory and time.

An update evaluates the model over the learner's window (T targets) many times: pgpe scores S =
1 + 2 * popsize parameter vectors per iteration (its random directions drawn a block of
iterations at a time, so what it holds does not grow with `iterations`; its time does); gradient
takes forward and backward passes, or a Jacobian (P forward-mode tangents) for Gauss-Newton; a
drift model adds per-output T x T covariances and their Cholesky factors. `estimate` counts
these as multiply-adds ("work") and float64 values held at once, from the model's size
(parameters P, per-target work F, per-target intermediates H), the channels and the learner
options, without building a large model.

Two constants turn counts into figures, fitted by `bench/update_cost.py` on measured updates
(see docs/limits.md): SECONDS_PER_WORK and SECONDS_PER_ITERATION (the fixed cost of a torch
call sequence). Memory counts are float64 values times MEMORY_FACTOR (allocator slack and
temporaries the count leaves out). The estimate is meant to be within a few times of the truth,
which is what a budget needs: the cases it refuses are orders of magnitude above the defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from twin.spec import SpecError, TwinSpec

SECONDS_PER_WORK = 1.0e-9  # seconds per float64 multiply-add in batched torch operations
SECONDS_PER_ITERATION = 1.0e-3  # fixed cost of one learner iteration's torch calls
SECONDS_PER_STEP = 1.0e-4  # fixed cost of one step of a what-if roll
SECONDS_PER_UPDATE = 1.0e-3  # fixed cost of an update (window, objective, scale)
MEMORY_FACTOR = 3.0  # bytes held per counted float64, relative to 8
LOSS_WORK = 8  # multiply-adds per output of a target in the loss (scale, Huber, weight)
PHYSICAL_WORK = 40  # multiply-adds per output of a target in a physical model's formula
DRIFT_RATE_GRID = 15  # rates the drift "auto" estimate tries (twin.learners.walk.LOG_RATES)


@dataclass(frozen=True)
class UpdateCost:
    """One update's estimated peak memory (bytes) and time (seconds), and the model's size."""

    parameters: int
    memory_bytes: float
    seconds: float


@dataclass(frozen=True)
class Budget:
    """Limits a twin's spec must fit (None: no limit)."""

    max_channels: int | None = None
    max_parameters: int | None = None
    max_memory_bytes: float | None = None
    max_seconds: float | None = None


@dataclass(frozen=True)
class ModelSize:
    """P parameters; F multiply-adds and H float64 intermediates per target and parameter set."""

    parameters: int
    work: int
    intermediates: int
    blocks: int = 0  # sum of the squares of its parameter groups' sizes (0: one group)


def model_size(spec: TwinSpec) -> ModelSize:
    """The model's size from its kind and options (arx and mlp by formula: building a large
    one is the cost being guarded against; other kinds are small and are built)."""
    m, n_in, n_out = spec.model, len(spec.inputs), len(spec.outputs)
    o = m.options
    if m.kind == "arx":
        nb = o.get("nb", 1) if n_in else 0
        p = o.get("na", 1) * n_out * n_out + nb * n_out * n_in + n_out
        return ModelSize(p, p + n_out, 2 * n_out)
    if m.kind == "mlp":
        nb = o.get("nb", 2) if n_in else 0
        hidden, layers = o.get("hidden", 32), o.get("layers", 2)
        widths = [o.get("na", 2) * n_out + (nb + 1) * n_in + 1] + [hidden] * layers + [n_out]
        pairs = list(zip(widths[:-1], widths[1:], strict=True))
        p = sum(a * b + b for a, b in pairs)
        blocks = sum(b * (a + 1) ** 2 for a, b in pairs)  # a group per neuron (`dekf`)
        return ModelSize(p, p, 2 * sum(widths[1:]), blocks)
    from twin.models import model_class
    from twin.models.base import flat_parameters

    p = flat_parameters(model_class(m.kind).from_spec(spec)).numel()
    return ModelSize(p, PHYSICAL_WORK * n_out, 8 * n_out)


def estimate(spec: TwinSpec) -> UpdateCost:
    """One update's memory and time (see the module docstring for the model)."""
    from twin.learners import LEARNERS, learner_method

    size = model_size(spec)
    method = learner_method(spec)
    o = LEARNERS[method].resolve_options(spec.learner.options, size.parameters)
    P, F, H = size.parameters, size.work, size.intermediates
    T, O, channels = o["window"], len(spec.outputs), len(spec.inputs) + len(spec.outputs)
    iterations = o.get("iterations", 1)
    eval_work = T * (F + LOSS_WORK * O)  # one parameter set over the window
    work, values = 0.0, T * channels * 4.0  # the window, its tensors and the supervised arrays
    filters = method == "dekf"  # no window loss: the targets are folded in one by one
    walk = o.get("drift", 0) != 0 and not filters
    newton = o.get("optimizer") == "gauss_newton"
    if walk or newton:  # (T, O, P) by forward mode: P tangents through the model at once
        work += P * eval_work * 2
        values += T * O * P * 2 + P * T * H
    if walk:  # per-output (T, T) covariance, its Cholesky factor and the whitened Jacobian
        work += O * T * T * P + O * T**3 / 3 + O * T * T * P
        values += O * T * T * 3 + O * T * P
    # every few updates, the rate's likelihood on a grid of rates
    if o.get("drift") == "auto" and not filters:
        per_rate = 2 * O * T * T * P + O * T**3 / 3 + O * T * P * P + O * P**3
        work += DRIFT_RATE_GRID * per_rate
        values += O * T * T * 3 + O * T * P * 2 + O * P * P
    if method == "pgpe":
        from twin.learners.pgpe import BLOCK_SAMPLES

        S = 1 + 2 * o["popsize"]
        work += iterations * S * (eval_work + P * 4)
        values += S * T * (O * 4 + H) + S * P * 4  # one iteration's scores and samples
        # directions are drawn a block of iterations at a time: one block's are held (the
        # samples, their signed copies and the two estimate matrices)
        block = min(max(BLOCK_SAMPLES // (o["popsize"] * P), 1), iterations)
        values += block * S * P * 4
        if walk:
            work += iterations * S * O * T * T / 2
            values += S * T * O * 2
    elif newton:
        work += T * O * P * P + P**3 / 3 + iterations * 5 * 3 * eval_work
        values += P * P * 3 + T * (O * 4 + H) * 3
    elif method == "dekf":  # decoupled filters: each filter's Jacobian, its blocks' algebra
        from twin.learners.decoupled import RATES

        k = o["update_size"] + 1
        bank = len(RATES) if o.get("drift") == "auto" else 1
        blocks = size.blocks or P * P
        work += bank * (k * O * (F + LOSS_WORK * O) * 3 + k * O * blocks * 4 + k * P * 2)
        values += bank * (blocks * 3 + k * O * P * 2 + k * H)
        work += bank * SECONDS_PER_ITERATION / SECONDS_PER_WORK  # each filter's calls
    elif method != "gradient":  # filters over theta: the new targets' Jacobian, P x P algebra
        from twin.learners.kalman import RATES

        k = o["update_size"] + 1
        bank = len(RATES) if o.get("drift") == "auto" else 1  # filters run side by side
        work += k * P * (F + LOSS_WORK * O) * 2 + bank * (k * O * P * P * 2 + P**3 / 3)
        values += bank * P * P * 3 + k * O * P * 2 + P * k * H
    else:  # Adam: a forward and a backward pass per iteration
        work += iterations * 3 * eval_work
        values += T * (O * 4 + H) * 3
    seconds = SECONDS_PER_UPDATE + iterations * SECONDS_PER_ITERATION + work * SECONDS_PER_WORK
    return UpdateCost(P, values * 8 * MEMORY_FACTOR, seconds)


def whatif_cost(spec: TwinSpec, horizon: int, paths: int) -> tuple[float, float]:
    """A what-if roll of `horizon` steps over `paths` noise paths and the mean path: the float64
    values it holds and its seconds (one batched model step per horizon step)."""
    size, rows = model_size(spec), paths + 1
    values = float(horizon) * rows * len(spec.outputs) * 2
    work = float(horizon) * rows * (size.work + LOSS_WORK * len(spec.outputs))
    return values, horizon * SECONDS_PER_STEP + work * SECONDS_PER_WORK


# The options that drive an update's cost, in the order a refusal names them.
COST_OPTIONS = (
    "learner.popsize",
    "learner.iterations",
    "learner.window",
    "learner.drift",
    "learner.optimizer",
    "model.hidden",
    "model.layers",
    "model.na",
    "model.nb",
)


def check_budget(spec: TwinSpec, budget: Budget) -> UpdateCost | None:
    """Raise SpecError naming the option (or channels) and the limit a spec exceeds; return
    the estimate (None when no cost limit is set)."""
    channels = len(spec.inputs) + len(spec.outputs)
    if budget.max_channels is not None and channels > budget.max_channels:
        field = "outputs" if len(spec.outputs) > len(spec.inputs) else "inputs"
        raise SpecError(field, f"{channels} channels; the limit is {budget.max_channels} a twin")
    limits = (budget.max_parameters, budget.max_memory_bytes, budget.max_seconds)
    if all(limit is None for limit in limits):
        return None
    if budget.max_parameters is not None:
        p = model_size(spec).parameters
        if p > budget.max_parameters:
            field = _culprit(spec, lambda s: model_size(s).parameters, ("model.",))
            raise SpecError(
                field, f"the model would have {p} parameters; the limit is {budget.max_parameters}"
            )
    cost = estimate(spec)
    if budget.max_memory_bytes is not None and cost.memory_bytes > budget.max_memory_bytes:
        mb, limit = cost.memory_bytes / 2**20, budget.max_memory_bytes / 2**20
        field = _culprit(spec, lambda s: estimate(s).memory_bytes)
        raise SpecError(field, f"an update would take about {mb:.0f} MB; the limit is {limit:g} MB")
    if budget.max_seconds is not None and cost.seconds > budget.max_seconds:
        field = _culprit(spec, lambda s: estimate(s).seconds)
        raise SpecError(
            field,
            f"an update would take about {cost.seconds:.2g} s; the limit is "
            f"{budget.max_seconds:g} s",
        )
    return cost


def _culprit(spec: TwinSpec, cost, prefixes: tuple[str, ...] = ("learner.", "model.")) -> str:
    """The given option whose default would lower `cost` the most; else the outputs."""
    from dataclasses import replace

    best, best_cost = "outputs", math.inf
    for field in COST_OPTIONS:
        where, name = field.split(".")
        if not field.startswith(prefixes):
            continue
        part = spec.learner if where == "learner" else spec.model
        if name not in part.options:
            continue
        options = {k: v for k, v in part.options.items() if k != name}
        if where == "learner":
            trial = replace(spec, learner=replace(spec.learner, options=options))
        else:
            trial = replace(spec, model=replace(spec.model, options=options))
        try:
            value = cost(trial)
        except SpecError:
            continue
        if value < best_cost:
            best, best_cost = field, value
    return best
