"""How close `twin.learners.cost.estimate` comes to what an update costs, on this machine.

Each configuration runs in its own process: after a warm-up learner (torch's one-time costs),
a fresh learner's window is filled, then one update is timed (the first, which also runs the
drift "auto" estimate where there is one: the worst) and its peak memory read as the rise of
the process's peak RSS over its RSS before the update; two more updates give the best time.
The table prints the estimate beside each measurement; the constants of
`twin/learners/cost.py` are fitted from it (figures in docs/limits.md).

    python -m bench.update_cost            # the whole table (about a minute)
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

CONFIGS: list[tuple[str, dict]] = [
    ("thermal_rc, defaults", {"model": {"kind": "thermal_rc"}}),
    (
        "msd gradient, defaults",
        {"outputs": 2, "model": {"kind": "mass_spring_damper"}, "learner": {"method": "gradient"}},
    ),
    ("arx 4 outputs, defaults", {"outputs": 4, "model": {"kind": "arx", "na": 2}}),
    (
        "arx 4 outputs, gradient",
        {"outputs": 4, "model": {"kind": "arx"}, "learner": {"method": "gradient"}},
    ),
    ("mlp, defaults", {"model": {"kind": "mlp"}}),
    (
        "mlp 3 outputs hidden 128",
        {"outputs": 3, "model": {"kind": "mlp", "hidden": 128, "layers": 3}},
    ),
    (
        "pgpe popsize 200 it 20",
        {"model": {"kind": "thermal_rc"}, "learner": {"popsize": 200, "iterations": 20}},
    ),
    (
        "pgpe popsize 1000 it 30",
        {"model": {"kind": "first_order"}, "learner": {"popsize": 1000, "iterations": 30}},
    ),
    (
        "arx 16 outputs pgpe it 20",
        {"outputs": 16, "model": {"kind": "arx"}, "learner": {"iterations": 20}},
    ),
    (
        "arx 40 outputs gradient",
        {"outputs": 40, "model": {"kind": "arx"}, "learner": {"method": "gradient"}},
    ),
    (
        "pgpe drift 1e-4 window 1024",
        {"model": {"kind": "thermal_rc"}, "learner": {"drift": 1e-4, "window": 1024}},
    ),
]
INPUTS = {"thermal_rc": ["heat", "ambient"], "mass_spring_damper": ["force"], "first_order": ["u"]}


def spec_dict(config: dict) -> dict:
    kind = config["model"]["kind"]
    outputs = [f"y{i}" for i in range(config.get("outputs", 1))]
    inputs = INPUTS.get(kind, ["u0", "u1"])
    return {
        "inputs": inputs,
        "outputs": outputs,
        **{k: config[k] for k in ("model", "learner") if k in config},
    }


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure(config: dict) -> dict:
    """In this process: one update's peak memory and time, and the estimate."""
    import torch

    from twin.learners import make_learner
    from twin.learners.cost import estimate
    from twin.models import model_class
    from twin.spec import TwinSpec

    torch.set_num_threads(1)
    spec = TwinSpec.from_dict(spec_dict(config))
    run(spec, make_learner(spec, model_class(spec.model.kind).from_spec(spec)))  # warm-up
    learner = make_learner(spec, model_class(spec.model.kind).from_spec(spec))
    memory, times = run(spec, learner)
    cost = estimate(spec)
    return {
        "parameters": cost.parameters,
        "memory_mb": memory / 2**20,
        "estimate_mb": cost.memory_bytes / 2**20,
        "first_s": times[0],
        "best_s": min(times[1:]),
        "estimate_s": cost.seconds,
    }


def run(spec, learner) -> tuple[int, list[float]]:
    """Fill the window, then three timed updates; the first's rise of peak RSS."""
    import numpy as np

    from twin.observations import Observations

    model = learner.model
    rng = np.random.default_rng(0)
    n = learner.options["window"] + model.context + 3 * learner.options["update_size"]
    u = rng.normal(size=(n, len(spec.inputs))).cumsum(axis=0) * 0.1 + 1.0
    y = rng.normal(size=(n, len(spec.outputs))).cumsum(axis=0) * 0.1 + 1.0
    ts = np.arange(n, dtype=float)
    k = learner.options["update_size"]
    first = n - 3 * k
    learner.observe(Observations(ts[:first], u[:first], y[:first], np.arange(first)))
    times = []
    before = rss_bytes()
    for i in range(3):
        lo, hi = first + i * k, first + (i + 1) * k
        t0 = time.perf_counter()
        learner.update(Observations(ts[lo:hi], u[lo:hi], y[lo:hi], np.arange(lo, hi)))
        times.append(time.perf_counter() - t0)
        if i == 0:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return max(peak - before, 0), times


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--one":
        print(json.dumps(measure(json.loads(sys.argv[2]))))
        return
    print(
        f"{'configuration':30} {'P':>7} {'MB':>8} {'est MB':>8} "
        f"{'first s':>9} {'best s':>9} {'est s':>9}"
    )
    for name, config in CONFIGS:
        out = subprocess.run(
            [sys.executable, "-m", "bench.update_cost", "--one", json.dumps(config)],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{name:30} {r['parameters']:7d} {r['memory_mb']:8.1f} {r['estimate_mb']:8.1f} "
            f"{r['first_s']:9.4f} {r['best_s']:9.4f} {r['estimate_s']:9.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
