"""A family of plants drawn at random from a seed, for a benchmark that cannot be overfit.

Seed s draws one plant. What the family must cover is stratified over s mod 24, so any 24
consecutive seeds hold every combination of kind and drift shape, every drift-rate and
noise-to-signal stratum once, every input signal and both samplings; everything else (the
parameters, which of them drift, the step's time and size, the season's period, the value
within each stratum) comes from `np.random.default_rng(s)`.

Seeds 0-999 are for tuning, 1000-1999 for reporting: defaults are tuned on the first and judged
on the second, and the benchmark refuses to mix them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bench.discrete import arx_coefficients, identity, input_signal, saturation, simulate
from twin.observations import Observations
from twin.plants import Drift, FirstOrderPlant, MassSpringDamperPlant, ThermalRCPlant

TUNE_SEEDS = range(0, 1000)
REPORT_SEEDS = range(1000, 2000)
STRATA = 24
KINDS = ("arx", "first_order", "thermal_rc", "arx", "mass_spring_damper", "hammerstein")
GROUPS = {
    "arx": "linear",
    "first_order": "physical",
    "thermal_rc": "physical",
    "mass_spring_damper": "physical",
    "hammerstein": "nonlinear",
}
SHAPES = ("walk", "step", "ramp", "seasonal")  # step, ramp and season come on top of the walk
SIGNALS = {"steps": (40, 200), "prbs": (4, 30), "noise": (1, 1)}  # input levels held this long
RATES = (10**-5.1, 10**-1.8)  # random-walk std per observation (log space for positive params)
NSRS = (10**-3.1, 10**0.1)  # process-noise std / std of the noise-free output
JITTER = (0.3, 0.8)  # irregular sampling: dt * U(1 - jitter, 1 + jitter)
PHYSICAL = {
    "first_order": FirstOrderPlant,
    "thermal_rc": ThermalRCPlant,
    "mass_spring_damper": MassSpringDamperPlant,
}
# The twin's model for the Hammerstein plant: a small neural NARX (the arx kind cannot bend).
HAMMERSTEIN_MODEL = {"kind": "mlp", "na": 1, "nb": 1, "hidden": 16, "layers": 1}


@dataclass
class Case:
    """One drawn plant, simulated, with what the references need.

    `truth` (N, d) holds the parameters in force at each observation in the filters'
    coordinates (log for positive physical parameters, else as they are); `measure(k, thetas)`
    is the noise-free one-step prediction of observation k from the observations before it,
    for a batch of parameter vectors (B, d) -> (B, n_out). `regressors` (N, p) are the linear
    features a structure-blind tracker (RLS, river) gets: the ARX regressors of the twin's
    orders (NaN rows where there is no prediction).
    """

    seed: int
    kind: str
    shape: str
    rate: float
    nsr: float
    signal: str
    jitter: float
    observations: Observations
    oracle: np.ndarray  # (N, n_out)
    noise_var: np.ndarray  # (n_out,) the process noise variance: the noise floor per output
    spec: dict  # the twin's spec, learner left out
    truth: np.ndarray  # (N, d)
    measure: Callable[[int, np.ndarray], np.ndarray]
    regressors: np.ndarray  # (N, p)
    structure: str  # e.g. "arx(2,1) 2 inputs"

    @property
    def group(self) -> str:
        return GROUPS[self.kind]

    @property
    def label(self) -> str:
        sampling = f"irregular {self.jitter:.1f}" if self.jitter else "regular"
        return (
            f"{self.seed} {self.structure}, {self.shape} q={self.rate:.0e}, "
            f"nsr={self.nsr:.0e}, {self.signal}, {sampling}"
        )


def strata(seed: int) -> dict:
    """The seed's cell of the design: a function of seed mod STRATA only."""
    r = seed % STRATA
    k, j = r % len(KINDS), r // len(KINDS)  # kind, shape
    return {
        "kind": KINDS[k],
        "shape": SHAPES[j % len(SHAPES)],
        "rate_stratum": (7 * r) % STRATA,  # 7 and 5 are prime to 24: each stratum once
        "nsr_stratum": (5 * r + 3) % STRATA,
        "signal": list(SIGNALS)[(k + j) % len(SIGNALS)],
        "irregular": GROUPS[KINDS[k]] == "physical" and (k + j) % 2 == 1,
        "na": 1 + (j + k) % 3,  # arx: autoregressive order
        "n_in": 1 + (j + k // 3) % 2,  # arx: inputs
    }


def draw(seed: int, n: int) -> Case:
    """The plant of `seed`, simulated over n observations."""
    cell = strata(seed)
    rng = np.random.default_rng(seed)
    rate = _log_uniform(rng, RATES, cell["rate_stratum"])
    nsr = _log_uniform(rng, NSRS, cell["nsr_stratum"])
    jitter = float(rng.uniform(*JITTER)) if cell["irregular"] else 0.0
    args = (seed, cell, rng, rate, nsr, jitter, n)
    return _physical(*args) if cell["kind"] in PHYSICAL else _discrete(*args)


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float], stratum: int) -> float:
    lo, hi = np.log10(bounds)
    return float(10 ** (lo + (hi - lo) * (stratum + rng.uniform()) / STRATA))


