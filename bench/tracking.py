"""Tracking benchmark: how closely the twin's learners follow drifting plants, against classical
online trackers (Kalman filter, RLS, NLMS, river) run on the same simulated data.

    python bench/tracking.py [--quick] [--seed N] [--seeds 0,1,2,3] [--cold]

Prints one table per plant, the linear plants' ratios to the Kalman filter over several seeds,
the timing of one pgpe update, and the targets with PASS/MISS. The references are tuned on
another seed than the one reported; the first WARMUP observations are left out of every error
metric.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.references import (  # noqa: E402
    NLMS,
    RLS,
    KalmanFilter,
    RiverLinear,
    arx_regression,
    run_online,
)
from bench.report import (  # noqa: E402
    Row,
    excess_mse,
    excess_ratio,
    print_table,
    print_targets,
    recovery_text,
    rel_param_error,
)
from bench.seeds import check_targets, print_seed_tables  # noqa: E402
from bench.timing import print_timing, time_pgpe_update  # noqa: E402
from twin.plants import (  # noqa: E402
    Drift,
    FirstOrderPlant,
    LinearPlant,
    MassSpringDamperPlant,
    ThermalRCPlant,
)
from twin.replica import Twin  # noqa: E402
from twin.spec import TwinSpec  # noqa: E402

torch.set_num_threads(2)  # the benchmark machine has 2 cores; timings assume it

WARMUP = 200  # observations excluded from every error metric
TUNE_SEED_OFFSET = 1000  # references are tuned on seed + this, reported on seed
RLS_LAMS = (0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 1.0)
NLMS_MUS = (0.01, 0.03, 0.1, 0.3, 1.0)
RIVER_LRS = (0.003, 0.01, 0.02, 0.04, 0.07)
KF_LABEL = "kalman (true q, r)"
KF_SMOOTH_LABEL = "kalman (drift q, r)"
KF_QS = (1e-12, 1e-10, 1e-8, 1e-6, 1e-4)  # q I tried on the physical plants (no true q)
# The twins in every table: each learner at its defaults (for these small models, gradient
# fits the random-walk drift model at an estimated rate with Gauss-Newton steps), and gradient
# with exponential forgetting and Adam (its defaults for large models) for comparison.
FORGETTING_LABEL = "gradient, forgetting"
LEARNERS = ("pgpe", "gradient")  # the targets are theirs
TWINS = {
    "pgpe": {"method": "pgpe"},
    "gradient": {"method": "gradient"},
    FORGETTING_LABEL: {"method": "gradient", "drift": 0, "optimizer": "adam"},
}
GUESS_OFF = 1.3  # a physical twin's initial parameters: true values times 1.3, 1/1.3, 1.3, ...


@dataclass
class Scenario:
    label: str  # short name for the targets
    name: str
    plant: object
    linear: bool  # an ARX(1,1) plant: the Kalman filter with the true q is the reference
    step_at: int | None = None  # observation index of an abrupt change, for the recovery column
    # The Kalman filter's q: the random walk of this plant's parameters (default: the plant
    # itself). The step plant's filter is tuned for smooth drift, as a filter in service would
    # be: it gets the random-walk plant's q and is not told about the step.
    kf_plant: object | None = None


@dataclass
class Run:
    method: str
    preds: np.ndarray  # (N, n_out) prequential one-step predictions, NaN where none
    seconds: float
    param_error: float | None = None
    setting: str = ""


def scenarios(n: int) -> list[Scenario]:
    half = n // 2
    walk_a = [Drift.random_walk(0.003)]  # log-space: a stays below ~0.86 for 40 seeds of 4000
    walk_b = [Drift.random_walk(0.004)]
    # the step plants' inputs stay away from zero, so a step in a gain shows at once
    step_b, step_k = {"b": [Drift.step(half, 1.3)]}, {"K": [Drift.step(half, 1.3)]}
    return [
        Scenario(
            "linear random walk",
            "linear ARX(1,1), random-walk drift in a and b",
            LinearPlant(a=0.6, b=0.8, c=0.3, drift={"a": walk_a, "b": walk_b}),
            linear=True,
        ),
        Scenario(
            "linear step",
            "linear ARX(1,1), 30% step in b halfway, input mean 2",
            LinearPlant(a=0.6, b=0.8, c=0.3, input_mean=2.0, drift=step_b),
            linear=True,
            step_at=half,
            kf_plant=LinearPlant(a=0.6, b=0.8, c=0.3, drift={"a": walk_a, "b": walk_b}),
        ),
        Scenario(
            "first-order drift",
            "first-order, slow drift (tau ramps +30%, K random walk), jitter 0.5",
            FirstOrderPlant(
                jitter=0.5,
                drift={"tau": [Drift.ramp(0.3 / n)], "K": [Drift.random_walk(0.002)]},
            ),
            linear=False,
        ),
        Scenario(
            "thermal RC",
            "thermal RC, fouling (R ramps +30%), jitter 0.5",
            ThermalRCPlant(jitter=0.5, drift={"R": [Drift.ramp(0.3 / n)]}),
            linear=False,
        ),
        Scenario(
            "mass-spring-damper",
            "mass-spring-damper, random-walk drift in c, jitter 0.5",
            MassSpringDamperPlant(jitter=0.5, drift={"c": [Drift.random_walk(0.005)]}),
            linear=False,
        ),
        Scenario(
            "first-order step",
            "first-order (tau 4 s, input mean 2), 30% step in K halfway, jitter 0.5",
            FirstOrderPlant(tau=4.0, input_mean=2.0, jitter=0.5, drift=step_k),
            linear=False,
            step_at=half,
        ),
    ]


# -- methods --------------------------------------------------------------------------------------
def run_twin(sim, label: str, linear: bool, cold: bool, learner: dict | None = None) -> Run:
    """Feed the simulation to the twin TWINS[label] (or one with the `learner` spec) in chunks of
    its update_size, as the calibrator would.

    A physical twin starts from a guess GUESS_OFF away from the true initial parameters (as
    from a datasheet), or with `cold` from none (the twin guesses); an arx twin from zeros.
    """
    spec = sim.spec_dict()
    if not (linear or cold):
        factors = [GUESS_OFF, 1 / GUESS_OFF] * len(sim.params)
        guess = {p: v[0] * f for (p, v), f in zip(sim.params.items(), factors, strict=False)}
        spec["model"]["params"] = guess
    spec["learner"] = dict(TWINS[label] if learner is None else learner)
    twin = Twin.create(TwinSpec.from_dict(spec))
    obs = sim.observations
    preds = np.full(obs.outputs.shape, np.nan)
    in_force = []  # (start, stop, named values) used to predict obs[start:stop]
    seconds = 0.0
    for start in range(0, len(obs), twin.update_size):
        chunk = obs[start : start + twin.update_size]
        in_force.append((start, start + len(chunk), twin.parameters()))
        t0 = time.perf_counter()
        result = twin.step(chunk)
        seconds += time.perf_counter() - t0
        preds[start : start + len(chunk)] = result.predictions
    names = _twin_names(spec) if linear else {p: p for p in sim.params}
    hat = np.full((len(obs), len(names)), np.nan)  # (N, P) estimates in force at each obs
    for start, stop, values in in_force:
        hat[start:stop] = [values[twin_name] for twin_name in names.values()]
    truth = np.column_stack([sim.params[p] for p in names])  # (N, P)
    return Run(label, preds, seconds, rel_param_error(hat[WARMUP:], truth[WARMUP:]))


def _twin_names(spec: dict) -> dict[str, str]:
    """{LinearPlant parameter: the arx twin's named value}."""
    y, u = spec["outputs"][0], spec["inputs"][0]
    return {"a": f"A1[{y},{y}]", "b": f"B1[{y},{u}]", "c": f"c[{y}]"}


def run_reference(name: str, make, sim, linear: bool, setting: str = "") -> Run:
    obs = sim.observations
    phi, targets = arx_regression(obs.inputs, obs.outputs)
    t0 = time.perf_counter()
    preds, thetas = run_online(make, phi, targets)
    seconds = time.perf_counter() - t0
    error = None
    if linear and thetas[0] is not None:
        truth = np.column_stack([sim.params[p][1:] for p in ("a", "b", "c")])  # (N-1, 3)
        error = rel_param_error(thetas[0][WARMUP - 1 :], truth[WARMUP - 1 :])
    full = np.vstack([np.full((1, targets.shape[1]), np.nan), preds])  # (N, n_out)
    return Run(name, full, seconds, error, setting)


def kalman(sc: Scenario, sim, q):
    """`make` for run_reference: per output j, a Kalman filter with random-walk variance q and
    output j's noise variance, from zero."""
    r = (sc.plant.noise * sc.plant.output_scale) ** 2  # (n_out,) each output's noise variance
    n_features = sim.observations.outputs.shape[1] + sim.observations.inputs.shape[1] + 1
    return lambda j: KalmanFilter(q, r[j], np.zeros(n_features), 10.0)


def kalman_run(sc: Scenario, sim, n: int, seed: int) -> Run:
    """The linear scenario's reference: a Kalman filter given the per-parameter variance of the
    random walk (the plant's own, or on the step plant the random-walk plant's) and the noise."""
    q = true_q(sim if sc.kf_plant is None else sc.kf_plant.simulate(n, seed=seed))
    setting = "q=" + ",".join(f"{v:.1e}" for v in q)
    label = KF_LABEL if sc.kf_plant is None else KF_SMOOTH_LABEL
    return run_reference(label, kalman(sc, sim, q), sim, True, setting)


def true_q(sim) -> np.ndarray:
    """Per-step variance of the true a, b, c increments: the random walk the plant really did."""
    return np.array([np.mean(np.diff(sim.params[p]) ** 2) for p in ("a", "b", "c")])


def mse(sim, preds: np.ndarray) -> float:
    """Post-warm-up mean squared one-step error, averaged over outputs."""
    return float(np.nanmean((sim.observations.outputs[WARMUP:] - preds[WARMUP:]) ** 2))


def tune(make_for, grid, sim, linear: bool):
    """The grid value whose reference has the lowest post-warm-up MSE on `sim`."""
    scores = [mse(sim, run_reference("", make_for(v), sim, linear).preds) for v in grid]
    return grid[int(np.argmin(scores))]


def run_scenario(sc: Scenario, n: int, seed: int, cold: bool) -> tuple[list[Row], str]:
    """All methods on one simulation of the scenario; references tuned on another seed."""
    sim = sc.plant.simulate(n, seed=seed)
    tune_sim = sc.plant.simulate(n, seed=seed + TUNE_SEED_OFFSET)
    lam = tune(lambda v: lambda j: RLS(v), RLS_LAMS, tune_sim, sc.linear)
    mu = tune(lambda v: lambda j: NLMS(v), NLMS_MUS, tune_sim, sc.linear)
    lr = tune(lambda v: lambda j: RiverLinear(v), RIVER_LRS, tune_sim, sc.linear)
    runs = [run_twin(sim, label, sc.linear, cold) for label in TWINS]
    if sc.linear:
        runs.append(kalman_run(sc, sim, n, seed))
        if sc.step_at is not None:
            make = kalman(sc, sim, 0.0)
            runs.append(run_reference("kalman (q=0)", make, sim, True, "stationary"))
        tuned = ""
    else:
        q = tune(lambda v: kalman(sc, tune_sim, v), KF_QS, tune_sim, False)
        runs.append(run_reference("kalman (tuned q)", kalman(sc, sim, q), sim, False, f"q={q:.0e}"))
        tuned = f", kalman q={q:.0e}"
    runs += [
        run_reference("rls", lambda j: RLS(lam), sim, sc.linear, f"lam={lam}"),
        run_reference("nlms", lambda j: NLMS(mu), sim, sc.linear, f"mu={mu}"),
        run_reference("river", lambda j: RiverLinear(lr), sim, sc.linear, f"lr={lr}"),
    ]
    note = (
        f"references' settings chosen on seed {seed + TUNE_SEED_OFFSET}: "
        f"rls lam={lam}, nlms mu={mu}, river lr={lr}{tuned}"
    )
    return score(sc, sim, runs), note


def score(sc: Scenario, sim, runs: list[Run]) -> list[Row]:
    """Table rows: errors against the scenario's reference (Kalman on linear plants, else RLS)."""
    floor = sim.noise_floor
    labels = (KF_LABEL, KF_SMOOTH_LABEL) if sc.linear else ("rls",)
    ref = next(r for r in runs if r.method in labels)
    ref_excess = excess_mse(ref.preds[WARMUP:], sim.oracle[WARMUP:])
    n = sim.observations.outputs.shape[0]
    rows = []
    for run in runs:
        sq_err = np.mean((sim.observations.outputs - run.preds) ** 2, axis=1)  # (N,)
        rows.append(
            Row(
                run.method,
                excess_ratio(excess_mse(run.preds[WARMUP:], sim.oracle[WARMUP:]), ref_excess),
                mse(sim, run.preds) / floor,
                run.param_error,
                "-" if sc.step_at is None else recovery_text(sq_err, sc.step_at, floor),
                n / run.seconds if run.seconds > 0 else float("inf"),
                run.setting,
            )
        )
    return rows


def linear_ratios(linear, seeds, n: int, done_seed: int, results) -> dict[str, dict]:
    """The linear plants over `seeds`:
    {scenario label: {twin label: [excess MSE ratio vs the scenario's Kalman filter, by seed]}},
    reusing the tables' runs for `done_seed`."""
    done = {sc.label: rows for sc, rows in results}
    out = {}
    for sc in linear:
        per_twin = {label: [] for label in TWINS}
        for seed in seeds:
            if seed == done_seed:
                for label, ratios in per_twin.items():
                    ratios.append(done[sc.label][label].excess_ratio)
                continue
            sim = sc.plant.simulate(n, seed=seed)
            oracle = sim.oracle[WARMUP:]
            kf = kalman_run(sc, sim, n, seed)
            ref = excess_mse(kf.preds[WARMUP:], oracle)
            for label, ratios in per_twin.items():
                run = run_twin(sim, label, True, False)
                ratios.append(excess_mse(run.preds[WARMUP:], oracle) / ref)
        out[sc.label] = per_twin
    return out


# -- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer observations (~2 min)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--seeds",
        default=None,
        help="seeds of the linear plants' ratio table (default 0,1,2,3; --quick: --seed only)",
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="physical twins get no initial parameters (the twin makes its own first guess)",
    )
    args = parser.parse_args(argv)
    n = 1500 if args.quick else 4000
    guess = f"the true values x{GUESS_OFF:g}, /{GUESS_OFF:g}, ..."
    start = "their own first guess from the data" if args.cold else guess
    print(
        f"Tracking benchmark, seed {args.seed}, torch threads {torch.get_num_threads()}. Twins "
        f"use default learner options ('{FORGETTING_LABEL}': gradient with drift 0 and Adam, its\n"
        f"defaults for large models); physical twins start from {start}; arx twins and the "
        "references start from zero. KF 'true q': per parameter, the mean squared step of the "
        "plant's true parameter path (on the step plant: the random-walk plant's path, a filter\n"
        "tuned for smooth drift); r: the noise variance.\n"
    )
    results = []
    for sc in scenarios(n):
        t0 = time.perf_counter()
        rows, note = run_scenario(sc, n, args.seed, args.cold)
        ref = "Kalman filter (drift q, r)" if sc.kf_plant else "Kalman filter (true q, r)"
        ref = ref if sc.linear else "RLS"
        title = (
            f"{sc.name}: {n} obs, the first {WARMUP} skipped in error metrics; "
            f"excess MSE ratio vs {ref}"
        )
        print_table(title, rows)
        print(f"  {note} ({time.perf_counter() - t0:.0f} s)\n")
        results.append((sc, {r.method: r for r in rows}))
    default = str(args.seed) if args.quick else "0,1,2,3"
    seeds = [int(v) for v in (args.seeds or default).split(",")]
    ratios = linear_ratios([sc for sc, _ in results if sc.linear], seeds, n, args.seed, results)
    print_seed_tables(ratios, seeds)
    timing = time_pgpe_update(args.seed)
    print_timing(timing)
    print_targets(check_targets(results, ratios, timing, LEARNERS))


if __name__ == "__main__":
    main()
