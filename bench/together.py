"""Twins stepped together against the same twins stepped one by one, in the same run.

For each kind (default learner) and group size K: K twins of K different plants and seeds,
past their first guess and with a full window, take batches of 10 one-second observations (the
fleet's workload, bench/fleet.py); the table gives the time per twin and batch of
`twin.fleet.step_together` over the K twins (wall clock, and this process's CPU time, which a
loaded machine inflates less) and of `Twin.step` on copies of them one by one (the reference),
and checks that both end with the same parameters, bit for bit.

    python bench/together.py                          # K = 1, 8, 64 for four kinds
    python bench/together.py --kinds first_order --sizes 64,256 --batches 20
    python bench/together.py --kinds arx:gradient,arx:kalman   # a kind with another learner
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

import torch  # noqa: E402

from twin.fleet import step_together  # noqa: E402
from twin.observations import Observations  # noqa: E402
from twin.plants import (  # noqa: E402
    FirstOrderPlant,
    LinearPlant,
    MassSpringDamperPlant,
    ThermalRCPlant,
)
from twin.replica import Twin  # noqa: E402
from twin.spec import TwinSpec  # noqa: E402

BATCH = 10
WARM = 400  # observations before timing: past the first guess, the window (256) full
PLANTS = {
    "first_order": lambda i: FirstOrderPlant(K=1.0 + 0.1 * (i % 16), tau=10.0 + i % 16),
    "thermal_rc": lambda i: ThermalRCPlant(R=0.04 + 0.002 * (i % 16)),
    "mass_spring_damper": lambda i: MassSpringDamperPlant(k=1.5 + 0.1 * (i % 16)),
    "arx": lambda i: LinearPlant(),
}


def fleet(kind: str, k: int, length: int) -> tuple[list[Twin], list[Observations]]:
    """K twins of `kind`, or of `kind:method` with that learner instead of the default."""
    kind, _, method = kind.partition(":")
    twins, runs = [], []
    for i in range(k):
        plant = PLANTS[kind](i)
        spec = plant.spec_dict()
        spec["learner"] = {"seed": i, **({"method": method} if method else {})}
        twins.append(Twin(TwinSpec.from_dict(spec)))
        runs.append(plant.simulate(length, seed=i).observations)
    return twins, runs


def measure(kind: str, k: int, batches: int) -> dict:
    twins, runs = fleet(kind, k, WARM + batches * BATCH)
    alone, _ = fleet(kind, k, WARM + batches * BATCH)  # the same twins, built the same way
    for start in range(0, WARM, BATCH):
        step_together(twins, [obs[start : start + BATCH] for obs in runs])
        for twin, obs in zip(alone, runs, strict=True):
            twin.step(obs[start : start + BATCH])
    t_together = t_alone = cpu_together = 0.0
    for start in range(WARM, WARM + batches * BATCH, BATCH):
        chunks = [obs[start : start + BATCH] for obs in runs]
        began, cpu = time.perf_counter(), time.process_time()
        results = step_together(twins, chunks)
        t_together += time.perf_counter() - began
        cpu_together += time.process_time() - cpu
        assert not any(isinstance(r, Exception) for r in results), results
        began = time.perf_counter()
        for twin, chunk in zip(alone, chunks, strict=True):
            twin.step(chunk)
        t_alone += time.perf_counter() - began
    pairs = zip(alone, twins, strict=True)
    same = all(a.model.named_values() == b.model.named_values() for a, b in pairs)
    per = 1000 / (k * batches)
    return {
        "together": t_together * per,
        "cpu": cpu_together * per,
        "alone": t_alone * per,
        "same": same,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--kinds",
        default="first_order,thermal_rc,mass_spring_damper,arx,arx:gradient,arx:kalman",
        help="kinds, each with its default learner or as kind:method",
    )
    parser.add_argument("--sizes", default="1,8,64", help="group sizes K")
    parser.add_argument("--batches", type=int, default=10, help="timed batches per twin")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as a worker runs
    print(
        "| kind | K | together: ms per twin and batch | together: CPU ms | alone (reference) "
        "| speed-up | same |"
    )
    print("|---|---|---|---|---|---|---|")
    for kind in args.kinds.split(","):
        for k in map(int, args.sizes.split(",")):
            r = measure(kind, k, args.batches)
            print(
                f"| {kind} | {k} | {r['together']:.2f} | {r['cpu']:.2f} | {r['alone']:.2f} | "
                f"{r['alone'] / r['together']:.2f}x | {'yes' if r['same'] else 'NO'} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