def drifts(rng: np.random.Generator, names: list[str], shape: str, rate: float, n: int) -> dict:
    """{name: [Drift, ...]}: a random walk of `rate` on each parameter with probability 0.6 (at
    least one), and the shape's event (a step of 15-40%, a ramp of 15-40% over the run or a
    season of 10-25% with 2-6 periods in the run) on one parameter drawn from `names`."""
    walking = [name for name in names if rng.uniform() < 0.6] or [str(rng.choice(names))]
    out = {name: [Drift.random_walk(rate)] for name in walking}
    target = str(rng.choice(names))
    sign = 1.0 if rng.uniform() < 0.5 else -1.0
    if shape == "step":
        at = int(rng.integers(n // 3, 2 * n // 3))
        event = Drift.step(at, float(np.exp(sign * rng.uniform(np.log(1.15), np.log(1.4)))))
    elif shape == "ramp":
        event = Drift.ramp(sign * rng.uniform(0.15, 0.4) / n)
    elif shape == "seasonal":
        event = Drift.seasonal(float(rng.uniform(0.1, 0.25)), n / float(rng.uniform(2.0, 6.0)))
    else:
        return out
    out.setdefault(target, []).append(event)
    return out


# -- physical plants (twin.plants) ------------------------------------------------------------
def _physical_params(kind: str, rng: np.random.Generator) -> dict[str, float]:
    def log_u(lo: float, hi: float) -> float:
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))

    if kind == "first_order":
        sign = 1.0 if rng.uniform() < 0.5 else -1.0
        return {"K": log_u(0.5, 4.0), "tau": log_u(3.0, 40.0), "b": sign * log_u(0.2, 2.0)}
    if kind == "thermal_rc":
        R, tau = log_u(0.01, 0.1), log_u(50.0, 1500.0)  # K/W and seconds (dt is 10 s)
        return {"R": R, "C": tau / R}
    m, wn, zeta = log_u(0.5, 2.0), log_u(0.8, 3.0), log_u(0.1, 0.7)
    return {"m": m, "c": 2 * zeta * m * wn, "k": m * wn**2}


def _physical(seed, cell, rng, rate, nsr, jitter, n) -> Case:
    kind = cell["kind"]
    cls = PHYSICAL[kind]
    params = _physical_params(kind, rng)
    drift = drifts(rng, list(params), cell["shape"], rate, n)
    common = dict(jitter=jitter, hold=SIGNALS[cell["signal"]], drift=drift)
    quiet = cls(**params, noise=0.0, **common).simulate(n, seed=seed)
    noise = nsr * quiet.observations.outputs.std(axis=0)  # (n_out,)
    plant = cls(**params, noise=noise, **common)
    sim = plant.simulate(n, seed=seed)
    obs = sim.observations
    names = list(params)
    positive = [name in cls.positive for name in names]
    truth = np.column_stack(
        [
            np.log(sim.params[p]) if pos else sim.params[p]
            for p, pos in zip(names, positive, strict=True)
        ]
    )
    dt = np.diff(obs.ts, prepend=obs.ts[0])

    def measure(k: int, thetas: np.ndarray) -> np.ndarray:
        values = {
            p: np.exp(thetas[:, i]) if positive[i] else thetas[:, i] for i, p in enumerate(names)
        }
        phi, gamma = plant._transition(values, np.full(thetas.shape[0], dt[k]))
        drive = np.append(obs.inputs[k - 1], 1.0)
        return phi @ obs.outputs[k - 1] + gamma @ drive

    regressors = np.hstack([obs.outputs, obs.inputs, np.ones((n, 1))])  # row k-1 predicts k
    regressors = np.vstack([np.full((1, regressors.shape[1]), np.nan), regressors[:-1]])
    return Case(
        seed, kind, cell["shape"], rate, nsr, cell["signal"], jitter, obs, sim.oracle,
        noise**2, plant.spec_dict(), truth, measure, regressors, kind,
    )  # fmt: skip


