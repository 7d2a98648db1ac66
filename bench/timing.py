"""The time of one pgpe update on a physical model, with the time of one forward pass of the
same model over the same window measured beside it: the machine's speed varies by 20-25% from
day to day, the ratio of the two much less."""

from __future__ import annotations

import time

import numpy as np
import torch

from twin.learners.objective import Objective
from twin.plants import FirstOrderPlant, MassSpringDamperPlant, ThermalRCPlant
from twin.replica import Twin
from twin.spec import TwinSpec


def time_pgpe_update(seed: int, calls: int = 200, window: int = 256) -> dict[tuple, tuple]:
    """{(physical kind, torch threads): (median ms, p90 ms, median ms of one forward pass)} of
    one pgpe update on 1-observation batches with a full window, under 1 and 2 threads."""
    out = {}
    for plant in (FirstOrderPlant, ThermalRCPlant, MassSpringDamperPlant):
        sim = plant(jitter=0.5).simulate(window + calls + 1, seed=seed)
        spec = sim.spec_dict()
        spec["learner"] = {"method": "pgpe"}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            learner = Twin.create(TwinSpec.from_dict(spec)).learner
            obs = sim.observations
            learner.observe(obs[: window + 1])
            ms = []
            for i in range(window + 1, window + 1 + calls):
                t0 = time.perf_counter()
                learner.update(obs[i : i + 1])
                ms.append(1000 * (time.perf_counter() - t0))
            o = learner.options
            objective = Objective(learner.model, learner.window, o["half_life"], o)
            forward = []
            with torch.no_grad():
                for _ in range(calls):
                    t0 = time.perf_counter()
                    objective.predict(objective.theta_prev)
                    forward.append(1000 * (time.perf_counter() - t0))
            key = (plant.kind, threads)
            out[key] = (float(np.median(ms)), float(np.percentile(ms, 90)), np.median(forward))
    torch.set_num_threads(2)
    return out


def print_timing(timing: dict[tuple, tuple]) -> None:
    print(
        "One pgpe update per physical kind, 256-observation window, 1-observation batches "
        "(target < 5 ms);\nreference: one forward pass of the model over the window, same run:"
    )
    for (kind, threads), (median, p90, forward) in timing.items():
        print(
            f"  {kind:<18} {threads} thread(s): median {median:.2f} ms, p90 {p90:.2f} ms; "
            f"forward pass {forward:.3f} ms (update = {median / forward:.0f} forward passes)"
        )
