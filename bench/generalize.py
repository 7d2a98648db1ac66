"""Generalization benchmark: the twin's learners at their defaults on a family of plants drawn at
random from seeds that no default was tuned on, against references run on the same data.

    python bench/generalize.py [--tune] [--seeds 1000-1023] [--plants N] [--quick] [--tuned]
                               [--obs N] [--jobs J] [--learners pgpe,kalman]
                               [--kinds first_order,thermal_rc | physical]

Seeds 0-999 are the tuning seeds (`--tune`: the first 24 of them, or `--seeds` among them);
1000-1999 the report seeds, and the default table is the first 24 of those (`--kinds` keeps
only the plants of those kinds or groups among them, or among `--seeds`). Each plant is fed
to a fresh twin per learner of `twin.learners.LEARNERS` through `Twin.step` in chunks of
CHUNK observations, as a client posting batches would; "default" is the learner a spec without
`learner.method` gets. The error is the excess MSE over the noise floor after WARMUP
observations, as a ratio to the informed Kalman filter's (see bench/filters.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench import filters  # noqa: E402
from bench.family import GROUPS, REPORT_SEEDS, TUNE_SEEDS, Case, draw, seeds_of, strata  # noqa: E402
from bench.report import (
    excess_mse,  # noqa: E402
    print_targets,  # noqa: E402
)
from bench.summary import print_plants, print_summary, print_tuned, targets  # noqa: E402
from bench.tuning import hand_settings  # noqa: E402
from twin.learners import LEARNERS, learner_method  # noqa: E402
from twin.replica import Twin  # noqa: E402
from twin.spec import TwinSpec  # noqa: E402

WARMUP = 200  # observations left out of every error metric
CHUNK = 5  # observations per Twin.step: a client posting batches of 5
PLANTS = 24
OBS, QUICK_OBS, QUICK_PLANTS = 2000, 800, 6
KF = "kalman (true q, r)"  # the reference every ratio is taken against
REFERENCES = ("kalman (estimated q, r)", "rls (best lam)", "river (best lr)")


@dataclass
class PlantResult:
    seed: int
    label: str
    group: str
    kf_over_floor: float  # the informed filter's excess MSE / the noise floor
    ratios: dict[str, float]  # method: excess MSE / the informed filter's
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    tuned: dict[str, tuple[float, str]] = field(default_factory=dict)  # learner: (ratio, setting)


def run_twin(case: Case, learner: dict) -> tuple[np.ndarray, float]:
    """(N, n_out) prequential predictions of a fresh twin with this learner spec, and seconds."""
    spec = {**case.spec, "learner": dict(learner)}
    twin = Twin.create(TwinSpec.from_dict(spec))
    obs = case.observations
    preds = np.full(obs.outputs.shape, np.nan)
    t0 = time.perf_counter()
    for start in range(0, len(obs), CHUNK):
        chunk = obs[start : start + CHUNK]
        preds[start : start + len(chunk)] = twin.step(chunk).predictions
    return preds, time.perf_counter() - t0


def default_learner(case: Case) -> tuple[str, bool]:
    """The method a spec without `learner.method` gets, and whether its options are those of
    that method's spec (then its run is the method's run)."""
    plain = TwinSpec.from_dict({**case.spec})
    method = learner_method(plain)
    named = TwinSpec.from_dict({**case.spec, "learner": {"method": method}})
    same = Twin.create(plain).learner.options == Twin.create(named).learner.options
    return method, same


def evaluate(
    seed: int, n: int, tuned: bool = False, learners: tuple[str, ...] = tuple(LEARNERS)
) -> PlantResult:
    """The defaults of `learners` (all by default), the default learner and every reference
    on the plant of `seed`."""
    torch.set_num_threads(1)
    case = draw(seed, n)
    oracle = case.oracle[WARMUP:]

    def excess(preds: np.ndarray) -> float:
        if np.isnan(preds[WARMUP:]).all():
            return np.inf
        value = excess_mse(preds[WARMUP:], oracle)
        return value if np.isfinite(value) else np.inf

    runs, seconds, notes = {}, {}, []
    t0 = time.perf_counter()
    runs[KF], factor = filters.informed(case, excess)
    if factor != 1.0:
        notes.append(f"informed q x{factor:g}")
    runs["kalman (estimated q, r)"] = filters.estimated(case)
    runs["rls (best lam)"], lam = filters.rls_best(case, excess)
    runs["river (best lr)"], lr = filters.river_best(case, excess)
    notes.append(f"rls lam={lam}, river lr={lr}")
    seconds["references"] = time.perf_counter() - t0
    for method in learners:
        runs[method], seconds[method] = _guarded(case, {"method": method}, notes, method)
    method, same = default_learner(case)
    if same and method in runs:
        runs["default"] = runs[method]
    else:
        runs["default"], seconds["default"] = _guarded(case, {}, notes, "default")
    notes.append(f"default: {method}")
    ref = excess(runs[KF])
    ratios = excess_ratios(runs, case.oracle)
    result = PlantResult(seed, case.label, case.group, ref / case.noise_var.mean(), ratios)
    result.notes, result.seconds = notes, seconds
    if tuned:
        for method in learners:
            result.tuned[method] = _best_hand_setting(case, method, excess, ref)
    return result


def excess_ratios(runs: dict[str, np.ndarray], oracle: np.ndarray) -> dict[str, float]:
    """{method: excess MSE after WARMUP / the informed filter's} for every run but runs[KF];
    predictions (N, n_out) with NaN where none was made; a run with none counts as inf."""

    def excess(preds: np.ndarray) -> float:
        if np.isnan(preds[WARMUP:]).all():
            return np.inf
        value = excess_mse(preds[WARMUP:], oracle[WARMUP:])
        return value if np.isfinite(value) else np.inf

    ref = excess(runs[KF])
    return {name: excess(p) / ref for name, p in runs.items() if name != KF}


def _guarded(case: Case, learner: dict, notes: list[str], name: str) -> tuple[np.ndarray, float]:
    """run_twin, or NaN predictions and a note when the learner fails on this plant."""
    try:
        return run_twin(case, learner)
    except Exception as exc:  # a learner's failure is a result to print, not a crash
        notes.append(f"{name} failed: {type(exc).__name__}: {exc}")
        return np.full(case.observations.outputs.shape, np.nan), 0.0


def _best_hand_setting(case: Case, method: str, excess, ref: float) -> tuple[float, str]:
    """The lowest ratio over the learner's hand settings on this plant, and that setting."""
    best = (np.inf, "-")
    for setting in hand_settings(method):
        preds, _ = _guarded(case, {"method": method, **setting}, [], method)
        ratio = excess(preds) / ref
        if ratio < best[0]:
            best = (ratio, ", ".join(f"{k}={v}" for k, v in setting.items()))
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tune", action="store_true", help="use the tuning seeds (0-999)")
    parser.add_argument("--seeds", help="seeds, e.g. 1000-1023 or 3,5,8 (within the chosen set)")
    parser.add_argument("--plants", type=int, help=f"number of plants (default {PLANTS})")
    parser.add_argument("--obs", type=int, help=f"observations per plant (default {OBS})")
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_PLANTS} plants of {QUICK_OBS} observations"
    )
    parser.add_argument(
        "--tuned", action="store_true", help="also grid-search hand settings of every learner"
    )
    parser.add_argument("--jobs", type=int, default=1, help="plants run in parallel processes")
    parser.add_argument(
        "--learners", help=f"learners to run, comma-separated (default: all, {','.join(LEARNERS)})"
    )
    parser.add_argument(
        "--kinds",
        help=f"plant kinds or groups to keep, comma-separated (default: all; kinds "
        f"{','.join(GROUPS)}; groups {','.join(sorted(set(GROUPS.values())))})",
    )
    args = parser.parse_args(argv)
    learners = tuple(args.learners.split(",")) if args.learners else tuple(LEARNERS)
    unknown = [m for m in learners if m not in LEARNERS]
    if unknown:
        parser.error(f"unknown learners {unknown}; known: {', '.join(LEARNERS)}")
    pool, name = (TUNE_SEEDS, "TUNING") if args.tune else (REPORT_SEEDS, "REPORT")
    count = args.plants or (QUICK_PLANTS if args.quick else PLANTS)
    kinds = _kinds(parser, args.kinds)
    of_kinds = [s for s in pool if strata(s)["kind"] in kinds]
    seeds = seeds_of(args.seeds) if args.seeds else of_kinds[:count]
    outside = [s for s in seeds if s not in pool]
    if outside:
        other = "report" if args.tune else "tuning"
        parser.error(f"seeds {outside} are {other} seeds; {name.lower()} seeds are {_span(pool)}")
    seeds = [s for s in seeds if strata(s)["kind"] in kinds]
    if not seeds:
        parser.error(f"no seed of the kinds {sorted(kinds)} among those chosen")
    n = args.obs or (QUICK_OBS if args.quick else OBS)
    print(
        f"Generalization benchmark on {name} seeds {_compact(seeds)} ({len(seeds)} plants, {n} "
        f"observations each, the first {WARMUP} left out).\n"
        f"Tuning seeds are {_span(TUNE_SEEDS)}, report seeds {_span(REPORT_SEEDS)}: "
        + (
            "defaults may be tuned on these.\n"
            if args.tune
            else "no default was tuned on these plants.\n"
        )
        + f"Twins: learners of twin.learners at their defaults ({', '.join(learners)}) and "
        f"'default' (a spec without learner.method), fed in chunks of {CHUNK}.\n"
        f"Figures: excess MSE over the noise floor / the informed Kalman filter's ('{KF}').\n"
    )
    t0 = time.perf_counter()
    results = _run_all(seeds, n, args.tuned, args.jobs, learners)
    methods = ["default", *learners, *REFERENCES]
    print_plants(results, methods)
    print_summary(results, methods)
    if args.tuned:
        print_tuned(results, list(learners))
    print_targets(targets(results))
    print(f"\n{time.perf_counter() - t0:.0f} s on {os.cpu_count()} cores, {args.jobs} job(s)")