# -- discrete-time plants (bench.discrete) ----------------------------------------------------
def _discrete(seed, cell, rng, rate, nsr, jitter, n) -> Case:
    hammerstein = cell["kind"] == "hammerstein"
    na, n_in = (1, 1) if hammerstein else (cell["na"], cell["n_in"])
    nb = 1 if hammerstein else int(rng.integers(1, na + 1))
    taus = np.exp(rng.uniform(np.log(1.5), np.log(20.0), na))
    sum_a = arx_sum(taus)
    dc = np.exp(rng.uniform(np.log(0.5), np.log(2.0), n_in)) * rng.choice([-1.0, 1.0], n_in)
    gains = dc[:, None] * (1.0 - sum_a) * rng.dirichlet(np.ones(nb), n_in)  # (n_in, nb)
    c = float(rng.uniform(0.2, 1.0) * rng.choice([-1.0, 1.0]))
    names = [f"tau{i + 1}" for i in range(na)]
    names += [f"B{j + 1}_{l + 1}" for j in range(n_in) for l in range(nb)] + ["c"]
    drift = drifts(rng, names, cell["shape"], rate, n)
    u = input_signal(rng, n, n_in, SIGNALS[cell["signal"]])
    paths_seed = int(rng.integers(2**63))  # the same parameter paths twice: without, with noise
    mapping = saturation if hammerstein else identity
    quiet = simulate(list(taus), gains, c, drift, 0.0, u, paths_seed, mapping)
    noise = nsr * float(np.nanstd(quiet.outputs[max(na, nb) :]))
    sim = simulate(list(taus), gains, c, drift, noise, u, paths_seed, mapping)
    inputs = [f"u{j + 1}" for j in range(n_in)]
    if hammerstein:
        model = dict(HAMMERSTEIN_MODEL)
        regressors = np.full((n, 3), np.nan)  # [y, u, 1] at lag 1: the linear view
        regressors[1:] = np.column_stack([sim.outputs[:-1, 0], u[:-1, 0], np.ones(n - 1)])
        structure = "hammerstein (mlp twin)"
    else:
        model = {"kind": "arx", "na": na, "nb": nb, "nk": 1}
        regressors = sim.features
        structure = f"arx({na},{nb}) {n_in} input{'s' if n_in > 1 else ''}"
    features = sim.features

    def measure(k: int, thetas: np.ndarray) -> np.ndarray:
        return thetas @ features[k][:, None]  # (B, 1)

    obs = Observations(np.arange(n, dtype=float) + 1.7e9, u, sim.outputs)
    spec = {"inputs": inputs, "outputs": ["y"], "model": model}
    return Case(
        seed, cell["kind"], cell["shape"], rate, nsr, cell["signal"], jitter, obs, sim.oracle,
        np.array([noise**2]), spec, sim.truth, measure, regressors, structure,
    )  # fmt: skip


def arx_sum(taus: np.ndarray) -> float:
    """Sum of the autoregressive coefficients of the poles exp(-1 / taus)."""
    return float(arx_coefficients(np.asarray(taus)[None]).sum())


def seeds_of(text: str) -> list[int]:
    """'1000-1023' or '3,5,8' (or a mix) as a list of seeds."""
    out = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return out