def _kinds(parser: argparse.ArgumentParser, text: str | None) -> set[str]:
    """The plant kinds `--kinds` names, directly or by group (all kinds when not given)."""
    if not text:
        return set(GROUPS)
    kinds = set()
    for name in text.split(","):
        named = {k for k, group in GROUPS.items() if name in (k, group)}
        if not named:
            parser.error(f"unknown kind or group {name!r}; kinds: {', '.join(GROUPS)}")
        kinds |= named
    return kinds


def _run_all(
    seeds: list[int], n: int, tuned: bool, jobs: int, learners: tuple[str, ...]
) -> list[PlantResult]:
    if jobs <= 1:
        return [_progress(evaluate(s, n, tuned, learners)) for s in seeds]
    with ProcessPoolExecutor(max_workers=jobs) as ex:
        futures = [ex.submit(evaluate, s, n, tuned, learners) for s in seeds]
        return [_progress(f.result()) for f in futures]


def _progress(result: PlantResult) -> PlantResult:
    took = ", ".join(f"{k} {v:.0f}s" for k, v in result.seconds.items())
    ratios = ", ".join(f"{k} {v:.3g}" for k, v in result.ratios.items())
    print(f"  plant {result.label}: {took}; ratios {ratios}", file=sys.stderr, flush=True)
    return result


def _span(seeds: range) -> str:
    return f"{seeds.start}-{seeds.stop - 1}"


def _compact(seeds: list[int]) -> str:
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    return ",".join(map(str, seeds))


if __name__ == "__main__":
    main()
